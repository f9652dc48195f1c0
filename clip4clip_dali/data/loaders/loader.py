"""``build_loader``: the one entry point the trainer and evaluator use to get batches.

``cfg.data.loader`` picks the backend: ``dali`` (NVIDIA DALI, NVDEC on a GPU, its CPU decoder
otherwise), ``torchcodec`` (FFmpeg through torchcodec, seeking to the sampled frames; NVDEC with
a GPU), ``reference`` (PyAV + PIL in a torch DataLoader) or ``auto``: DALI where it is
installed and can decode every video of the split on that device (CPU: VP8, VP9, MJPEG; GPU:
H.264, HEVC, VP8, VP9, AV1, MPEG-4 Part 2, each no smaller than NVDEC's minimum frame size for
the codec, e.g. 128x128 for VP9 and AV1, see ``dali_loader.GPU_MIN_SIZE``; MJPEG is not
decoded by DALI's GPU decoder; with ``data.dali_decoder: cpu`` a GPU run decodes on the CPU and
the CPU's codecs apply), else, for batches on the CPU, torchcodec where it is installed (on 2
CPU cores it reads raw MSVD H.264 faster than PyAV:
benchmarks/results/cpu-2core-2026-11-29-decoders.md), else the reference loader. The choice and its reason are logged once (logger ``clip4clip_dali``).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import torch

from ...errors import UserError
from .dali_loader import DaliLoader
from .dali_shards import ShardLoader, shard_backend
from .dali_support import (dali_import_error, decoder_device, normalize_codec,
                          unsupported_reason)
from ..presampled import check_sampling
from .reference import ReferenceLoader
from .torchcodec_loader import TorchcodecLoader, torchcodec_import_error

if TYPE_CHECKING:
    from ...config import Config
    from ..msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")


def per_rank_batch(global_batch: int, world_size: int, what: str) -> int:
    if global_batch < world_size:
        raise UserError(f"{what} = {global_batch} is smaller than the number of processes "
                        f"({world_size}); every process needs at least one sample a batch.")
    if global_batch % world_size:
        log.warning("%s = %d is not a multiple of %d processes; each uses %d", what,
                    global_batch, world_size, global_batch // world_size)
    return global_batch // world_size


def undecodable(split: "MSVDSplit", device: torch.device) -> dict[str, list[str]]:
    """Reason (a codec, or "vp9 smaller than 128x128") -> files of the split that DALI cannot
    decode on ``device``."""
    bad: dict[str, list[str]] = {}
    for path, info in zip(split.video_paths, split.video_info):
        why = unsupported_reason(info, device)
        if why is not None:
            bad.setdefault(why, []).append(str(path))
    return bad


def _where(device: torch.device) -> str:
    return "the GPU (NVDEC)" if device.type == "cuda" else "the CPU"


def _without_dali(reason: str, out_device: torch.device) -> tuple[str, str]:
    """auto's choice where DALI cannot take the split: on the CPU torchcodec if it loads (the
    faster CPU decoder, measured), else PyAV; on a GPU the reference loader, as before (the
    torchcodec loader's NVDEC path is not measured yet)."""
    if out_device.type != "cpu":
        return "reference", reason
    err = torchcodec_import_error()
    if err is None:
        return "torchcodec", f"{reason}; torchcodec decodes the split"
    return "reference", f"{reason}; torchcodec is not usable ({err[:120]})"


def choose_backend(choice: str, split: "MSVDSplit", device: torch.device,
                   dali_decoder: str = "nvdec") -> tuple[str, str]:
    """(backend, reason) for batches on ``device``. Raises UserError for an explicit ``dali``
    that cannot work."""
    out_device = torch.device(device)
    device = decoder_device(out_device, dali_decoder)
    if choice == "reference":
        return "reference", "data.loader=reference"
    if choice == "torchcodec":
        tc_err = torchcodec_import_error()
        if tc_err is not None:
            raise UserError(f"data.loader=torchcodec, but torchcodec cannot be loaded ({tc_err}). "
                            f"Install it (pip install torchcodec, and FFmpeg's libraries: "
                            f"apt-get install ffmpeg) or set data.loader=reference.")
        return "torchcodec", "data.loader=torchcodec"
    err = dali_import_error()
    if err is not None:
        if choice == "dali":
            raise UserError(f"data.loader=dali, but NVIDIA DALI cannot be imported ({err}). "
                            f"Install it (pip install nvidia-dali-cuda130) or set "
                            f"data.loader=reference.")
        return _without_dali(f"NVIDIA DALI is not installed ({err.splitlines()[0][:120]})",
                             out_device)
    bad = undecodable(split, device)
    if bad:
        codec, files = max(bad.items(), key=lambda kv: len(kv[1]))
        n = sum(len(f) for f in bad.values())
        what = (f"{n} of {split.num_videos} videos of split {split.name} use codecs or frame "
                f"sizes DALI cannot decode on {_where(device)} ({', '.join(sorted(bad))}; "
                f"e.g. {files[0]})")
        if choice == "dali":
            hint = ("transcode them with `python pipelines/prepare_msvd.py --src <videos> --out "
                    "<new folder>` (VP9, short side 224) and point data.features_path there, "
                    + ("run on the CPU, " if device.type == "cuda" else
                       "set data.dali_decoder=nvdec, " if out_device.type == "cuda" else
                       "run on a GPU, ")
                    + "or set data.loader=reference")
            raise UserError(f"data.loader=dali, but {what}: {hint}.")
        return _without_dali(f"{what}; run pipelines/prepare_msvd.py to transcode them for "
                             f"DALI", out_device)
    codecs = Counter(normalize_codec(i.codec) for i in split.video_info)
    return "dali", (f"DALI decodes every codec of split {split.name} on {_where(device)} "
                    f"({', '.join(sorted(codecs))})" if choice == "auto" else "data.loader=dali")


def build_loader(cfg: "Config", split: "MSVDSplit", mode: str, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu",
                 frame_cache: bool | None = None):
    """Batches of ``split`` for this rank: ``mode`` "train" (caption/video pairs, shuffled,
    full batches of ``train.batch_size // world_size``) or "eval" (each video once across
    ranks, ``train.eval_batch_size // world_size`` a batch). ``frame_cache`` overrides
    ``data.frame_cache`` (a loader read once gains nothing from it)."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be train or eval, got {mode!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if mode == "train":
        batch = per_rank_batch(cfg.train.batch_size, world_size, "train.batch_size")
    else:
        batch = max(1, cfg.train.eval_batch_size // world_size)
    shards = cfg.data.dataset == "shards"  # tar shards: pre-sampled, DALI only
    presampled = shards or check_sampling(cfg.data) is not None  # refuses another sampling
    backend, reason = (shard_backend(cfg.data.loader) if shards else
                       choose_backend(cfg.data.loader, split, device, cfg.data.dali_decoder))
    cache = cfg.data.frame_cache if frame_cache is None else frame_cache
    log.info("data loader for %s (%s): %s%s on %s, %s%s", split.name, mode, backend,
             " + frame cache" if cache else "", device, reason,
             "; pre-sampled clips, decoded whole" if presampled else "")
    common = dict(rank=rank, world_size=world_size, device=device, seed=cfg.train.seed)
    make = ShardLoader if shards else {"dali": DaliLoader,
                                       "torchcodec": TorchcodecLoader}.get(backend, ReferenceLoader)
    if not cache:
        return make(split, cfg.data, mode, batch, **common)
    from .frame_cache import CachedLoader

    # The cache is filled by the backend's evaluation loader over the split's videos (under
    # DDP each rank decodes its share; the cache gathers the rest).
    fill_batch = max(1, cfg.train.eval_batch_size // world_size)
    loader = CachedLoader(split, cfg.data, mode, batch, lambda data, rank, ranks: make(
        split, data, "eval", fill_batch, rank=rank, world_size=ranks, device=device,
        seed=cfg.train.seed), **common)
    loader.backend = f"{backend}+cache"
    return loader
