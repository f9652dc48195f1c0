"""Section ``loader``: frames/s each loader delivers, same clips, same workers/threads.

Every backend reads each clip once per pass in evaluation order (CLIP4Clip's sampled frames,
``max_frames`` at most). Throughput is steady state after the first batch over at least
``--min-batches`` batches a pass (``timing``); the first batch is start-up, reported apart.
"""
from __future__ import annotations

import traceback

import numpy as np

from . import timing
from .common import fmt, fmt_stat, log, merge_section, na, short_error, status_text
from .datasets import datasets, load_bench_split
from .loaders import DALI_KINDS, LOADER_NAMES, cache_filler, make_loader, on_gpu, unsupported_reason

NAME = "loader"
DEFAULT = True
QUICK = dict(loader_batch=2, repeats=2, min_repeat_seconds=0.0, loader_budget=20.0)


def add_args(p) -> None:
    g = p.add_argument_group("loader section")
    g.add_argument("--loaders", default="dali_gpu,dali_hybrid,dali_cpu,reference,cache,original")
    g.add_argument("--dali-pipelines", default="1",
                   help="data.dali_pipelines values for the DALI rows, comma separated (a row each)")
    g.add_argument("--loader-batch", type=int, default=8)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--min-repeat-seconds", type=float, default=2.0)
    g.add_argument("--min-batches", type=int, default=timing.MIN_STEADY_BATCHES,
                   help="steady batches a pass (after the first) for a row to count as throughput")
    g.add_argument("--loader-budget", type=float, default=120.0, help="seconds per loader row")
    g.add_argument("--interleave", action="store_true",
                   help="build every row first, then take the rows' timed windows in turn (fair "
                        "ratios on a shared machine; all loaders are alive at once)")


def loader_row(kind: str, args, cfg, split, has_cuda: bool, pipelines: int = 1):
    """(the row's fields, a function running one timed pass), or (an n/a row, None)."""
    row = {"backend": kind, "workers": args.workers, "batch_size": args.loader_batch,
           "clips": split.num_videos}
    if kind in DALI_KINDS:
        row["pipelines"] = pipelines
    if kind == "cache":
        row["filled_by"] = cache_filler(split, has_cuda)
    reason = unsupported_reason(kind, split, has_cuda)
    if reason:
        return {**row, **na(reason)}, None
    import torch

    sync = torch.cuda.synchronize if on_gpu(kind, split, has_cuda) else (lambda: None)
    if kind == "original":
        from original_style import OriginalStyleDataset
        from torch.utils.data import DataLoader

        from clip4clip_dali.data.loaders.reference import worker_context

        ds = OriginalStyleDataset(split.video_paths, cfg.data.max_frames, cfg.data.image_resolution,
                                  cfg.data.feature_framerate, cfg.data.slice_framepos)

        def run_pass():
            dl = DataLoader(ds, batch_size=args.loader_batch, shuffle=False,
                            num_workers=args.workers,
                            prefetch_factor=args.prefetch if args.workers > 0 else None,
                            multiprocessing_context=worker_context() if args.workers > 0 else None)
            return timing.count_pass(dl, sync)
    else:
        loader = make_loader(kind, cfg, split, "eval", args.loader_batch, "cpu")
        epoch = [0]

        def run_pass():
            loader.set_epoch(epoch[0])
            epoch[0] += 1
            return timing.count_pass(((b["video"], b["video_mask"]) for b in loader), sync)
    return row, run_pass


def finished(row: dict, windows: list, warm: float, min_batches: int) -> dict:
    return {**row, "status": "ok", **timing.summarise(windows, min_batches), "warmup_s": warm}


def measure_loader(kind: str, args, cfg, split, has_cuda: bool, pipelines: int = 1) -> dict:
    row, run_pass = loader_row(kind, args, cfg, split, has_cuda, pipelines)
    if run_pass is None:
        return row
    windows, warm = timing.time_passes(run_pass, args.repeats, args.min_repeat_seconds,
                                       args.loader_budget)
    return finished(row, windows, warm, args.min_batches)


def _describe(sec: dict, label: str, split) -> None:
    info = split.video_info
    frames = [int(i.frames) for i in info]
    codecs = sorted({i.codec for i in info})
    sec.setdefault("dataset_info", {})[label] = {
        "videos": split.num_videos, "median_fps": float(np.median([i.fps for i in info])),
        "median_short_side": float(np.median([min(i.width, i.height) for i in info])),
        "mean_frames": float(np.mean(frames)), "codecs": codecs}
    sec["datasets"][label] += (f"; {split.num_videos} videos, codec(s) {', '.join(codecs)}, "
                               f"{np.mean(frames):.0f} frames on average")


def _jobs(args, sec, rep):
    """(label, kind, K, cfg, split) of every row, in table order."""
    pipelines = sec["config"]["dali_pipelines"]
    for ds in datasets(args):
        label = ds["label"]
        sec["datasets"][label] = ds["note"]
        sec.setdefault("dataset_shapes", {})[label] = {"source": ds["source"], "shape": ds["shape"]}
        try:
            cfg, split = load_bench_split(args, ds["data_path"], ds["features_path"], args.split,
                                          ds.get("overrides", ()))
            _describe(sec, label, split)
        except Exception as e:
            rep.error(f"loader [{label}] dataset", e)
            continue
        for kind in sec["config"]["backends"]:
            for k in (pipelines if kind in DALI_KINDS else [None]):
                kcfg = cfg if k in (None, cfg.data.dali_pipelines) else load_bench_split(
                    args, ds["data_path"], ds["features_path"], args.split,
                    [*ds.get("overrides", ()), f"data.dali_pipelines={k}"])[0]
                yield label, kind, k, kcfg, split


def run(ctx) -> None:
    args, rep = ctx.args, ctx.rep
    pipelines = [int(k) for k in str(args.dali_pipelines).split(",") if k.strip()]
    sec = rep.doc.setdefault(NAME, {"config": {
        "max_frames": args.max_frames, "resolution": args.resolution, "batch": args.loader_batch,
        "workers": args.workers, "repeats": args.repeats,
        "min_repeat_seconds": args.min_repeat_seconds, "min_steady_batches": args.min_batches,
        "dali_pipelines": pipelines, "interleaved": args.interleave,
        "backends": [k.strip() for k in args.loaders.split(",") if k.strip()]},
        "datasets": {}, "rows": []})
    pending = []  # --interleave: rows built, timed together at the end
    for label, kind, k, cfg, split in _jobs(args, sec, rep):
        where = f"{kind}" + (f" K={k}" if k and len(pipelines) > 1 else "") + f" on {label}"
        log(f"loader {where} ...")
        try:
            if args.interleave:
                row, run_pass = loader_row(kind, args, cfg, split, ctx.has_cuda, k or 1)
                if run_pass is not None:
                    pending.append((where, {**row, "dataset": label}, run_pass))
                    continue
            else:
                row = measure_loader(kind, args, cfg, split, ctx.has_cuda, k or 1)
        except Exception as e:
            traceback.print_exc()
            row = {"backend": kind, "status": "error", "reason": short_error(e)}
        _add(rep, sec, where, {**row, "dataset": label})
    if pending:
        log(f"timing {len(pending)} rows in turn ...")
        timed = timing.interleave([p[2] for p in pending], args.repeats, args.min_repeat_seconds,
                                  args.loader_budget)
        for (where, row, _), (windows, warm) in zip(pending, timed):
            _add(rep, sec, where, finished(row, windows, warm, args.min_batches))


def _add(rep, sec, where: str, row: dict) -> None:
    sec["rows"].append(row)
    _log_row(where, row)
    rep.flush()


def _log_row(where: str, row: dict) -> None:
    if row["status"] != "ok":
        log(f"  {where}: {row['status']}: {row.get('reason')}")
        return
    s = row.get("steady_frames_per_s")
    log(f"  {where}: steady {fmt(s['median'] if s else None)} frames/s over "
        f"{row['steady_batches_per_pass']} batches a pass"
        f"{'' if row['steady_valid'] else ' (too few: latency)'}; first batch "
        f"{row['first_batch_s']['median']:.2f} s; whole pass {row['frames_per_s']['median']:.1f}")


def markdown(doc: dict) -> list[str]:
    ld = doc.get(NAME)
    if not ld:
        return []
    c = ld["config"]
    mb = c.get("min_steady_batches", timing.MIN_STEADY_BATCHES)
    lines = ["## Loader: frames/s delivered (each clip once per pass)", "",
             f"max_frames {c['max_frames']}, {c['resolution']}x{c['resolution']}, "
             f"{c['workers']} DataLoader workers = DALI threads, warm-up pass then "
             f"{c['repeats']} timed windows of >= {c['min_repeat_seconds']} s; median (p10–p90). "
             f"**Steady**: frames/s after the first batch of each pass, the throughput; a row "
             f"with fewer than {mb} batches after the first is marked *latency* and no target "
             f"uses it. **Start-up**: time to the first batch of a pass. Whole pass: both "
             f"together.", ""]
    for ds, note in ld.get("datasets", {}).items():
        lines.append(f"- `{ds}`: {note}")
    lines += ["", "| set | loader | K | batch | steady frames/s | batches a pass | start-up s "
              "(first batch) | whole-pass frames/s | clips/s (whole pass) | status |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in ld["rows"]:
        name = LOADER_NAMES.get(r["backend"], r["backend"]) + (
            f", filled by {LOADER_NAMES.get(r['filled_by'], r['filled_by'])}" if r.get("filled_by") else "")
        steady = fmt_stat(r.get("steady_frames_per_s"))
        if r["status"] == "ok" and not r.get("steady_valid", True):
            steady += " *latency*"
        lines.append(f"| {r['dataset']} | {name} | {r.get('pipelines') or '–'} | "
                     f"{r.get('batch_size', c['batch'])} | {steady} | "
                     f"{r.get('batches_per_pass', 'n/a')} | {fmt_stat(r.get('first_batch_s'), 2)} | "
                     f"{fmt_stat(r.get('frames_per_s'))} | {fmt_stat(r.get('clips_per_s'), 2)} | "
                     f"{status_text(r)} |")
    return lines + [""]


def _steady(rows, backend, ds):
    """Best valid steady frames/s of ``backend`` on ``ds`` (over K), or None."""
    vals = [r["steady_frames_per_s"]["median"] for r in rows
            if r["backend"] == backend and r["dataset"] == ds and r["status"] == "ok"
            and r.get("steady_valid") and r.get("steady_frames_per_s")]
    return max(vals, default=None)


def _ratio_target(text, a, b, factor, names=("", "")) -> dict:
    t = {"target": text}
    if a and b:
        t.update(measured=f"{a / b:.2f}x ({a:,.1f} vs {b:,.1f} steady frames/s{names[0]})",
                 met="yes" if a / b >= factor else "no")
    else:
        t.update(measured="n/a", met="n/a",
                 note="a row was not measured with enough batches for steady state")
    return t


def _floor_target(text, value, floor, gpu_run, what) -> dict:
    t = {"target": text}
    if value and gpu_run:
        t.update(measured=f"{value:,.0f} steady frames/s ({what})", met="yes" if value >= floor else "no")
    elif value:
        t.update(measured=f"{value:,.0f} steady frames/s ({what})", met="n/a",
                 note="GPU target; measured on CPU for information")
    else:
        t.update(measured="n/a", met="n/a", note="not measured (no CUDA, or too few batches)")
    return t


def targets(doc: dict) -> list[dict]:
    ld = doc.get(NAME, {})
    rows = ld.get("rows", [])
    shapes = ld.get("dataset_shapes", {})
    gpu_run = doc["meta"]["device"] == "cuda"
    out = []
    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    for ds in sets:
        for other, factor in (("reference", 1.3), ("original", 2.0)):
            out.append(_ratio_target(f"CPU [{ds}]: DALI-CPU >= {factor}x {other} loader steady "
                                     f"frames/s (same cores)", _steady(rows, "dali_cpu", ds),
                                     _steady(rows, other, ds), factor))
    by_source: dict = {}
    for ds in sets:
        s = shapes.get(ds)
        if s:
            by_source.setdefault(s["source"], {})[s["shape"]] = ds
    for src, got in by_source.items():
        if "presampled" in got and "3fps" in got:
            out.append(_ratio_target(
                f"CPU [{src}]: DALI-CPU steady frames/s on pre-sampled >= 2x on 3 fps prepared "
                f"clips (same run, same clips)", _steady(rows, "dali_cpu", got["presampled"]),
                _steady(rows, "dali_cpu", got["3fps"]), 2.0))
        if "presampled" in got and "shards" in got:
            for kind in ("dali_cpu", "dali_gpu"):
                out.append(_ratio_target(
                    f"{'CPU' if kind == 'dali_cpu' else 'GPU'} [{src}]: tar shards >= 1.5x "
                    f"per-file pre-sampled clips, {kind} steady frames/s (same run)",
                    _steady(rows, kind, got["shards"]), _steady(rows, kind, got["presampled"]),
                    1.5))
        if "shards" in got:
            out.append(_floor_target(f"GPU [{got['shards']}]: NVDEC after tar shards >= 10,000 "
                                     f"steady frames/s", _steady(rows, "dali_gpu", got["shards"]),
                                     10000, gpu_run, "best K"))
        if "presampled" in got:
            out.append(_floor_target(f"GPU [{got['presampled']}]: NVDEC (DALI GPU) >= 10,000 "
                                     f"steady frames/s on pre-sampled clips",
                                     _steady(rows, "dali_gpu", got["presampled"]), 10000, gpu_run,
                                     "best K"))
    cache = [(v, ds) for ds in sets if (v := _steady(rows, "cache", ds))]
    best, where = max(cache, default=(None, None))
    out.append(_floor_target("GPU: frame cache >= 30,000 frames/s served on one H100/H200",
                             best, 30000, gpu_run, f"best set: {where}"))
    return out


def plot(doc: dict):
    rows = [r for r in doc.get(NAME, {}).get("rows", [])
            if r["status"] == "ok" and r.get("steady_frames_per_s")]
    if not rows:
        return None
    labels = [f"{r['backend']}{'/K' + str(r['pipelines']) if r.get('pipelines', 1) > 1 else ''}\n"
              f"{r['dataset'].replace('synthetic-', '')}" for r in rows]
    return rows, "steady_frames_per_s", labels, "tab:blue", 35, \
        "steady frames/s (median, p10-p90)", "loader throughput"


def merge(into: dict, sec: dict) -> None:
    merge_section(into, NAME, sec, ("datasets", "dataset_info", "dataset_shapes"))
