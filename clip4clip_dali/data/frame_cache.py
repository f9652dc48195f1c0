"""``data.frame_cache``: decode each video of a split once, serve every epoch from memory.

CLIP4Clip samples the same frames of a video in every epoch (the sampling is deterministic; only
the frame order may be shuffled, after decoding), and a training epoch visits each video once
per caption: MSVD's train split is 48,774 samples of 1,200 videos. With the cache the chosen
backend's evaluation loader decodes each unique video once, in natural frame order; the frames
are kept as uint8 where the batches go (MSVD train at 224 px and 12 frames: 2.2 GB, in host
memory on a CPU run, in GPU memory on a GPU run, per process) and every batch is built from that
memory, normalised on the batch's device. The frames equal what
the backend delivers (its normalisation is inverted exactly: both backends normalise uint8
pixels), the frame order, masks, shards and epoch plan are the DALI loader's.

A video that fails to decode while the cache is filled is left out, as the loaders leave it out.
Every process fills its own cache (any rank may need any video: shards change every epoch).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..errors import UserError
from .dali_loader import finish_batch
from .reference import CLIP_MEAN, CLIP_STD
from .sampling import clip_frame_indices
from .sharding import EpochPlan, EpochShard

if TYPE_CHECKING:
    from ..config import DataConfig
    from .msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")


class CachedLoader(EpochShard):
    """Batches like ``DaliLoader``'s, built from frames decoded once by ``fill_loader(cfg)``:
    an evaluation loader over every video of the split (rank 0 of 1) built with the data config
    ``cfg`` it is given (``data_cfg`` with frame order 0: frames are cached in decode order)."""

    def __init__(self, split: "MSVDSplit", data_cfg: "DataConfig", mode: str, batch_size: int,
                 fill_loader: Callable[["DataConfig"], object], rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu", seed: int = 0):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, got {mode!r}")
        self.split, self.mode, self.batch_size = split, mode, batch_size
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.device = torch.device(device)
        self.max_frames, self.resolution = data_cfg.max_frames, data_cfg.image_resolution
        self.frame_order = data_cfg.train_frame_order if mode == "train" else data_cfg.eval_frame_order
        self._indices = [clip_frame_indices(info, data_cfg) for info in split.video_info]
        self._fill_loader = fill_loader
        self._fill_cfg = dataclasses.replace(data_cfg, eval_frame_order=0)
        self.backend = "cache"
        self.frames: torch.Tensor | None = None  # (videos, max_frames, 3, R, R) uint8
        self.cached = np.zeros(split.num_videos, dtype=bool)
        if mode == "train":
            from .text import Tokenizer

            self.text, self.text_mask = Tokenizer(data_cfg.max_words)(split.captions)
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255.0  # pixel units
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255.0
        # serving normalises as x * (1 / std) + (-mean / std), on the batches' device
        self._inv_std = (1.0 / self._std).to(self.device)
        self._shift = (-self._mean / self._std).to(self.device)

    def fill(self) -> None:
        """Decode every video once (the first pass calls this)."""
        if self.frames is not None:
            return
        t0 = time.perf_counter()
        loader = self._fill_loader(self._fill_cfg)
        r = self.resolution
        self.frames = torch.zeros((self.split.num_videos, self.max_frames, 3, r, r),
                                  dtype=torch.uint8)
        for batch in loader:
            video = batch["video"].float().cpu()
            pixels = torch.round(video * self._std + self._mean).clamp_(0, 255).to(torch.uint8)
            idx = batch["video_index"].cpu()
            self.frames[idx] = pixels
            self.cached[idx.numpy()] = True
        missing = int((~self.cached).sum())
        log.info("frame cache for %s: %d videos decoded once by %s in %.1f s (%.2f GB)%s",
                 self.split.name, int(self.cached.sum()), getattr(loader, "backend", "?"),
                 time.perf_counter() - t0, self.frames.numel() / 1e9,
                 f"; {missing} left out (failed to decode)" if missing else "")
        if not self.cached.any():
            raise UserError(f"split {self.split.name}: none of its {self.split.num_videos} videos "
                            f"could be decoded (the warnings above name each file); check "
                            f"data.features_path, or prepare the clips with "
                            f"pipelines/prepare_msvd.py.")
        if self.device.type == "cuda":  # on the GPU: a batch is then one gather, no copy
            self.frames = self.frames.to(self.device)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0):
        """This epoch's batches from batch ``start_batch`` on (exact mid-epoch resume)."""
        self.fill()
        order = [int(i) for i in self.indices()]
        num_batches = len(order) // self.batch_size if self.mode == "train" else None
        plan = EpochPlan(order, self.batch_size, num_batches,
                         lambda i: bool(self.cached[self._video_of(i)]))
        for _ in range(max(0, int(start_batch))):
            if plan.next_batch() is None:
                return
        while (batch := plan.next_batch()) is not None:
            videos = torch.as_tensor([self._video_of(i) for i in batch])
            pixels = self.frames[videos.to(self.frames.device)].to(self.device)
            video = pixels.float().mul_(self._inv_std).add_(self._shift)  # (x - mean) / std
            for b, v in enumerate(videos.tolist()):
                video[b, len(self._indices[v]):] = 0  # padding is zero after normalisation
            yield finish_batch(self, batch, video)
