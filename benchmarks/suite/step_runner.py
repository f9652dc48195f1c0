"""One training-step measurement: forward, loss, backward, global grad clip, AdamW, logit-scale
clamp; eager or compiled, fp32 or amp_bf16; on a fixed synthetic batch (model only) or on
batches from a loader (end to end, the time waiting for them reported as a share)."""
from __future__ import annotations

import contextlib
import gc
import math
import time
import traceback
import warnings

import numpy as np

from .common import na, short_error, stats
from .loaders import make_loader, unsupported_reason

TINY_OPEN_CLIP = {  # a tiny open_clip model for --quick / tests (random init)
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

VARIANTS = {  # name -> (precision, compiled)
    "eager_fp32": ("fp32", False),
    "eager_amp_bf16": ("amp_bf16", False),
    "compiled_amp_bf16": ("amp_bf16", True),
}


def build_model(args, cfg, device, grad_ckpt: bool):
    import torch

    from clip4clip_dali.model import CLIP4Clip

    torch.manual_seed(0)
    with warnings.catch_warnings():  # "random init" is what a benchmark wants
        warnings.simplefilter("ignore")
        model = CLIP4Clip.from_config(cfg.model, max_words=cfg.data.max_words,
                                      max_frames=cfg.data.max_frames).to(device)
    model.train()
    model.set_grad_checkpointing(grad_ckpt)
    groups = model.param_groups(cfg.train.lr, cfg.train.coef_lr, cfg.train.weight_decay)
    kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-6, **kw)
    return model, opt


def synthetic_batch(args, cfg, device, batch: int | None = None):
    import torch

    from clip4clip_dali.data.text import Tokenizer

    b, t, r = batch or args.step_batch, cfg.data.max_frames, cfg.data.image_resolution
    g = torch.Generator().manual_seed(0)
    words = ["a", "red", "blue", "circle", "square", "moves", "left", "right", "up", "down",
             "slowly", "the", "on", "background", "while", "green"]
    rng = np.random.default_rng(0)
    caps = [" ".join(rng.choice(words, size=int(rng.integers(4, 14)))) for _ in range(b)]
    text, text_mask = Tokenizer(cfg.data.max_words)(caps)
    return {"video": torch.randn((b, t, 3, r, r), generator=g).to(device),
            "video_mask": torch.ones((b, t), dtype=torch.int64).to(device),
            "text": text.to(device), "text_mask": text_mask.to(device),
            "video_index": torch.arange(b, dtype=torch.int64).to(device)}


def make_step(model, fn, opt, precision: str, device):
    import torch

    amp = precision == "amp_bf16"
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
        return loss

    return step


def count_flops(args, cfg, device, analytic: list) -> tuple[float | None, str]:
    """FLOPs of one training step (forward + backward, no recompute), FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    small = min(args.step_batch, 4)  # counted on a small batch, scaled linearly (the B x B
    try:                               # similarity terms are negligible next to the towers)
        model, opt = build_model(args, cfg, device, False)
        batch = synthetic_batch(args, cfg, device, small)
        counter = FlopCounterMode(display=False)
        with counter:
            loss = model(batch)
            loss.backward()
        flops = float(counter.get_total_flops()) * args.step_batch / small
        with contextlib.suppress(Exception):  # the model's own analytic count, as a cross-check
            analytic[0] = 3.0 * args.step_batch * float(model.flops_per_sample())
        del model, opt, batch, loss
        free_memory(device)
        if flops <= 0:
            return None, "FlopCounterMode counted 0 FLOPs"
        scaled = f", batch {small} scaled x{args.step_batch / small:g}" if small != args.step_batch else ""
        return flops, ("torch.utils.flop_counter.FlopCounterMode on one eager fp32 step "
                       f"(forward + backward, matmul/conv/attention only, no recompute{scaled})")
    except Exception as e:
        return None, f"FLOP count failed: {short_error(e)}"


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def measure_step(variant: str, grad_ckpt: bool, args, cfg, device, flops, peak, mode="model_only",
                 loader_kind: str | None = None, loader_split=None, keep: dict | None = None) -> dict:
    """One row. ``keep``: a dict that holds the built model/optimizer/compiled step across calls
    (so end-to-end rows reuse the model-only row's compiled graph); the caller frees it."""
    import torch

    precision, compiled = VARIANTS[variant]
    b, t = args.step_batch, cfg.data.max_frames
    row = {"variant": variant, "precision": precision, "compiled": compiled,
           "grad_checkpointing": grad_ckpt, "mode": mode, "loader": loader_kind,
           "batch": b, "frames_per_clip": t}
    if compiled and args.no_compile:
        return {**row, **na(args.no_compile)}
    if mode == "e2e":
        reason = unsupported_reason(loader_kind, loader_split, device.type == "cuda")
        if reason:
            return {**row, **na(reason)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = opt = loader = step = None
    try:
        if keep is not None and keep.get("key") == (variant, grad_ckpt):
            model, opt, step = keep["model"], keep["opt"], keep["step"]
        else:
            if keep is not None:
                keep.clear()
            model, opt = build_model(args, cfg, device, grad_ckpt)
            fn = torch.compile(model) if compiled else model
            step = make_step(model, fn, opt, precision, device)
            if keep is not None:
                keep.update(key=(variant, grad_ckpt), model=model, opt=opt, step=step)
        if mode == "model_only":
            fixed = synthetic_batch(args, cfg, device)
            next_batch = lambda: fixed  # noqa: E731
        else:
            loader = make_loader(loader_kind, cfg, loader_split, "train", b, device)
            if len(loader) < 1:
                return {**row, **na(f"the set has fewer than {b} captions for one batch")}
            state = {"epoch": 0, "it": iter(loader)}

            def next_batch():
                while True:
                    try:
                        return next(state["it"])
                    except StopIteration:
                        state["epoch"] += 1
                        loader.set_epoch(state["epoch"])
                        state["it"] = iter(loader)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.step_warmup):
            step(next_batch())
        sync()
        warm = time.perf_counter() - t0
        times, waits, frames = [], [], []
        start = time.perf_counter()
        for _ in range(args.step_iters):
            t1 = time.perf_counter()
            batch = next_batch()
            if mode == "e2e":
                sync()  # data wait = until the batch is on the device
            t2 = time.perf_counter()
            loss = step(batch)
            sync()
            t3 = time.perf_counter()
            times.append(t3 - t1)
            waits.append(t2 - t1)
            frames.append(int(batch["video_mask"].sum()))
            if time.perf_counter() - start > args.step_budget:
                break
        if not math.isfinite(float(loss.detach())):
            row["note"] = "loss not finite (random init)"
        ms = [1000 * x for x in times]
        med = float(np.median(times))
        out = {**row, "status": "ok", "ms_per_step": stats(ms), "steps_per_s": 1.0 / med,
               "frames_per_s": float(np.median(frames)) / med, "warmup_s": warm,
               "iters": len(times)}
        if device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            out["peak_mem_gib"] = None
            out["peak_mem_note"] = "CPU: not tracked per variant"
        if flops and peak:
            out["mfu"] = flops / med / (peak * 1e12)
        else:
            out["mfu"] = None
        if mode == "e2e":
            out["data_wait_share"] = float(sum(waits) / sum(times))
            out["data_wait_ms"] = stats([1000 * w for w in waits])
        return out
    except Exception as e:
        if device.type == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
            return {**row, **na(f"out of GPU memory at batch {b}x{t}")}
        traceback.print_exc()
        return {**row, "status": "error", "reason": short_error(e)}
    finally:
        del model, opt, loader, step
        if keep is None:
            free_memory(device)
        else:
            gc.collect()
