"""Section ``decoders``: video decoders side by side, one run, one table.

For each clip set (raw / 3 fps prepared / pre-sampled, ``--prepare``) and each decoder
(``suite/decoders.py``: OpenCV the original's way, PyAV, torchcodec, DALI CPU; on a GPU DALI
NVDEC, torchcodec CUDA, PyNvVideoCodec with a thread sweep) the steady output frames/s: same
clips, same frames, same output (normalised float32 batches on the decoder's device), steady
state after the first batch over at least ``--min-batches`` batches a pass (the set is listed
again as often as that needs). A missing package or a codec a decoder cannot read is a row that
says so.
"""
from __future__ import annotations

import traceback

from . import timing
from .common import fmt, fmt_stat, log, merge_section, na, short_error, status_text
from .datasets import datasets, load_bench_split
from .decoders import CPU_KINDS, GPU_KINDS, NAMES, DecoderUtilisation, make, repeated, unsupported

NAME = "decoders"
DEFAULT = False
QUICK = dict(decoder_batch=2, decoder_min_batches=3, decoder_repeats=1)


def add_args(p) -> None:
    g = p.add_argument_group("decoders section")
    g.add_argument("--decoders", default=",".join(CPU_KINDS + GPU_KINDS))
    g.add_argument("--decoder-batch", type=int, default=4)
    g.add_argument("--decoder-gpu-threads", default="1,4,8,16",
                   help="thread counts swept for the GPU decoders (CPU rows use --workers)")
    g.add_argument("--decoder-min-batches", type=int, default=timing.MIN_STEADY_BATCHES,
                   help="steady batches a pass; the set is repeated to reach them")
    g.add_argument("--decoder-repeats", type=int, default=2, help="timed passes (after a warm-up)")
    g.add_argument("--decoder-budget", type=float, default=240.0, help="seconds per row at most")
    g.add_argument("--decoder-splits", default="train,test",
                   help="splits whose videos (each once) make a set's clip list")


def _clip_list(args, ds):
    """(cfg, split): the videos of --decoder-splits, each once, listed again until a pass
    has --decoder-min-batches steady batches."""
    cfg, split, seen = None, None, set()
    ids, paths, infos = [], [], []
    for name in [s.strip() for s in args.decoder_splits.split(",") if s.strip()]:
        cfg, sp = load_bench_split(args, ds["data_path"], ds["features_path"], name)
        for vid, path, info in zip(sp.video_ids, sp.video_paths, sp.video_info):
            if vid not in seen:
                seen.add(vid)
                ids.append(vid), paths.append(path), infos.append(info)
        split = sp
    import numpy as np

    base = type(split)("decoders", ids, paths, infos, [], np.zeros(0, np.int64))
    return cfg, base, repeated(base, (args.decoder_min_batches + 1) * args.decoder_batch)


def measure(kind: str, threads: int, args, cfg, split, ctx) -> dict:
    import torch

    gpu = kind in GPU_KINDS
    row = {"decoder": kind, "where": "gpu" if gpu else "cpu", "threads": threads,
           "batch_size": args.decoder_batch, "clips_a_pass": split.num_videos,
           "output": f"float32 (B, {cfg.data.max_frames}, 3, {cfg.data.image_resolution}, "
                     f"{cfg.data.image_resolution}) on the {'GPU' if gpu else 'CPU'}"}
    reason = unsupported(kind, split, ctx.has_cuda)
    if reason:
        return {**row, **na(reason)}
    loader = make(kind, cfg, split, args.decoder_batch, threads)
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def run_pass():
        return timing.count_pass(((b["video"], b["video_mask"]) for b in loader), sync)

    util = DecoderUtilisation(torch.cuda.current_device()) if gpu else None
    if util:
        util.__enter__()
    try:
        windows, warm = timing.time_passes(run_pass, args.decoder_repeats, 0.0,
                                           args.decoder_budget)
    finally:
        if util:
            util.__exit__(None, None, None)
    out = {**row, "status": "ok", **timing.summarise(windows, args.decoder_min_batches),
           "warmup_s": warm}
    if util and util.summary():
        out["nvdec_utilisation_pct"] = util.summary()
    if hasattr(loader, "pyav_fallbacks"):  # (videos of the set, not listings of them)
        out["pyav_fallback_videos"] = len({str(split.video_paths[v])
                                           for v in loader.pyav_fallbacks})
    if getattr(loader, "presampled", False) and kind.startswith("torchcodec"):
        out["note"] = "pre-sampled clips: the torchcodec loader reads them with PyAV"
    return out


def run(ctx) -> None:
    args, rep = ctx.args, ctx.rep
    kinds = [k.strip() for k in args.decoders.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NAMES]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}; choose from {', '.join(NAMES)}")
    gpu_threads = [int(t) for t in args.decoder_gpu_threads.split(",") if t.strip()]
    sec = rep.doc.setdefault(NAME, {"config": {
        "max_frames": args.max_frames, "resolution": args.resolution,
        "batch": args.decoder_batch, "cpu_threads": args.workers, "gpu_threads": gpu_threads,
        "repeats": args.decoder_repeats, "min_steady_batches": args.decoder_min_batches,
        "decoders": kinds}, "datasets": {}, "rows": []})
    for ds in datasets(args):
        label = ds["label"]
        try:
            cfg, base, split = _clip_list(args, ds)
        except Exception as e:
            rep.error(f"decoders [{label}] dataset", e)
            continue
        codecs = sorted({i.codec for i in base.video_info})
        sec["datasets"][label] = (f"{ds['note']}; {base.num_videos} videos ({', '.join(codecs)})"
                                  f", listed {split.num_videos // base.num_videos}x a pass")
        for kind in kinds:
            for threads in (gpu_threads if kind in GPU_KINDS else [args.workers]):
                where = f"{kind} x{threads}"
                log(f"decoders: {where} on {label} ...")
                try:
                    row = measure(kind, threads, args, cfg, split, ctx)
                except Exception as e:
                    traceback.print_exc()
                    row = {"decoder": kind, "threads": threads, "status": "error",
                           "reason": short_error(e)}
                row["dataset"] = label
                sec["rows"].append(row)
                s = row.get("steady_frames_per_s")
                log(f"  {where}: {row['status']}" + (f", steady {fmt(s['median'])} frames/s"
                                                     if s else f": {row.get('reason', '')}"))
                rep.flush()
                if row["status"] != "ok" and kind in GPU_KINDS:
                    break  # the same reason for every thread count


def markdown(doc: dict) -> list[str]:
    d = doc.get(NAME)
    if not d:
        return []
    c = d["config"]
    lines = ["## Decoders side by side: steady output frames/s", "",
             f"Same clips, same frames (CLIP4Clip's sampling; every frame of a pre-sampled clip),"
             f" same output: normalised float32 (B, {c['max_frames']}, 3, {c['resolution']}, "
             f"{c['resolution']}) batches of {c['batch']} on the decoder's device. Steady = "
             f"after the first batch of a pass, >= {c['min_steady_batches']} batches a pass "
             f"(else *latency*); median over {c['repeats']} timed passes after a warm-up. CPU "
             f"rows: {c['cpu_threads']} workers/threads.", ""]
    for ds, note in d.get("datasets", {}).items():
        lines.append(f"- `{ds}`: {note}")
    lines += ["", "| set | decoder | threads | steady frames/s | start-up s (first batch) | "
              "NVDEC busy % (mean/max) | status |", "|---|---|---:|---:|---:|---:|---|"]
    most = {}  # frames a pass the fullest row of each set delivered
    for r in d["rows"]:
        if r["status"] == "ok":
            most[r["dataset"]] = max(most.get(r["dataset"], 0), r["frames_per_pass"])
    for r in d["rows"]:
        steady = fmt_stat(r.get("steady_frames_per_s"))
        if r["status"] == "ok" and not r.get("steady_valid", True):
            steady += " *latency*"
        u = r.get("nvdec_utilisation_pct")
        util = f"{u['mean']:.0f} / {u['max']:.0f}" if u else "–"
        note = status_text(r)
        if r.get("pyav_fallback_videos"):
            note += f" ({r['pyav_fallback_videos']} video(s) via PyAV)"
        if r.get("note"):
            note += f" ({r['note']})"
        if r["status"] == "ok" and r["frames_per_pass"] < most[r["dataset"]]:
            note += (f" (**delivered {r['frames_per_pass']} of the {most[r['dataset']]} frames "
                     f"a pass**: reads failed)")
        lines.append(f"| {r['dataset']} | {NAMES.get(r['decoder'], r['decoder'])} | "
                     f"{r.get('threads', '–')} | {steady} | "
                     f"{fmt_stat(r.get('first_batch_s'), 2)} | {util} | {note} |")
    return lines + [""]


def targets(doc: dict) -> list[dict]:
    """Information, no target: the two fastest CPU decoders of each set (data.loader=auto
    takes DALI where its CPU decoder reads the codec, else torchcodec: data/loaders/loader.py)."""
    out = []
    for ds in doc.get(NAME, {}).get("datasets", {}):
        rows = sorted((r for r in doc[NAME]["rows"] if r["dataset"] == ds and r["status"] == "ok"
                       and r.get("where") == "cpu" and r.get("steady_valid")
                       and r.get("steady_frames_per_s")),
                      key=lambda r: -r["steady_frames_per_s"]["median"])
        measured = "; ".join(f"{r['decoder']} {fmt_stat(r['steady_frames_per_s'])}"
                             for r in rows[:2]) or "n/a"
        out.append({"target": f"CPU [{ds}]: the fastest CPU decoders (information)",
                    "measured": measured, "met": "n/a",
                    "note": "steady frames/s, median (p10-p90); overlapping ranges are a tie"})
    return out


def plot(doc: dict):
    rows = [r for r in doc.get(NAME, {}).get("rows", [])
            if r["status"] == "ok" and r.get("steady_frames_per_s")]
    if not rows:
        return None
    labels = [f"{r['decoder']}x{r['threads']}\n{r['dataset'].split(':')[-1]}" for r in rows]
    return rows, "steady_frames_per_s", labels, "tab:green", 35, \
        "steady output frames/s (median, p10-p90)", "decoders"


def merge(into: dict, sec: dict) -> None:
    merge_section(into, NAME, sec)
