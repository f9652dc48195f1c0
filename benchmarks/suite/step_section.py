"""Section ``step``: ms/step, frames/s, peak memory and MFU of a real training step.

Eager fp32, eager amp_bf16 and compiled amp_bf16, each with and without gradient checkpointing;
model only (synthetic tensors on the device) and end to end (batches from a loader, the time
waiting for them reported as a share).
"""
from __future__ import annotations

import json

from .common import fmt, fmt_stat, log, status_text
from .datasets import datasets, load_bench_split, make_cfg
from .step_runner import TINY_OPEN_CLIP, count_flops, free_memory, measure_step

NAME = "step"
DEFAULT = True
QUICK = dict(tiny=True, step_batch=2, step_warmup=1, step_iters=2, step_budget=15.0,
             variants="eager_fp32,eager_amp_bf16,compiled_amp_bf16",
             e2e_loaders="dali_cpu,reference")


def add_args(p) -> None:
    g = p.add_argument_group("step section")
    g.add_argument("--model", default="ViT-B-32")
    g.add_argument("--sim-header", default="meanP")
    g.add_argument("--tiny", action="store_true", help="tiny open_clip config instead of --model")
    g.add_argument("--step-batch", type=int, default=2)
    g.add_argument("--step-frames", type=int, default=None, help="frames per clip in the step "
                   "section (default: --max-frames)")
    g.add_argument("--variants", default="eager_fp32,eager_amp_bf16,compiled_amp_bf16")
    g.add_argument("--ckpt", default="both", choices=["both", "on", "off"])
    g.add_argument("--step-warmup", type=int, default=2)
    g.add_argument("--step-iters", type=int, default=5)
    g.add_argument("--step-budget", type=float, default=120.0, help="seconds per step row")
    g.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end rows")
    g.add_argument("--e2e-loaders", default="dali_gpu,dali_cpu,reference")
    g.add_argument("--e2e-variants", default=None,
                   help="variants end to end (default: compiled_amp_bf16 on CUDA, eager_fp32 on CPU)")
    g.add_argument("--skip-compile", nargs="?", const="skipped (--skip-compile)", default=None,
                   dest="no_compile", metavar="REASON", help="report compiled variants as n/a")
    g.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: by GPU name)")


def run(ctx) -> None:
    import torch

    args, rep, device = ctx.args, ctx.rep, ctx.device
    frames = args.step_frames or args.max_frames
    overrides = [f"model.name={args.model}", f"model.sim_header={args.sim_header}",
                 f"train.batch_size={args.step_batch}", f"data.max_frames={frames}"]
    if args.tiny:
        tiny = json.loads(json.dumps(TINY_OPEN_CLIP))
        tiny["vision_cfg"]["image_size"] = args.resolution
        overrides += ["model.name=tiny", "model.open_clip_config=" + json.dumps(tiny)]
    ds = datasets(args)[0] if args.e2e else None
    sec = rep.doc.setdefault(NAME, {"config": {
        "model": "tiny" if args.tiny else args.model, "sim_header": args.sim_header,
        "tiny": bool(args.tiny),
        "batch": args.step_batch, "frames": frames, "resolution": args.resolution,
        "max_words": 32, "warmup": args.step_warmup, "iters": args.step_iters,
        "device": device.type, "torch_threads": torch.get_num_threads(),
        "fp32_matmul_precision": torch.get_float32_matmul_precision()},
        "rows": [], "flops_per_step": None, "flops_method": "not counted",
        "peak_tflops": ctx.peak, "peak_source": ctx.peak_src})
    split = None
    dp = fp = None
    if ds is not None:
        dp, fp = ds["data_path"], ds["features_path"]
    cfg = make_cfg(args, dp, fp, overrides)
    sec["config"]["max_words"] = cfg.data.max_words
    log("step: counting FLOPs ...")
    analytic = [None]
    flops, method = count_flops(args, cfg, device, analytic)
    sec["flops_per_step"], sec["flops_method"] = flops, method
    sec["flops_per_step_analytic"] = analytic[0]  # 3 x forward of the towers (model.flops_per_sample)
    log(f"  {flops / 1e9 if flops else float('nan'):.1f} GFLOP/step ({method})")
    rep.flush()
    variants = [v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "none"]
    ckpts = {"both": (False, True), "off": (False,), "on": (True,)}[args.ckpt]
    e2e_variants = [v.strip() for v in args.e2e_variants.split(",") if v.strip()] if args.e2e else []
    e2e_loaders = [k.strip() for k in args.e2e_loaders.split(",") if k.strip()
                   and not (k.strip() in ("dali_gpu", "dali_hybrid") and device.type != "cuda")]
    if e2e_variants and ds is not None:
        try:
            _, split = load_bench_split(args, dp, fp, args.split)
            sec["config"]["e2e_dataset"] = f"{ds['label']}: {ds['note']}"
        except Exception as e:
            rep.error("step e2e dataset", e)
            e2e_variants = []
    for v in dict.fromkeys(variants + e2e_variants):
        for ck in ckpts if v in variants else (False,):
            keep: dict = {}
            try:
                if v in variants:
                    log(f"step {v} ckpt={ck} model-only ...")
                    _add(rep, sec, measure_step(v, ck, args, cfg, device, flops, ctx.peak, keep=keep))
                if v in e2e_variants and not ck:
                    for kind in e2e_loaders:
                        log(f"step {v} end to end with {kind} ...")
                        _add(rep, sec, measure_step(v, False, args, cfg, device, flops, ctx.peak,
                                                    "e2e", kind, split, keep=keep))
            finally:
                keep.clear()
                free_memory(device)


def _add(rep, sec, row) -> None:
    sec["rows"].append(row)
    if row["status"] == "ok":
        extra = f", data wait {100 * row['data_wait_share']:.0f}%" if "data_wait_share" in row else ""
        log(f"  {row['ms_per_step']['median']:.1f} ms/step, {row['frames_per_s']:.1f} frames/s{extra}")
    else:
        log(f"  {row['status']}: {row.get('reason')}")
    rep.flush()


def markdown(doc: dict) -> list[str]:
    st = doc.get(NAME)
    if not st:
        return []
    c = st["config"]
    lines = ["## Training step", "",
             f"{c['model']} {c['sim_header']}{' (tiny test config)' if c.get('tiny') else ''}, "
             f"batch {c['batch']} x {c['frames']} frames at {c['resolution']} px, "
             f"{c['max_words']} words; AdamW{' (fused)' if c['device'] == 'cuda' else ''} + "
             f"grad clip; {c['warmup']} warm-up steps, {c['iters']} timed; median (p10–p90). "
             f"FLOPs/step: {fmt(st['flops_per_step'] / 1e9 if st.get('flops_per_step') else None)} "
             f"GFLOP ({st['flops_method']}); MFU against {st['peak_tflops'] or 'n/a'} TFLOP/s "
             f"({st['peak_source']}).", "",
             "| mode | variant | grad ckpt | ms/step | steps/s | frames/s | peak mem GiB | MFU | data wait | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in st["rows"]:
        mode = r["mode"] + (f" ({r['loader']})" if r.get("loader") else "")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        wait = f"{100 * r['data_wait_share']:.0f}%" if r.get("data_wait_share") is not None else "–"
        lines.append(f"| {mode} | {r['variant']} | {'yes' if r['grad_checkpointing'] else 'no'} | "
                     f"{fmt_stat(r.get('ms_per_step'))} | {fmt(r.get('steps_per_s'), 2)} | "
                     f"{fmt(r.get('frames_per_s'))} | {fmt(r.get('peak_mem_gib'), 2)} | {mfu} | "
                     f"{wait} | {status_text(r)} |")
    return lines + [""]


def targets(doc: dict) -> list[dict]:
    if NAME not in doc:
        return []
    cpu = doc["meta"]["device"] == "cpu"
    rows = doc[NAME].get("rows", [])
    srows = [r for r in rows if r["mode"] == "model_only"]

    def ms(variant, ckpt=False):
        for r in srows:
            if r["variant"] == variant and r["grad_checkpointing"] == ckpt and r["status"] == "ok":
                return r["ms_per_step"]["median"]
        return None

    out = []
    f32, comp = ms("eager_fp32"), ms("compiled_amp_bf16")
    t = {"target": "GPU: compiled amp_bf16 >= 3x steps/s of eager fp32 (model only, no ckpt)"}
    if f32 and comp:
        ratio = f32 / comp
        t.update(measured=f"{ratio:.2f}x ({f32:.1f} vs {comp:.1f} ms/step)",
                 met="n/a" if cpu else ("yes" if ratio >= 3 else "no"))
        if cpu:
            t["note"] = "GPU target; measured on CPU for information"
    else:
        t.update(measured="n/a", met="n/a", note="a variant was not measured")
    out.append(t)
    cfgd = doc[NAME].get("config", {})
    right = (cfgd.get("model") in ("ViT-B-32", "ViT-B/32") and cfgd.get("sim_header") == "meanP"
             and cfgd.get("batch") == 128 and cfgd.get("frames") == 12 and not cfgd.get("tiny"))
    why = "CPU run" if cpu else ("not ViT-B/32 meanP 128x12" if not right else None)
    t = {"target": "GPU: ViT-B/32 meanP batch 128x12 <= 90 ms/step on one H100 "
                   "(compiled amp_bf16, model only)"}
    best = min([x for x in (ms("compiled_amp_bf16"), ms("compiled_amp_bf16", True)) if x],
               default=None)
    if why or best is None:
        t.update(measured=f"{best:.1f} ms/step" if best else "n/a", met="n/a",
                 note=why or "not measured")
    else:
        t.update(measured=f"{best:.1f} ms/step", met="yes" if best <= 90 else "no")
        gname = (doc["meta"].get("gpu") or {}).get("name", "")
        if "H100" not in gname:
            t["note"] = f"measured on {gname}, target stated for an H100"
    out.append(t)
    waits = [(r["data_wait_share"], r["loader"]) for r in rows
             if r["mode"] == "e2e" and r["status"] == "ok" and r["variant"] == "compiled_amp_bf16"]
    t = {"target": "GPU: data wait < 5% of a compiled ViT-B/32 meanP step at batch 128 x 12"}
    if waits and not why:
        w, loader = min(waits)
        t.update(measured=f"{100 * w:.1f}% (best loader: {loader}; "
                          + ", ".join(f"{k} {100 * v:.1f}%" for v, k in waits) + ")",
                 met="yes" if w < 0.05 else "no")
    else:
        t.update(measured="n/a", met="n/a", note=why or "no compiled end-to-end row")
    out.append(t)
    return out


def plot(doc: dict):
    rows = [r for r in doc.get(NAME, {}).get("rows", []) if r["status"] == "ok"]
    if not rows:
        return None
    labels = [f"{r['variant']}{'+ckpt' if r['grad_checkpointing'] else ''}\n"
              f"{r['mode']}{'/' + r['loader'] if r.get('loader') else ''}" for r in rows]
    return rows, "ms_per_step", labels, "tab:orange", 30, "ms/step (median, p10-p90)", "training step"


def merge(into: dict, sec: dict) -> None:
    if NAME not in into:
        into[NAME] = dict(sec, rows=[])
    dst = into[NAME]
    for k in ("flops_per_step", "flops_per_step_analytic"):
        dst[k] = dst.get(k) or sec.get(k)
    dst["config"].update({k: v for k, v in sec["config"].items() if k not in dst["config"]})
    dst["rows"] += sec["rows"]
