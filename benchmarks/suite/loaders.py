"""The loaders the loader and step sections measure, and why a backend cannot read a set."""
from __future__ import annotations

import dataclasses

from .common import short_error

LOADER_NAMES = {"dali_gpu": "DALI GPU (NVDEC)",
                "dali_hybrid": "DALI CPU decode + GPU resize (data.dali_decoder=cpu)",
                "dali_cpu": "DALI CPU",
                "cache": "data.frame_cache (passes after the first)",
                "reference": "reference (PyAV + PIL, DataLoader)",
                "original": "original CLIP4Clip way (OpenCV seeks + PIL, float64)"}
GPU_KINDS = ("dali_gpu", "dali_hybrid")
DALI_KINDS = GPU_KINDS + ("dali_cpu",)


def make_loader(kind: str, cfg, split, mode: str, batch_size: int, device):
    """('dali_gpu'|'dali_hybrid'|'dali_cpu'|'cache'|'reference') -> loader with
    __iter__/set_epoch/len whose batches end up on ``device`` (DALI-GPU and hybrid: always the
    current GPU)."""
    import torch

    device = torch.device(device)
    if kind == "reference":
        from clip4clip_dali.data.loaders.reference import ReferenceLoader

        return ReferenceLoader(split, cfg.data, mode, batch_size, device=device,
                               num_workers=cfg.data.num_workers)
    from clip4clip_dali.data.loaders.dali_loader import DaliLoader

    if kind == "cache":
        from clip4clip_dali.data.loaders.frame_cache import CachedLoader

        inner = cache_filler(split, torch.cuda.is_available())
        out_device = torch.device("cuda", torch.cuda.current_device()) if inner == "dali_gpu" \
            else device
        # One process: the cache's fill loader is asked for shard 0 of 1.
        loader = CachedLoader(split, cfg.data, mode, batch_size, lambda data, _rank, _ranks:
                              make_loader(inner, dataclasses.replace(cfg, data=data), split,
                                          "eval", batch_size, out_device),
                              device=out_device)
        loader.filler = inner
        return loader
    if cfg.data.dataset == "shards":  # tar shards: the same DALI loader, fed by offset
        from clip4clip_dali.data.loaders.dali_shards import ShardLoader as DaliLoader  # noqa: F811
    if kind in GPU_KINDS:
        data = dataclasses.replace(cfg.data, dali_decoder="cpu" if kind == "dali_hybrid" else "nvdec")
        return DaliLoader(split, data, mode, batch_size,
                          device=torch.device("cuda", torch.cuda.current_device()))
    if kind != "dali_cpu":
        raise ValueError(f"unknown loader {kind!r}")
    loader = DaliLoader(split, cfg.data, mode, batch_size, device=torch.device("cpu"))
    return MovingLoader(loader, device) if device.type == "cuda" else loader


class MovingLoader:
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


def start_worker_server() -> None:
    """Start this process's forkserver now, with the loaders' modules (torch, av, ...) preloaded.

    Every pool and DataLoader of a run forks its workers from one server per process, which
    keeps the preload of whoever starts it first. When the set generator's pool (``av`` only)
    came first, each reference/original loader worker imported torch again, every pass, and
    every prepare pool worker did too: the --quick run took 105 s instead of 11 s at load 6."""
    import multiprocessing.forkserver as forkserver

    from clip4clip_dali.data.loaders.reference import worker_context

    if worker_context().get_start_method() == "forkserver":
        forkserver.ensure_running()


def on_gpu(kind: str, split, has_cuda: bool) -> bool:
    """Whether ``kind``'s batches are produced on the GPU (so timing must synchronise)."""
    return kind in GPU_KINDS or (kind == "cache" and cache_filler(split, has_cuda) == "dali_gpu")


def cache_filler(split, has_cuda: bool) -> str:
    """The loader that fills the frame cache, as build_loader would choose it (auto)."""
    for kind in (("dali_gpu",) if has_cuda else ()) + ("dali_cpu",):
        if unsupported_reason(kind, split, has_cuda) is None:
            return kind
    return "reference"


def unsupported_reason(kind: str, split, has_cuda: bool) -> str | None:
    """Why ``kind`` cannot read this split's videos, or None."""
    if hasattr(split, "locations") and kind not in DALI_KINDS + ("cache",):
        return "tar shards are read by DALI only"
    if kind in DALI_KINDS:
        try:
            import torch

            from clip4clip_dali.data.loaders.dali_loader import dali_import_error
            from clip4clip_dali.data.loaders.loader import undecodable
        except Exception as e:
            return f"DALI loader not importable ({short_error(e)})"
        err = dali_import_error()
        if err:
            return err
        if kind in GPU_KINDS and not has_cuda:
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
