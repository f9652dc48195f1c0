"""Section ``train``: a short real training run (``python -m clip4clip_dali.train``) on the
run's first clip set, and the share of its step time spent waiting for data, from the
``metrics.jsonl`` it writes (one record a step, ``train.log_every=1``; the first
``--train-skip`` steps, compilation and cache fill, left out)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import fmt, log, na, stats, status_text
from .datasets import REPO, datasets
from .step_runner import TINY_OPEN_CLIP

NAME = "train"
DEFAULT = False
QUICK = dict(train_steps=4, train_skip=1, train_timeout=120.0)


def add_args(p) -> None:
    g = p.add_argument_group("train section")
    g.add_argument("--train-steps", type=int, default=40, help="optimizer steps of the run")
    g.add_argument("--train-skip", type=int, default=2,
                   help="first steps left out of the data-wait share (compilation, cache fill)")
    g.add_argument("--train-batch", type=int, default=None, help="default: --step-batch")
    g.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides for the run (default: frame cache on, "
                        "train.compile=auto)")
    g.add_argument("--train-timeout", type=float, default=600.0, help="seconds for the run")


def _overrides(args, ds, out_dir: Path) -> list[str]:
    sets = [f"data.data_path={ds['data_path']}", f"data.features_path={ds['features_path']}",
            f"data.max_frames={args.max_frames}", f"data.image_resolution={args.resolution}",
            f"data.num_workers={args.workers}", f"data.dali_threads={args.workers}",
            "data.frame_cache=true", "model.pretrained=none", f"model.name={args.model}",
            f"model.sim_header={args.sim_header}", f"train.output_dir={out_dir}",
            f"train.max_steps={args.train_steps}", f"train.batch_size={args.train_batch or args.step_batch}",
            "train.eval_every_epoch=false", "train.compile=auto", "train.log_every=1",
            "train.epochs=1000"]
    if args.tiny:
        tiny = json.loads(json.dumps(TINY_OPEN_CLIP))
        tiny["vision_cfg"]["image_size"] = args.resolution
        sets += ["model.name=tiny", "model.open_clip_config=" + json.dumps(tiny),
                 "train.precision=fp32"]
    return sets + list(args.train_set)


def wait_share(records: list[dict], skip: int) -> dict:
    """Data-wait share and frames/s of the logged steps after the first ``skip``."""
    steps = [r for r in records if r.get("kind") == "train" and r["step"] > skip]
    if not steps:
        return na(f"no logged step after the first {skip}")
    return {"status": "ok", "steps_measured": len(steps),
            "data_wait_share": sum(r["data_wait_share"] for r in steps) / len(steps),
            "data_wait_share_stat": stats(max(r["data_wait_share"], 1e-9) for r in steps),
            "frames_per_s": stats(r["frames_per_s"] for r in steps),
            "last_loss": steps[-1]["loss"]}


def run(ctx) -> None:
    args, rep = ctx.args, ctx.rep
    ds = datasets(args)[0]
    # Checkpoints (GBs for ViT-B/32) stay in a temporary folder; the log and metrics are kept.
    out_dir = Path(tempfile.mkdtemp(prefix="clip4clip-bench-train-"))
    keep = Path(args.out) / f"{rep.name}-run"
    sets = _overrides(args, ds, out_dir)
    sec = rep.doc.setdefault(NAME, {"config": {
        "dataset": f"{ds['label']}: {ds['note']}", "steps": args.train_steps,
        "skip": args.train_skip, "overrides": sets}, "rows": []})
    cmd = [sys.executable, "-m", "clip4clip_dali.train"] + [a for s in sets for a in ("--set", s)]
    row = {"dataset": ds["label"], "device": ctx.device.type}
    log(f"train: {args.train_steps} steps on {ds['label']} ...")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if ctx.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=args.train_timeout)
        (out_dir / "train.log").write_text(p.stdout + p.stderr)
        metrics = out_dir / "metrics.jsonl"
        if p.returncode != 0 or not metrics.exists():
            tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-3:])[-400:]
            row.update(status="error", reason=f"exit {p.returncode}: {tail}")
        else:
            recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            row.update(wait_share(recs, args.train_skip))
    except subprocess.TimeoutExpired:
        row.update(na(f"the run took over {args.train_timeout:g} s"))
    finally:
        keep.mkdir(parents=True, exist_ok=True)
        for f in ("train.log", "metrics.jsonl"):
            if (out_dir / f).exists():
                shutil.copy(out_dir / f, keep / f)
        shutil.rmtree(out_dir, ignore_errors=True)
    row["log"] = str(keep / "train.log")
    sec["rows"].append(row)
    log(f"  train: {status_text(row)}" + (f", data wait {100 * row['data_wait_share']:.1f}%"
                                         if row.get("data_wait_share") is not None else ""))
    rep.flush()


def markdown(doc: dict) -> list[str]:
    sec = doc.get(NAME)
    if not sec:
        return []
    c = sec["config"]
    lines = ["## Short training run", "",
             f"`python -m clip4clip_dali.train`, {c['steps']} steps on {c['dataset']}; the first "
             f"{c['skip']} left out. Overrides: `{' '.join(c['overrides'])}`.", "",
             "| set | device | steps measured | data wait (mean of steps) | frames/s | status |",
             "|---|---|---:|---:|---:|---|"]
    for r in sec["rows"]:
        wait = f"{100 * r['data_wait_share']:.1f}%" if r.get("data_wait_share") is not None else "n/a"
        fps = fmt(r["frames_per_s"]["median"]) if r.get("frames_per_s") else "n/a"
        lines.append(f"| {r['dataset']} | {r['device']} | {r.get('steps_measured', 'n/a')} | "
                     f"{wait} | {fps} | {status_text(r)} |")
    return lines + [""]


def targets(doc: dict) -> list[dict]:
    return []  # the data-wait target is the step section's (compiled ViT-B/32 at 128 x 12)


def plot(doc: dict):
    return None


def merge(into: dict, sec: dict) -> None:
    if NAME not in into:
        into[NAME] = dict(sec, rows=[])
    into[NAME]["rows"] += sec["rows"]
