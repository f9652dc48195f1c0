"""Benchmark suite: loader frames/s and training-step time, side by side with the original way.

    python benchmarks/throughput.py                       # full suite on this machine
    python benchmarks/throughput.py --quick               # CI-sized run (< 60 s on 2 cores)
    python benchmarks/throughput.py --sections loader --codecs vp9,h264 --clip-size 298x224 --clip-fps 3
    python benchmarks/throughput.py --data-path data/msvd --features-path data/msvd/videos

Two sections, each optional (``--sections``):

loader  frames/s and clips/s delivered (evaluation order: each clip once per pass, the sampled
        frames only, ``max_frames`` at most) by DALI on the GPU (when CUDA is there), DALI on the
        CPU, the reference PyAV DataLoader and the original CLIP4Clip way (OpenCV, one seek per
        sampled frame, PIL transforms, float64; ``benchmarks/original_style.py``), all with the
        same workers/threads, on the same clips. A backend that cannot read the set (DALI's CPU
        decoder and H.264, no OpenCV, no CUDA) is a row with status ``n/a`` and the reason.
step    ms/step, frames/s, peak memory and MFU of a real training step (forward, loss, backward,
        global grad clip, AdamW, logit-scale clamp) for eager fp32, eager amp_bf16 and compiled
        amp_bf16, each with and without gradient checkpointing; model-only (synthetic tensors
        already on the device) and end to end (batches from the DALI / reference loader, the
        time spent waiting for them reported as a share).

Every timing: warm-up first, then repeats; median with p10/p90. The run's config, library
versions, CPU model and GPU name are recorded. Output: ``<out>/<name>.json`` (rewritten after
every row, so a run cut short still leaves its partial results), ``.md`` and ``.png`` (when
matplotlib is installed). A "targets" block says, for each target of the issue, what was
measured and whether it is met (yes / no / n/a).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SCHEMA = "clip4clip-dali-benchmark/1"

# Dense bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets. Matched on the name
# torch reports, most specific first.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
]

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


# ============================================================================ small helpers

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stats(values) -> dict:
    """median / p10 / p90 / min / max / n of a list of positive numbers."""
    a = np.asarray(list(values), dtype=np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max()),
            "n": int(a.size)}


def na(reason: str, **fields) -> dict:
    return {"status": "n/a", "reason": reason, **fields}


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}" if text else type(e).__name__


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def versions() -> dict:
    out = {"python": platform.python_version()}
    for key, mod, attr in [("torch", "torch", "__version__"), ("torchvision", "torchvision", "__version__"),
                           ("dali", "nvidia.dali", "__version__"), ("open_clip", "open_clip", "__version__"),
                           ("pyav", "av", "__version__"), ("opencv", "cv2", "__version__"),
                           ("numpy", "numpy", "__version__"), ("pillow", "PIL", "__version__"),
                           ("clip4clip_dali", "clip4clip_dali", "__version__")]:
        try:
            m = __import__(mod, fromlist=["_"])
            out[key] = str(getattr(m, attr, "installed"))
        except Exception as e:
            out[key] = f"n/a ({type(e).__name__})"
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except Exception:
        pass
    return out


def gpu_info() -> dict | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        p = torch.cuda.get_device_properties(0)
        return {"name": p.name, "count": torch.cuda.device_count(),
                "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
    except Exception as e:
        return {"name": f"n/a ({short_error(e)})"}


def peak_tflops(gpu: dict | None, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"--peak-tflops {override}"
    if not gpu:
        return None, "CPU: no stated peak, MFU n/a"
    name = gpu.get("name", "")
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"{key} dense bf16 data-sheet peak"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def machine_name(gpu: dict | None) -> str:
    date = _dt.date.today().isoformat()
    if gpu and "n/a" not in gpu.get("name", "n/a"):
        slug = gpu["name"].lower().replace("nvidia", "").strip().split()
        return f"gpu-{'-'.join(slug[:2]) or 'cuda'}-{date}"
    return f"cpu-{usable_cores()}core-{date}"


# ============================================================================ data

def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def bench_dataset(cache: Path, codec: str, videos: int, size: tuple[int, int], fps: Fraction,
                  seconds: tuple[float, float], seed: int, gop: int) -> Path:
    """An MSVD-format set of drawn clips (``clip4clip_dali.data.synthetic``'s shapes, captions
    and encoder settings) at one frame size and rate; every id in every split list. Cached."""
    from clip4clip_dali.data import synthetic as syn

    w, h = size
    name = (f"{codec}-{videos}v-{w}x{h}-{float(fps):g}fps-{seconds[0]:g}-{seconds[1]:g}s"
            f"-gop{gop}-seed{seed}")
    out = cache / name
    if (out / "raw-captions.pkl").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating {videos} {codec} clips {w}x{h} @ {float(fps):g} fps into {out}")
    rng = np.random.default_rng(seed)
    combos = [(c, s, d) for c in syn.COLOURS for s in syn.SHAPES for d in syn.DIRECTIONS]
    order = rng.permutation(len(combos))
    cap_rng = np.random.default_rng([seed, 1])
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out.parent))
    try:
        (tmp / "videos").mkdir()
        ext = syn.CODECS[codec][1]
        captions, ids, jobs = {}, [], []
        for i in range(videos):
            colour, shape, direction = combos[order[i % len(combos)]]
            frames = max(2, int(round(float(rng.uniform(*seconds)) * fps)))
            r = int(min(w, h) * rng.uniform(0.14, 0.2))
            bg = list(syn.BACKGROUNDS)[rng.integers(len(syn.BACKGROUNDS))]
            vid = f"bench{i:04d}"
            spec = syn.ClipSpec(vid, w, h, fps.numerator, fps.denominator, frames, bg,
                                [syn.ObjectSpec(colour, shape, direction, r, float(rng.uniform(0.2, 0.8)))])
            jobs.append((str(tmp / "videos" / f"{vid}{ext}"), spec, codec, gop))
            captions[vid] = syn.make_captions(cap_rng, spec, 4)
            ids.append(vid)
        workers = min(usable_cores(), 16, len(jobs))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            from clip4clip_dali.workers import clean_context

            with ProcessPoolExecutor(workers, mp_context=clean_context(("av",))) as pool:
                list(pool.map(_write_clip, jobs, chunksize=4))
        else:
            for job in jobs:
                _write_clip(job)
        for split in ("train", "val", "test"):
            (tmp / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        with open(tmp / "raw-captions.pkl", "wb") as f:
            pickle.dump(captions, f, protocol=4)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_clip(job) -> None:
    from clip4clip_dali.data import synthetic as syn

    path, spec, codec, gop = job
    syn.write_video(path, syn.render_frames(spec), spec.fps, codec, gop=gop)


def native_synthetic_dataset(cache: Path, codec: str, videos: int, seed: int) -> Path:
    """The package's own synthetic set (its varied small frame sizes and rates)."""
    from clip4clip_dali.data.synthetic import generate_dataset

    out = cache / f"synthetic-{codec}-{videos}v-seed{seed}"
    if not (out / "raw-captions.pkl").exists():
        log(f"generating the synthetic set ({videos} {codec} clips) into {out}")
        generate_dataset(out, videos, codec=codec, seed=seed, overwrite=True)
    return out


def make_cfg(args, data_path: Path | None, features_path: Path | None, overrides=()):
    from clip4clip_dali.config import load_config

    sets = [f"data.max_frames={args.max_frames}", f"data.image_resolution={args.resolution}",
            f"data.num_workers={args.workers}", f"data.dali_threads={args.workers}",
            f"data.prefetch={args.prefetch}", "model.pretrained=none"]
    if data_path is not None:
        sets += [f"data.data_path={data_path}", f"data.features_path={features_path}"]
    return load_config(None, sets + list(overrides))


def load_bench_split(args, data_path: Path, features_path: Path, split: str):
    """MSVDSplit of ``split`` (at most --max-videos videos, the first ones listed)."""
    from clip4clip_dali.data.dataset import load_split

    cfg = make_cfg(args, data_path, features_path)
    sp = load_split(cfg.data, split)
    if args.max_videos and sp.num_videos > args.max_videos:
        keep = args.max_videos
        sel = np.flatnonzero(sp.caption_video < keep)
        sp = type(sp)(sp.name, sp.video_ids[:keep], sp.video_paths[:keep], sp.video_info[:keep],
                      [sp.captions[i] for i in sel], sp.caption_video[sel])
    return cfg, sp


def datasets(args) -> list[dict]:
    """The clip sets to measure: [{label, codec, data_path, features_path, note}]."""
    if args.data_path:
        dp = Path(args.data_path)
        fp = Path(args.features_path) if args.features_path else dp
        return [{"label": args.label or f"user:{dp.name}", "codec": "as found", "data_path": dp,
                 "features_path": fp, "note": f"user data {dp} (split {args.split})"}]
    out = []
    cache = Path(args.cache_dir)
    for codec in args.codecs.split(","):
        codec = codec.strip()
        if args.clip_size == "native":
            dp = native_synthetic_dataset(cache, codec, args.videos, args.seed)
            note = f"{args.videos} synthetic clips (package generator, native sizes)"
        else:
            size = parse_size(args.clip_size)
            fps = Fraction(args.clip_fps).limit_denominator(1001)
            dp = bench_dataset(cache, codec, args.videos, size, fps, args.clip_seconds,
                               args.seed, args.gop)
            note = (f"{args.videos} drawn clips {size[0]}x{size[1]} @ {float(fps):g} fps, "
                    f"{args.clip_seconds[0]:g}-{args.clip_seconds[1]:g} s, GOP {args.gop}")
        geometry = "native" if args.clip_size == "native" else \
            f"{args.clip_size}-{float(Fraction(args.clip_fps).limit_denominator(1001)):.3g}fps"
        out.append({"label": f"synthetic-{codec}-{geometry}", "codec": codec, "data_path": dp,
                    "features_path": dp / "videos", "note": note})
    return out


# ============================================================================ loaders

def make_loader(kind: str, cfg, split, mode: str, batch_size: int, device):
    """('dali_gpu'|'dali_hybrid'|'dali_cpu'|'reference') -> loader with __iter__/set_epoch/len
    whose batches end up on ``device`` (DALI-GPU and hybrid: always the current GPU)."""
    import torch

    device = torch.device(device)
    if kind == "reference":
        from clip4clip_dali.data.reference import ReferenceLoader

        return ReferenceLoader(split, cfg.data, mode, batch_size, device=device,
                               num_workers=cfg.data.num_workers)
    from clip4clip_dali.data.dali_loader import DaliLoader

    if kind == "cache":
        from clip4clip_dali.data.frame_cache import CachedLoader

        inner = cache_filler(split, torch.cuda.is_available())
        out_device = torch.device("cuda", torch.cuda.current_device()) if inner == "dali_gpu" \
            else device
        loader = CachedLoader(split, cfg.data, mode, batch_size, lambda data: make_loader(
            inner, dataclasses.replace(cfg, data=data), split, "eval", batch_size, out_device),
            device=out_device)
        loader.filler = inner
        return loader
    if kind in ("dali_gpu", "dali_hybrid"):
        data = dataclasses.replace(cfg.data, dali_decoder="cpu" if kind == "dali_hybrid" else "nvdec")
        return DaliLoader(split, data, mode, batch_size,
                          device=torch.device("cuda", torch.cuda.current_device()))
    if kind != "dali_cpu":
        raise ValueError(f"unknown loader {kind!r}")
    loader = DaliLoader(split, cfg.data, mode, batch_size, device=torch.device("cpu"))
    return _MovingLoader(loader, device) if device.type == "cuda" else loader


class _MovingLoader:
    """A CPU loader whose batches are copied to ``device`` (DALI-CPU feeding a GPU)."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device
        self.backend = getattr(inner, "backend", "?")

    def set_epoch(self, e):
        self.inner.set_epoch(e)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for b in self.inner:
            yield {k: v.to(self.device, non_blocking=True) for k, v in b.items()}


def cache_filler(split, has_cuda: bool) -> str:
    """The loader that fills the frame cache, as build_loader would choose it (auto)."""
    for kind in (("dali_gpu",) if has_cuda else ()) + ("dali_cpu",):
        if unsupported_reason(kind, split, has_cuda) is None:
            return kind
    return "reference"


def unsupported_reason(kind: str, split, has_cuda: bool) -> str | None:
    """Why ``kind`` cannot read this split's videos, or None."""
    if kind in ("dali_gpu", "dali_hybrid", "dali_cpu"):
        try:
            import torch

            from clip4clip_dali.data.dali_loader import dali_import_error
            from clip4clip_dali.data.loader import undecodable
        except Exception as e:
            return f"DALI loader not importable ({short_error(e)})"
        err = dali_import_error()
        if err:
            return err
        if kind in ("dali_gpu", "dali_hybrid") and not has_cuda:
            return "no CUDA device"
        bad = undecodable(split, torch.device("cuda" if kind == "dali_gpu" else "cpu"))
        if bad:
            where = "NVDEC via DALI" if kind == "dali_gpu" \
                else "DALI's CPU decoder (its FFmpeg has no H.264/HEVC/MPEG-4)"
            return (f"{where} cannot decode {', '.join(sorted(bad))}; prepare the clips as VP9 "
                    f"(pipelines/prepare_msvd.py) or use another backend")
    if kind == "original":
        from original_style import cv2_import_error

        return cv2_import_error()
    return None


def _count_pass(batches, sync) -> dict:
    """Iterate one pass; frames/clips delivered, and the same after the first batch (steady)."""
    t0 = time.perf_counter()
    frames = clips = 0
    first = None
    for video, mask in batches:
        frames += int(mask.sum())
        clips += video.shape[0]
        if first is None:
            sync()
            first = (time.perf_counter() - t0, frames, clips)
    sync()
    total = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("the loader yielded no batch")
    return {"t": total, "f": frames, "c": clips, "t1": total - first[0],
            "f1": frames - first[1], "c1": clips - first[2], "first_batch_s": first[0]}


def _time_passes(run_pass, repeats: int, min_seconds: float, budget_s: float):
    """Warm-up pass, then ``repeats`` timed windows of whole passes (each at least
    ``min_seconds``). Returns (per-window sums of run_pass's dicts, warm-up seconds)."""
    t0 = time.perf_counter()
    run_pass()  # warm-up: pipeline build, worker start, caches
    warm = time.perf_counter() - t0
    windows = []
    start = time.perf_counter()
    for _ in range(repeats):
        acc = {"t": 0.0, "f": 0, "c": 0, "t1": 0.0, "f1": 0, "c1": 0, "passes": 0,
               "first_batch_s": 0.0}
        while True:
            r = run_pass()
            for k, v in r.items():
                acc[k] += v
            acc["passes"] += 1
            if acc["t"] >= min_seconds or time.perf_counter() - start > budget_s:
                break
        windows.append(acc)
        if time.perf_counter() - start > budget_s:
            break
    return windows, warm


def measure_loader(kind: str, args, cfg, split, has_cuda: bool) -> dict:
    import torch

    row = {"backend": kind, "workers": args.workers, "batch_size": args.loader_batch,
           "clips": split.num_videos}
    if kind == "cache":
        row["filled_by"] = cache_filler(split, has_cuda)
    reason = unsupported_reason(kind, split, has_cuda)
    if reason:
        return {**row, **na(reason)}
    sync = torch.cuda.synchronize if kind in ("dali_gpu", "dali_hybrid") or (
        kind == "cache" and cache_filler(split, has_cuda) == "dali_gpu") else (lambda: None)

    if kind == "original":
        from torch.utils.data import DataLoader

        from original_style import OriginalStyleDataset

        from clip4clip_dali.data.reference import worker_context

        ds = OriginalStyleDataset(split.video_paths, cfg.data.max_frames, cfg.data.image_resolution,
                                  cfg.data.feature_framerate, cfg.data.slice_framepos)

        def run_pass():
            dl = DataLoader(ds, batch_size=args.loader_batch, shuffle=False,
                            num_workers=args.workers,
                            prefetch_factor=args.prefetch if args.workers > 0 else None,
                            multiprocessing_context=worker_context() if args.workers > 0 else None)
            return _count_pass(dl, sync)
    else:
        loader = make_loader(kind, cfg, split, "eval", args.loader_batch, "cpu")
        epoch = [0]

        def run_pass():
            loader.set_epoch(epoch[0])
            epoch[0] += 1
            return _count_pass(((b["video"], b["video_mask"]) for b in loader), sync)

    windows, warm = _time_passes(run_pass, args.repeats, args.min_repeat_seconds,
                                 args.loader_budget)
    w0 = windows[0]
    out = {**row, "status": "ok", "frames_per_pass": round(w0["f"] / w0["passes"]),
           "frames_per_s": stats(w["f"] / w["t"] for w in windows),
           "clips_per_s": stats(w["c"] / w["t"] for w in windows),
           "first_batch_s": stats(w["first_batch_s"] / w["passes"] for w in windows),
           "warmup_s": warm, "repeats": len(windows), "passes": sum(w["passes"] for w in windows),
           "timed_s": sum(w["t"] for w in windows)}
    if all(w["f1"] > 0 and w["t1"] > 0 for w in windows):
        out["steady_frames_per_s"] = stats(w["f1"] / w["t1"] for w in windows)
    else:
        out["steady_frames_per_s"] = None
        out["steady_note"] = "one batch per pass: no steady state to measure"
    return out


# ============================================================================ model step

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


# ============================================================================ report

def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_stat(s, digits=1):
    if not s:
        return "n/a"
    return f"{fmt(s['median'], digits)} ({fmt(s['p10'], digits)}–{fmt(s['p90'], digits)})"


LOADER_NAMES = {"dali_gpu": "DALI GPU (NVDEC)",
                "dali_hybrid": "DALI CPU decode + GPU resize (data.dali_decoder=cpu)",
                "dali_cpu": "DALI CPU",
                "cache": "data.frame_cache (passes after the first)",
                "reference": "reference (PyAV + PIL, DataLoader)",
                "original": "original CLIP4Clip way (OpenCV seeks + PIL, float64)"}


def targets(doc: dict) -> list[dict]:
    out = []
    rows = doc.get("loader", {}).get("rows", [])
    cpu = doc["meta"]["device"] == "cpu"

    def fps(backend, ds):
        """Whole-pass frames/s (each backend pays its own start-up, as every epoch does)."""
        for r in rows:
            if r["backend"] == backend and r["dataset"] == ds and r["status"] == "ok":
                return r["frames_per_s"]["median"]
        return None

    def steady(backend, ds):
        for r in rows:
            if r["backend"] == backend and r["dataset"] == ds and r.get("steady_frames_per_s"):
                return r["steady_frames_per_s"]["median"]
        return None

    for ds in dict.fromkeys(r["dataset"] for r in rows):
        dali = fps("dali_cpu", ds)
        for other, factor in (("reference", 1.3), ("original", 2.0)):
            o = fps(other, ds)
            t = {"target": f"CPU [{ds}]: DALI-CPU >= {factor}x {other} loader frames/s "
                           f"(same cores)"}
            if dali and o:
                ratio = dali / o
                sd, so = steady("dali_cpu", ds), steady(other, ds)
                extra = f"; steady {sd / so:.2f}x" if sd and so else ""
                t.update(measured=f"{ratio:.2f}x ({dali:.1f} vs {o:.1f} frames/s{extra})",
                         met="yes" if ratio >= factor else "no")
            else:
                t.update(measured="n/a", met="n/a",
                         note="a backend was not measured on this set")
            out.append(t)
        gpu_fed = [(fps(k, ds), k) for k in ("dali_gpu", "dali_hybrid") if fps(k, ds)]
        g, kind = max(gpu_fed) if gpu_fed else (None, None)
        t = {"target": f"GPU [{ds}]: DALI-GPU loader >= 30,000 frames/s on 3 fps 224p clips"}
        if g:
            sg = steady(kind, ds)
            t.update(measured=f"{g:,.0f} frames/s ({kind})" + (f" (steady {sg:,.0f})" if sg else ""),
                     met="yes" if g >= 30000 else "no")
            info = doc.get("loader", {}).get("dataset_info", {}).get(ds, {})
            if not (abs(info.get("median_fps", 0) - 3) < 0.5
                    and abs(info.get("median_short_side", 0) - 224) <= 16):
                t["note"] = "this set is not 3 fps 224p clips"
        else:
            t.update(measured="n/a", met="n/a", note="no CUDA / DALI-GPU not measured")
        out.append(t)

    srows = [r for r in doc.get("step", {}).get("rows", []) if r["mode"] == "model_only"]

    def ms(variant, ckpt=False):
        for r in srows:
            if r["variant"] == variant and r["grad_checkpointing"] == ckpt and r["status"] == "ok":
                return r["ms_per_step"]["median"]
        return None

    if srows or "step" in doc:
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
        cfgd = doc.get("step", {}).get("config", {})
        t = {"target": "GPU: ViT-B/32 meanP batch 128x12 <= 90 ms/step on one H100 "
                       "(compiled amp_bf16, model only)"}
        right = (cfgd.get("model") in ("ViT-B-32", "ViT-B/32") and cfgd.get("sim_header") == "meanP"
                 and cfgd.get("batch") == 128 and cfgd.get("frames") == 12 and not cfgd.get("tiny"))
        best = min([x for x in (ms("compiled_amp_bf16"), ms("compiled_amp_bf16", True)) if x],
                   default=None)
        if cpu or not right or best is None:
            why = "CPU run" if cpu else ("not ViT-B/32 meanP 128x12" if not right else "not measured")
            t.update(measured=f"{best:.1f} ms/step" if best else "n/a", met="n/a", note=why)
        else:
            t.update(measured=f"{best:.1f} ms/step", met="yes" if best <= 90 else "no")
            gname = (doc["meta"].get("gpu") or {}).get("name", "")
            if "H100" not in gname:
                t["note"] = f"measured on {gname}, target stated for an H100"
        out.append(t)
    return out


def to_markdown(doc: dict) -> str:
    m = doc["meta"]
    lines = [f"# clip4clip-dali benchmark: {m['name']}", ""]
    gpu = m.get("gpu")
    lines += [f"- date: {m['created']}; device: {m['device']}; CPU: {m['cpu']['model']} "
              f"({m['cpu']['cores']} usable cores); GPU: {gpu['name'] if gpu else 'none'}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"- command: `{m['command']}`"]
    if m.get("load_average_at_start"):
        la = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
        lines.append(f"- load average (1/5/15 min) at start {la(m['load_average_at_start'])}"
                     + (f", at end {la(m['load_average_at_end'])}" if m.get("load_average_at_end") else "")
                     + f" on {m['cpu']['cores']} cores"
                     + (" (above the core count: other processes shared the machine and the "
                        "timings are noisy)" if max(m["load_average_at_start"][:1]
                                                     + (m.get("load_average_at_end") or [0])[:1])
                        > m["cpu"]["cores"] else ""))
    lines.append("")
    ld = doc.get("loader")
    if ld:
        lines += ["## Loader: frames/s delivered (each clip once per pass)", ""]
        c = ld["config"]
        lines += [f"max_frames {c['max_frames']}, {c['resolution']}x{c['resolution']}, "
                  f"{c['workers']} DataLoader workers = DALI threads, warm-up pass "
                  f"then {c['repeats']} timed windows of >= {c['min_repeat_seconds']} s; median "
                  f"(p10–p90). Whole pass: from asking for the first batch to the last (what the "
                  f"targets use: each loader pays its own start-up, as every epoch does); steady: "
                  f"after the first batch (pipeline build / worker start excluded; with few "
                  f"batches a pass it flatters loaders that prefetch in parallel).", ""]
        for ds, note in ld.get("datasets", {}).items():
            lines.append(f"- `{ds}`: {note}")
        lines += ["", "| set | loader | batch | frames/s (whole pass) | steady frames/s | clips/s | "
                  "first batch s | status |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in ld["rows"]:
            status = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
            name = LOADER_NAMES.get(r["backend"], r["backend"]) + (
                f", filled by {LOADER_NAMES.get(r['filled_by'], r['filled_by'])}" if r.get("filled_by") else "")
            lines.append(f"| {r['dataset']} | {name} | "
                         f"{r.get('batch_size', c['batch'])} | {fmt_stat(r.get('frames_per_s'))} | {fmt_stat(r.get('steady_frames_per_s'))} | "
                         f"{fmt_stat(r.get('clips_per_s'), 2)} | {fmt_stat(r.get('first_batch_s'), 2)} | "
                         f"{status} |")
        lines.append("")
    st = doc.get("step")
    if st:
        c = st["config"]
        lines += ["## Training step", ""]
        lines += [f"{c['model']} {c['sim_header']}{' (tiny test config)' if c.get('tiny') else ''}, "
                  f"batch {c['batch']} x {c['frames']} frames at {c['resolution']} px, "
                  f"{c['max_words']} words; AdamW{' (fused)' if c['device'] == 'cuda' else ''} + "
                  f"grad clip; {c['warmup']} warm-up steps, {c['iters']} timed; median (p10–p90). "
                  f"FLOPs/step: {fmt(st['flops_per_step'] / 1e9 if st.get('flops_per_step') else None)} "
                  f"GFLOP ({st['flops_method']}); MFU against {st['peak_tflops'] or 'n/a'} TFLOP/s "
                  f"({st['peak_source']}).", ""]
        lines += ["| mode | variant | grad ckpt | ms/step | steps/s | frames/s | peak mem GiB | MFU | data wait | status |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in st["rows"]:
            mode = r["mode"] + (f" ({r['loader']})" if r.get("loader") else "")
            status = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
            wait = f"{100 * r['data_wait_share']:.0f}%" if r.get("data_wait_share") is not None else "–"
            lines.append(f"| {mode} | {r['variant']} | {'yes' if r['grad_checkpointing'] else 'no'} | "
                         f"{fmt_stat(r.get('ms_per_step'))} | {fmt(r.get('steps_per_s'), 2)} | "
                         f"{fmt(r.get('frames_per_s'))} | {fmt(r.get('peak_mem_gib'), 2)} | {mfu} | "
                         f"{wait} | {status} |")
        lines.append("")
    if doc.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in doc["targets"]:
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['target']} | {t['measured']}{note} | {t['met']} |")
        lines.append("")
    if doc.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in doc["errors"]] + [""]
    return "\n".join(lines)



def _bar_panel(ax, rows: list, key: str, labels: list, colour: str, rotation: int,
               ylabel: str, title: str) -> None:
    """One bar chart of ``row[key]`` medians with p10-p90 error bars."""
    med = [r[key]["median"] for r in rows]
    err = [[m - r[key]["p10"] for m, r in zip(med, rows)],
           [r[key]["p90"] - m for m, r in zip(med, rows)]]
    ax.bar(range(len(rows)), med, yerr=err, capsize=3, color=colour)
    ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=rotation, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def write_png(doc: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"no PNG: matplotlib not installed ({type(e).__name__})"
    lrows = [r for r in doc.get("loader", {}).get("rows", []) if r["status"] == "ok"]
    srows = [r for r in doc.get("step", {}).get("rows", []) if r["status"] == "ok"]
    n = bool(lrows) + bool(srows)
    if not n:
        return "no PNG: nothing measured"
    fig, axes = plt.subplots(1, n, figsize=(7.5 * n, 5.5), squeeze=False)
    ax_i = 0
    if lrows:
        labels = [f"{r['backend']}\n{r['dataset'].replace('synthetic-', '')}" for r in lrows]
        _bar_panel(axes[0][ax_i], lrows, "frames_per_s", labels, "tab:blue", 35,
                   "frames/s (median, p10-p90)", "loader throughput")
        ax_i += 1
    if srows:
        labels = [f"{r['variant']}{'+ckpt' if r['grad_checkpointing'] else ''}\n"
                  f"{r['mode']}{'/' + r['loader'] if r.get('loader') else ''}" for r in srows]
        _bar_panel(axes[0][ax_i], srows, "ms_per_step", labels, "tab:orange", 30,
                   "ms/step (median, p10-p90)", "training step")
    fig.suptitle(doc["meta"]["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class Report:
    """The JSON document, rewritten (atomically) after every row."""

    def __init__(self, out_dir: Path, name: str, meta: dict):
        self.out_dir, self.name = out_dir, name
        out_dir.mkdir(parents=True, exist_ok=True)
        self.doc = {"schema": SCHEMA, "meta": meta, "errors": []}
        self.flush()

    def path(self, ext: str) -> Path:
        return self.out_dir / f"{self.name}.{ext}"

    def flush(self, final: bool = False) -> None:
        self.doc["targets"] = targets(self.doc)
        self.doc["meta"]["complete"] = final
        for ext, text in (("json", json.dumps(self.doc, indent=1, default=str)),
                          ("md", to_markdown(self.doc))):
            tmp = self.path(ext + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path(ext))

    def error(self, where: str, e: BaseException) -> None:
        traceback.print_exc()
        self.doc["errors"].append(f"{where}: {short_error(e)}")
        self.flush()


# ============================================================================ sections

def run_loader_section(args, rep: Report, has_cuda: bool) -> None:
    kinds = [k.strip() for k in args.loaders.split(",") if k.strip()]
    sec = rep.doc.setdefault("loader", {"config": {
        "max_frames": args.max_frames, "resolution": args.resolution, "batch": args.loader_batch,
        "workers": args.workers, "repeats": args.repeats,
        "min_repeat_seconds": args.min_repeat_seconds, "backends": kinds},
        "datasets": {}, "rows": []})
    for ds in datasets(args):
        sec["datasets"][ds["label"]] = ds["note"]
        try:
            cfg, split = load_bench_split(args, ds["data_path"], ds["features_path"], args.split)
        except Exception as e:
            rep.error(f"loader [{ds['label']}] dataset", e)
            continue
        frames = [int(i.frames) for i in split.video_info]
        sec.setdefault("dataset_info", {})[ds["label"]] = {
            "videos": split.num_videos,
            "median_fps": float(np.median([i.fps for i in split.video_info])),
            "median_short_side": float(np.median([min(i.width, i.height) for i in split.video_info])),
            "mean_frames": float(np.mean(frames)),
            "codecs": sorted({i.codec for i in split.video_info})}
        sec["datasets"][ds["label"]] += (f"; {split.num_videos} videos, codec(s) "
                                         f"{', '.join(sorted({i.codec for i in split.video_info}))}, "
                                         f"{np.mean(frames):.0f} frames on average")
        for kind in kinds:
            log(f"loader {kind} on {ds['label']} ...")
            try:
                row = measure_loader(kind, args, cfg, split, has_cuda)
            except Exception as e:
                traceback.print_exc()
                row = {"backend": kind, "status": "error", "reason": short_error(e)}
            row["dataset"] = ds["label"]
            sec["rows"].append(row)
            if row["status"] == "ok":
                log(f"  {kind}: {row['frames_per_s']['median']:.1f} frames/s "
                    f"({row['clips_per_s']['median']:.2f} clips/s)")
            else:
                log(f"  {kind}: {row['status']}: {row.get('reason')}")
            rep.flush()


def run_step_section(args, rep: Report, device, peak, peak_src) -> None:
    import torch

    frames = args.step_frames or args.max_frames
    overrides = [f"model.name={args.model}", f"model.sim_header={args.sim_header}",
                 f"train.batch_size={args.step_batch}", f"data.max_frames={frames}"]
    if args.tiny:
        tiny = json.loads(json.dumps(TINY_OPEN_CLIP))
        tiny["vision_cfg"]["image_size"] = args.resolution
        overrides += ["model.name=tiny", "model.open_clip_config=" + json.dumps(tiny)]
    ds = datasets(args)[0] if args.e2e else None
    sec = rep.doc.setdefault("step", {"config": {
        "model": "tiny" if args.tiny else args.model, "sim_header": args.sim_header,
        "tiny": bool(args.tiny),
        "batch": args.step_batch, "frames": frames, "resolution": args.resolution,
        "max_words": 32, "warmup": args.step_warmup, "iters": args.step_iters,
        "device": device.type, "torch_threads": torch.get_num_threads(),
        "fp32_matmul_precision": torch.get_float32_matmul_precision()},
        "rows": [], "flops_per_step": None, "flops_method": "not counted",
        "peak_tflops": peak, "peak_source": peak_src})
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
                    row = measure_step(v, ck, args, cfg, device, flops, peak, keep=keep)
                    sec["rows"].append(row)
                    _log_step(row)
                    rep.flush()
                if v in e2e_variants and not ck:
                    for kind in e2e_loaders:
                        log(f"step {v} end to end with {kind} ...")
                        row = measure_step(v, False, args, cfg, device, flops, peak, "e2e", kind,
                                           split, keep=keep)
                        sec["rows"].append(row)
                        _log_step(row)
                        rep.flush()
            finally:
                keep.clear()
                free_memory(device)


def _log_step(row):
    if row["status"] == "ok":
        extra = f", data wait {100 * row['data_wait_share']:.0f}%" if "data_wait_share" in row else ""
        log(f"  {row['ms_per_step']['median']:.1f} ms/step, {row['frames_per_s']:.1f} frames/s{extra}")
    else:
        log(f"  {row['status']}: {row.get('reason')}")


# ============================================================================ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: tiny model, 6 small clips, 64 px, 2 steps")
    p.add_argument("--sections", default="loader,step", help="loader, step or both")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=str(HERE / "results"), help="output folder")
    p.add_argument("--name", default=None, help="file stem (default: machine and date)")
    # data
    p.add_argument("--data-path", default=None, help="a user's MSVD-format data_path (raw or prepared)")
    p.add_argument("--features-path", default=None, help="its video folder (default: data-path)")
    p.add_argument("--label", default=None, help="the name of that set in the tables (default: user:<data-path name>)")
    p.add_argument("--split", default="train")
    p.add_argument("--max-videos", type=int, default=0, help="use only the first N videos (0: all)")
    p.add_argument("--cache-dir", default=os.environ.get("CLIP4CLIP_BENCH_CACHE",
                                                         str(Path(tempfile.gettempdir()) / "clip4clip-bench")))
    p.add_argument("--codecs", default="vp9,mjpeg", help="synthetic sets to generate: vp9,mjpeg,h264")
    p.add_argument("--videos", type=int, default=32, help="synthetic clips per set")
    p.add_argument("--clip-size", default="320x240", help="WxH of the drawn clips, or 'native' "
                   "(the package generator's own small sizes)")
    p.add_argument("--clip-fps", type=float, default=30000 / 1001)
    p.add_argument("--clip-seconds", type=float, nargs=2, default=(4.0, 12.0))
    p.add_argument("--gop", type=int, default=12, help="keyframe interval of the drawn clips")
    p.add_argument("--seed", type=int, default=0)
    # loader
    p.add_argument("--loaders", default="dali_gpu,dali_hybrid,dali_cpu,reference,cache,original")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--loader-batch", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=12)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-repeat-seconds", type=float, default=2.0)
    p.add_argument("--loader-budget", type=float, default=120.0, help="seconds per loader row")
    # step
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--sim-header", default="meanP")
    p.add_argument("--tiny", action="store_true", help="tiny open_clip config instead of --model")
    p.add_argument("--step-batch", type=int, default=2)
    p.add_argument("--step-frames", type=int, default=None, help="frames per clip in the step "
                   "section (default: --max-frames)")
    p.add_argument("--variants", default="eager_fp32,eager_amp_bf16,compiled_amp_bf16")
    p.add_argument("--ckpt", default="both", choices=["both", "on", "off"])
    p.add_argument("--step-warmup", type=int, default=2)
    p.add_argument("--step-iters", type=int, default=5)
    p.add_argument("--step-budget", type=float, default=120.0, help="seconds per step row")
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end rows")
    p.add_argument("--e2e-loaders", default="dali_gpu,dali_cpu,reference")
    p.add_argument("--e2e-variants", default=None,
                   help="variants end to end (default: compiled_amp_bf16 on CUDA, eager_fp32 on CPU)")
    p.add_argument("--skip-compile", nargs="?", const="skipped (--skip-compile)", default=None,
                   dest="no_compile", metavar="REASON", help="report compiled variants as n/a")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: by GPU name)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args(argv)
    if args.quick:
        q = dict(videos=6, clip_size="96x72", clip_fps=15.0, clip_seconds=(2.0, 4.0), codecs="vp9",
                 max_frames=4, resolution=64, loader_batch=2, repeats=2, min_repeat_seconds=0.0,
                 tiny=True, step_batch=2, step_warmup=1, step_iters=2,
                 variants="eager_fp32,eager_amp_bf16,compiled_amp_bf16",
                 loader_budget=20.0, step_budget=15.0, e2e_loaders="dali_cpu,reference")
        for k, v in q.items():
            if getattr(args, k) == p.get_default(k):  # flags given explicitly win
                setattr(args, k, v)
        if not args.no_compile:
            args.no_compile = "skipped in --quick (compiling takes minutes on a CPU)"
        if args.name is None:
            args.name = "quick"
    return args


def merge(paths: list[str], out: Path, name: str) -> int:
    """Merge the JSON reports of separate runs (gpu_suite.sh) into one report."""
    docs, errors = [], []
    for p in paths:
        try:
            docs.append(json.loads(Path(p).read_text()))
        except Exception as e:
            errors.append(f"{p}: not merged ({short_error(e)}); that run did not finish or start")
    if not docs:
        print("error: nothing to merge", file=sys.stderr)
        return 2
    meta = dict(docs[0]["meta"], name=name, merged_from=[str(p) for p in paths],
                command=" ; ".join(d["meta"]["command"] for d in docs))
    rep = Report(out, name, meta)
    rep.doc["errors"] = errors + [e for d in docs for e in d.get("errors", [])]
    for d in docs:
        if not d["meta"].get("complete"):
            rep.doc["errors"].append(f"{d['meta']['name']}: run cut short (partial results)")
        if "loader" in d:
            sec = rep.doc.setdefault("loader", {"config": d["loader"]["config"], "datasets": {},
                                                "dataset_info": {}, "rows": []})
            sec["datasets"].update(d["loader"].get("datasets", {}))
            sec["dataset_info"].update(d["loader"].get("dataset_info", {}))
            sec["rows"] += d["loader"]["rows"]
        if "step" in d:
            if "step" not in rep.doc:
                rep.doc["step"] = dict(d["step"], rows=[])
            sec = rep.doc["step"]
            for k in ("flops_per_step", "flops_per_step_analytic"):
                sec[k] = sec.get(k) or d["step"].get(k)
            sec["config"].update({k: v for k, v in d["step"]["config"].items()
                                  if k not in sec["config"]})
            sec["rows"] += d["step"]["rows"]
    rep.doc["meta"]["seconds"] = round(sum(d["meta"].get("seconds", 0) for d in docs), 1)
    png_err = write_png(rep.doc, rep.path("png"))
    if png_err:
        rep.doc["meta"]["png"] = png_err
    rep.flush(final=True)
    print(rep.path("md").read_text())
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--merge":
        ap = argparse.ArgumentParser(prog="throughput.py --merge")
        ap.add_argument("--merge", nargs="+", required=True)
        ap.add_argument("--out", required=True)
        ap.add_argument("--name", required=True)
        a = ap.parse_args(argv)
        return merge(a.merge, Path(a.out), a.name)
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and has_cuda))
                          else "cpu")
    if device.type == "cuda" and not has_cuda:
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    gpu = gpu_info() if device.type == "cuda" else None
    peak, peak_src = peak_tflops(gpu, args.peak_tflops)
    if args.e2e_variants is None:
        args.e2e_variants = "compiled_amp_bf16" if device.type == "cuda" else "eager_fp32"
    name = args.name or machine_name(gpu)
    meta = {"name": name, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv),
            "device": device.type, "cpu": {"model": cpu_model(), "cores": usable_cores(),
                                           "torch_threads": torch.get_num_threads()},
            "gpu": gpu, "versions": versions(), "quick": args.quick,
            "load_average_at_start": list(os.getloadavg()),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}}
    rep = Report(Path(args.out), name, meta)
    log(f"writing {rep.path('json')} (device {device}, {usable_cores()} cores)")
    sections = [s.strip() for s in args.sections.split(",")]
    t0 = time.perf_counter()
    if "loader" in sections:
        try:
            run_loader_section(args, rep, has_cuda)
        except Exception as e:
            rep.error("loader section", e)
    if "step" in sections:
        try:
            run_step_section(args, rep, device, peak, peak_src)
        except Exception as e:
            rep.error("step section", e)
    rep.doc["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    rep.doc["meta"]["load_average_at_end"] = list(os.getloadavg())
    png_err = write_png(rep.doc, rep.path("png"))
    if png_err:
        rep.doc["meta"]["png"] = png_err
    rep.flush(final=True)
    print()
    print(rep.path("md").read_text())
    log(f"done in {rep.doc['meta']['seconds']} s: {rep.path('json')}, {rep.path('md')}"
        + ("" if png_err else f", {rep.path('png')}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
