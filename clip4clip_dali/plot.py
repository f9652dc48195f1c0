"""Draw a run's curves from its ``metrics.jsonl``: loss, learning rate, val R@1, frames/s, data wait.

    python -m clip4clip_dali.plot RUN_DIR [RUN_DIR ...] [--out PNG]

One run: ``RUN_DIR/curves.png`` (training writes the same picture there at each evaluation and
at the end). Several runs: drawn over each other, one colour per run, into
``curves_compare.png`` in their common parent folder unless ``--out`` names another file.
Needs matplotlib; training without it logs one line and goes on.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Optional

from .errors import UserError, run_cli

log = logging.getLogger("clip4clip_dali")

PANELS = (  # (title, record kind, x key, y key)
    ("training loss", "train", "step", "loss"),
    ("learning rate", "train", "step", "lr"),
    ("val t2v R@1", "eval", "epochs_done", "R1"),
    ("frames/s", "train", "step", "frames_per_s"),
    ("data-wait share", "train", "step", "data_wait_share"),
)


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, val records) of ``run_dir/metrics.jsonl``. A line cut short by a crash
    is skipped. Val records gain ``epochs_done`` (0 = before training) and ``R1`` (text-to-video)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the output folder of a training run "
                        f"(train.output_dir), which holds metrics.jsonl")
    train, evals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("kind") == "train":
            train.append(rec)
        elif rec.get("kind") == "eval" and rec.get("split") != "test":
            try:
                r1 = float(rec["plain"]["t2v"]["R1"])
            except (KeyError, TypeError, ValueError):
                continue
            done = rec.get("epochs_done", int(rec.get("epoch", 0)) + 1)
            evals.append({**rec, "epochs_done": done, "R1": r1})
    return _last_run(train, "step"), _last_run(evals, "epochs_done")


def _last_run(records: list[dict], key: str) -> list[dict]:
    """A resumed run appends to the same file: keep each x once, the latest record winning."""
    by_x = {}
    for r in records:
        if isinstance(r.get(key), (int, float)):
            by_x[r[key]] = r
    return [by_x[k] for k in sorted(by_x)]


def _import_matplotlib():
    try:  # the Figure API draws without pyplot, so no backend is chosen for the process
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def matplotlib_missing() -> bool:
    return _import_matplotlib() is None


def draw(runs: list[tuple[str, list[dict], list[dict]]], out: str | Path) -> Path:
    """Draw ``[(label, train records, val records), ...]`` into the PNG ``out`` (written to a
    temporary name and renamed, so a reader never sees half a picture)."""
    Figure = _import_matplotlib()
    if Figure is None:
        raise UserError("drawing curves needs matplotlib: pip install matplotlib")
    fig = Figure(figsize=(15, 3.2), dpi=80)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.16, top=0.84, wspace=0.28)
    axes = fig.subplots(1, len(PANELS))
    for ax, (title, kind, xkey, ykey) in zip(axes, PANELS):
        for i, (label, train, evals) in enumerate(runs):
            recs = train if kind == "train" else evals
            pts = [(r[xkey], r[ykey]) for r in recs
                   if isinstance(r.get(ykey), (int, float)) and isinstance(r.get(xkey), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3,
                        color=f"C{i}", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epochs done" if kind == "eval" else "step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ykey == "data_wait_share":
            ax.set_ylim(0, 1)
        if ykey == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    elif runs:
        fig.suptitle(runs[0][0], fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_run_curves(run_dir: str | Path) -> Optional[Path]:
    """``run_dir/curves.png`` from its metrics.jsonl; None (and one log line a process) without
    matplotlib. Never raises for a drawing problem: the picture is not worth a training run."""
    global _warned
    if matplotlib_missing():
        if not _warned:
            log.info("matplotlib is not installed: no curves.png (pip install matplotlib; "
                     "the numbers are in metrics.jsonl)")
            _warned = True
        return None
    run_dir = Path(run_dir)
    try:
        train, evals = read_metrics(run_dir)
        return draw([(run_dir.name or str(run_dir), train, evals)], run_dir / "curves.png")
    except Exception as e:  # noqa: BLE001
        log.warning("could not draw %s/curves.png: %s", run_dir, e)
        return None


_warned = False


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clip4clip_dali.plot",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output folders")
    ap.add_argument("--out", default=None,
                    help="PNG to write (default: RUN_DIR/curves.png for one run, "
                         "curves_compare.png in the runs' common parent for several)")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not r.is_dir():
            raise UserError(f"{r}: no such folder; pass training output folders (train.output_dir)")
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise UserError(f"--out {out}: the picture is a PNG; give a name ending in .png")
    elif len(runs) == 1:
        out = runs[0] / "curves.png"
    else:
        parent = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
        out = parent / "curves_compare.png"
    labels = [str(r) for r in runs]
    data = [(label, *read_metrics(r)) for label, r in zip(labels, runs)]
    if not any(t or e for _, t, e in data):
        raise UserError(f"{', '.join(labels)}: metrics.jsonl holds no training or evaluation "
                        f"records yet")
    print(draw(data, out))
    return 0


if __name__ == "__main__":
    run_cli(main)
