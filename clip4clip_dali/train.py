"""Fine-tune CLIP4Clip.

    python -m clip4clip_dali.train --config configs/msvd_meanP.yaml [--set key=value ...] [--resume PATH|auto]
    torchrun --nproc_per_node=N -m clip4clip_dali.train --config ...

The global batch is ``train.batch_size`` whatever the number of processes. Each epoch ends with
an evaluation on the val split (``best.pt`` keeps the best text-to-video R@1); at the end the
best weights are evaluated on the test split. Outputs in ``train.output_dir``: ``latest.pt``
(full state, atomic), ``best.pt`` (weights), ``metrics.jsonl``, ``eval_*.json`` (``*_before.json``:
the weights training starts from), ``summary.json`` (final recall beside the one before
training), ``curves.png`` (``python -m clip4clip_dali.plot``), ``config.yaml``.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed as D
from .config import Config, compile_enabled, load_config
from .errors import UserError, run_cli
from .runsetup import (build_model, build_split_loader, output_folder, prepare_data,
                       seed_everything, setup_logging)

log = logging.getLogger("clip4clip_dali")
CURVES_EVERY_S = 20.0  # curves.png at each evaluation, at most this often (and at the end)


def _check_batch(cfg: Config, info: D.DistInfo) -> None:
    bs, world, k = cfg.train.batch_size, info.world_size, cfg.train.gradient_accumulation_steps
    if bs % (world * k):
        raise UserError(f"train.batch_size {bs} must be divisible by the number of processes "
                        f"({world}) x train.gradient_accumulation_steps ({k}); the global batch "
                        f"is split evenly across processes and micro-steps.")


def resolve_resume(cfg: Config, cli_resume: str | None) -> Path | None:
    value = cli_resume if cli_resume is not None else cfg.train.resume
    if not value:
        return None
    if value == "auto":
        p = Path(cfg.train.output_dir) / "latest.pt"
        return p if p.is_file() else None
    p = Path(value)
    if not p.is_file():
        raise UserError(f"--resume {value}: no such checkpoint; pass the path of a latest.pt "
                        f"or 'auto' to resume from {cfg.train.output_dir}/latest.pt when present.")
    return p


def run(cfg: Config, resume: str | None = None, info: D.DistInfo | None = None) -> dict:
    """Train (and evaluate) according to ``cfg``. Returns a summary dict."""
    from .data.dataset import load_split
    from .engine import Trainer
    from .retrieval import evaluate_split, print_results, write_results
    from .optim import build_optimizer
    from .tracking import Tracker, peak_flops, training_flops_per_sample

    info = info or D.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    setup_logging(info)
    t_start = time.perf_counter()
    tc = cfg.train
    _check_batch(cfg, info)
    resume_path = resolve_resume(cfg, resume)  # a bad --resume fails before any data work
    out = Path(tc.output_dir)
    if info.is_main:
        output_folder(out)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    seed_everything(tc.seed)

    # ---- data
    prepare_data(cfg, info)
    train_split = load_split(cfg.data, cfg.data.train_split)
    val_split = None
    if tc.eval_every_epoch:
        val_split = load_split(cfg.data, cfg.data.val_split)
    loader = build_split_loader(cfg, train_split, "train", info)
    # Built once: every epoch's evaluation reuses it (and DALI its pipeline).
    val_loader = build_split_loader(cfg, val_split, "eval", info) if val_split else None
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        from .data.loaders.sharding import train_sample_count

        raise UserError(f"the {cfg.data.train_split} split has {train_sample_count(train_split)} "
                        f"training samples, fewer than one global batch (train.batch_size "
                        f"{tc.batch_size}); lower train.batch_size.")
    # The schedule spans all epochs; max_steps only stops early (benchmarks, smoke runs), so a
    # run cut by max_steps and resumed follows the same learning rates as an uninterrupted one.
    schedule_steps = steps_per_epoch * tc.epochs
    total_steps = min(schedule_steps, tc.max_steps) if tc.max_steps else schedule_steps

    # ---- model, precision, optimizer
    model = build_model(cfg, info.device)
    if tc.init_model:
        ckpt.load_model_weights(model, tc.init_model)
        log.info("initialised the model from %s", tc.init_model)
    if tc.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise UserError("train.grad_checkpointing is set but the model has no "
                            "set_grad_checkpointing.")
        model.set_grad_checkpointing(True)
    if tc.precision == "fp16_weights":
        model.convert_clip_to_fp16()
    optimizer, scheduler = build_optimizer(tc, model, schedule_steps, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=tc.precision == "amp_fp16")

    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            broadcast_buffers=False)
    compiled = compile_enabled(tc.compile, info.device)
    if compiled:
        train_model = torch.compile(train_model)

    fl = training_flops_per_sample(model, cfg.data.max_frames, cfg.data.max_words,
                                   cfg.data.image_resolution)
    peak = peak_flops(info.device)
    trainer = Trainer(cfg, info, model, train_model, optimizer, scheduler, scaler, loader,
                      val_split, None, total_steps, val_loader=val_loader)
    if resume_path is not None:
        obj = ckpt.load_for_resume(resume_path, map_location=info.device)
        _warn_config_change(obj.get("config") or {}, cfg.to_dict())
        trainer.load_state(obj)
        log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", resume_path,
                 trainer.state.epoch, trainer.state.step, trainer.state.batch_in_epoch)
    tracker = Tracker(out, info.is_main, total_steps, fl, peak,
                      frames_per_sample=cfg.data.max_frames, log_every=tc.log_every,
                      start_step=trainer.state.step, curves_every_s=CURVES_EVERY_S)
    trainer.tracker = tracker
    # The test split's recall before the first step, beside the final one in the summary (for
    # CLIP weights, the zero-shot baseline); not for runs cut short by max_steps (benchmarks,
    # smoke runs). Its loader is kept for the final evaluation.
    test_split = test_loader = before = None
    if cfg.eval.test_at_end:
        test_split = load_split(cfg.data, cfg.data.test_split)
        if not (test_split.num_videos and len(test_split.captions)):
            test_split = None
    if test_split is not None and trainer.state.step == 0 and not tc.max_steps:
        test_loader = build_split_loader(cfg, test_split, "eval", info)
        before = evaluate_split(model, cfg, test_split, info, loader=test_loader)
        if info.is_main:
            print_results(before, f"{test_split.name} (before training)")
            write_results(before, out, f"eval_{test_split.name}_before.json")
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s on %s (%d process(es)), loader %s, %d steps/epoch, %d steps, %.1fM params "
             "(%.1fM trained), precision %s%s", cfg.model.sim_header, info.device,
             info.world_size, getattr(loader, "backend", "?"), steps_per_epoch, total_steps,
             n_params / 1e6, n_train / 1e6, tc.precision, ", compiled" if compiled else "")

    try:
        status = trainer.fit()
    finally:
        tracker.close()
    summary = {"status": status, "steps": trainer.state.step, "epoch": trainer.state.epoch,
               "skipped_steps": trainer.state.skipped, "best_val_t2v_R1": trainer.state.best_metric,
               "best_epoch": trainer.state.best_epoch, "losses": trainer.losses,
               "train_seconds": round(time.perf_counter() - t_start, 2),
               # samples left out: unreadable shards/members (shards.py), undecodable videos
               "skipped_samples": len(getattr(train_split, "skipped", ()))
               + len(getattr(loader, "bad_videos", ()))}
    if before is not None:
        summary["test_before"] = before
    if status == "done" and test_split is not None:
        best = out / "best.pt"
        if best.is_file():
            ckpt.load_model_weights(model, best)
        res = evaluate_split(model, cfg, test_split, info, loader=test_loader)
        res["checkpoint"] = str(best) if best.is_file() else "final weights"
        summary["test"] = res
        if info.is_main:
            print_results(res, f"{test_split.name} ({res['checkpoint']})")
            write_results(res, out, f"eval_{test_split.name}.json")
            log.info("%s", recall_line(test_split.name, res, before))
        if cfg.eval.index_test_split:
            from .demo_search import index_and_search

            summary["search"] = index_and_search(cfg, test_split.name, info)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    if info.is_main:
        write_results({k: v for k, v in summary.items() if k != "losses"}, out, "summary.json")
        if (out / "curves.png").is_file():
            print(f"Curves (loss, learning rate, val R@1, frames/s, data wait): "
                  f"{out / 'curves.png'}", flush=True)
    return summary


def recall_line(split: str, final: dict, before: dict | None) -> str:
    """``test t2v R@1 48.0 (before training 1.0; chance 1.0), v2t R@1 ...``."""
    chance = 100.0 / max(final["videos"], 1)
    parts = []
    for d in ("t2v", "v2t"):
        r1 = final["plain"][d]["R1"]
        was = f"before training {before['plain'][d]['R1']:.1f}; " if before else ""
        parts.append(f"{d} R@1 {r1:.1f} ({was}chance {chance:.1f})")
    return f"{split} " + ", ".join(parts) + f" over {final['videos']} videos"


def _warn_config_change(old: dict, new: dict, prefix: str = "") -> None:
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            _warn_config_change(a, b, prefix + k + ".")
        elif a != b and not (prefix + k).startswith("train.resume"):
            log.warning("resume: %s%s was %r in the checkpoint, now %r", prefix, k, a, b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.train",
                                description="Fine-tune CLIP4Clip for text-video retrieval.")
    p.add_argument("--config", default=None,
                   help="YAML config (default: the built-in defaults = configs/msvd_meanP.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=64 (repeatable)")
    p.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a full checkpoint; 'auto' = <output_dir>/latest.pt if any")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    info = D.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    try:
        summary = run(cfg, args.resume, info)
    finally:
        D.cleanup()
    return 0 if summary["status"] in ("done", "stopped") else 1


if __name__ == "__main__":
    run_cli(main)
