"""Training telemetry: a rich progress bar, a JSONL metrics file, optional TensorBoard, MFU, and
``curves.png`` (``clip4clip_dali.plot``).

Only rank 0 writes. The JSONL file (``<output_dir>/metrics.jsonl``) gets one object per logged
step (``kind: "train"``) and per evaluation (``kind: "eval"``, with ``epochs_done``: 0 for the
evaluation before training). Named ``tracking`` rather than
``logging`` so it never shadows the standard library module.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("clip4clip_dali")

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name substring; first match wins.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("A10G", 70e12), ("A10", 125e12), ("L4", 121e12),
    ("V100", 125e12), ("A6000", 155e12), ("4090", 165e12), ("3090", 71e12), ("T4", 65e12),
)


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of ``device``; None on CPU or an unknown card (MFU not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS:
        if key in name:
            return value
    return None


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def training_flops_per_sample(model: torch.nn.Module, max_frames: int, max_words: int,
                              image_resolution: int) -> float | None:
    """Forward+backward FLOPs of one (caption, clip) pair, ~6 x params x tokens per tower.

    Uses ``model.flops_per_sample`` when the model provides it (a number or a callable).
    Otherwise finds the vision tower (a submodule named ``visual``) and charges its parameters
    per image token (patches + CLS) per frame, and the rest per text token; attention's
    quadratic term is left out (small at these sequence lengths). Frozen parameters still cost
    the forward and the backward through activations (4x instead of 6x) but we keep 6x: the
    estimate is an upper bound on useful work, as nanoGPT's.
    """
    fps = getattr(model, "flops_per_sample", None)
    if fps is not None:  # the model's forward FLOPs; backward costs about twice the forward
        value = fps() if callable(fps) else fps
        return 3.0 * float(value) if value else None
    visual = None
    for name, mod in model.named_modules():
        if name.split(".")[-1] == "visual":
            visual = mod
            break
    total = _count(model)
    if visual is None:
        return None
    n_vis = _count(visual)
    n_txt = total - n_vis
    patch = None
    for m in visual.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            patch = m.kernel_size[-1]
            break
    if patch is None:
        return None
    tokens = (image_resolution // patch) ** 2 + 1
    return 6.0 * (n_vis * tokens * max_frames + n_txt * max_words)


class Tracker:
    """Rank-0 sink for step and eval records: progress bar, JSONL, TensorBoard."""

    def __init__(self, output_dir: str | Path, enabled: bool, total_steps: int,
                 flops_per_sample: float | None, peak: float | None, frames_per_sample: int,
                 log_every: int = 10, use_progress: bool | None = None, start_step: int = 0,
                 curves_every_s: float = 0.0):
        self.enabled = enabled
        # Drawing costs ~0.3 s of CPU: runs with quick epochs (the demo) draw at most this often.
        self.curves_every_s = curves_every_s
        self._curves_at = None
        self.output_dir = Path(output_dir)
        self.flops_per_sample = flops_per_sample
        self.peak = peak
        self.frames_per_sample = frames_per_sample
        self.log_every = log_every
        self.total_steps = total_steps
        self._jsonl = None
        self._tb = None
        self._progress = None
        self._task = None
        self._window: list[tuple[float, float, int]] = []  # (step_s, wait_s, samples)
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(self.output_dir / "tb"))
        except Exception:
            self._tb = None
        from rich.console import Console

        console = Console(stderr=True)
        if use_progress is None:
            use_progress = console.is_terminal
        if use_progress:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps,
                                                 completed=start_step, info="")

    # -------------------------------------------------------------------------- records
    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record, default=_json_default) + "\n")
        if self._tb is not None:
            step = record.get("step", 0)
            prefix = record.get("kind", "train")
            for k, v in _flatten(record).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in (
                        "step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def step(self, *, step: int, epoch: int, loss: float, lr: float, step_s: float,
             wait_s: float, samples: int, skipped: int, grad_norm: float | None,
             device: torch.device) -> None:
        """Account one optimizer step; log every ``log_every`` steps."""
        self._window.append((step_s, wait_s, samples))
        if not self.enabled:
            return
        if step % self.log_every != 0 and step != self.total_steps:
            if self._progress is not None:
                self._progress.update(self._task, completed=step)
            return
        tot = sum(w[0] for w in self._window) or 1e-9
        wait = sum(w[1] for w in self._window)
        n = sum(w[2] for w in self._window)
        self._window.clear()
        samples_s = n / tot
        frames_s = samples_s * self.frames_per_sample
        mfu = None
        if self.flops_per_sample and self.peak:
            mfu = samples_s * self.flops_per_sample / self.peak
        mem = None
        if device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(device) / 2**30
        rec = {"kind": "train", "time": time.time(), "step": step, "epoch": epoch,
               "loss": loss, "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples_s,
               "frames_per_s": frames_s, "data_wait_share": wait / tot, "mfu": mfu,
               "peak_mem_gib": mem, "skipped_steps": skipped}
        self.write(rec)
        info = (f"loss {loss:.4f} lr {lr:.2e} {frames_s:,.0f} frames/s "
                f"data {100 * wait / tot:.0f}%" + (f" MFU {100 * mfu:.1f}%" if mfu else ""))
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        else:
            log.info("step %d/%d epoch %d %s", step, self.total_steps, epoch, info)

    def eval(self, *, step: int, epoch: int, split: str, results: dict, seconds: float,
             epochs_done: int | None = None) -> None:
        done = epoch + 1 if epochs_done is None else epochs_done
        self.write({"kind": "eval", "time": time.time(), "step": step, "epoch": epoch,
                    "epochs_done": done, "split": split, "seconds": seconds, **results})
        if step > 0:  # before the first step there is no curve yet (that point is drawn later)
            self.curves()

    def curves(self, final: bool = False) -> Path | None:
        """(Re)draw ``curves.png`` from metrics.jsonl; between evaluations closer than
        ``curves_every_s`` only the final call draws."""
        if not self.enabled or self._jsonl is None:
            return None
        now = time.perf_counter()
        if not final and self._curves_at is not None and now - self._curves_at < self.curves_every_s:
            return None
        from .plot import write_run_curves

        self._jsonl.flush()
        self._curves_at = now
        return write_run_curves(self.output_dir)

    def print(self, renderable) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(renderable)
        else:
            from rich.console import Console

            Console(stderr=False).print(renderable)

    def close(self) -> None:
        self.curves(final=True)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
