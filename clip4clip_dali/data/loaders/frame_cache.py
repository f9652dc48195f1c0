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
Every process holds the whole cache (any rank may need any video: shards change every epoch).
Under ``torch.distributed`` each of the W ranks decodes only its share (videos ``rank::W``)
and the shares are all-gathered as uint8, so filling takes about 1/W of the time. Given a
pre-sampled set (``presampled.py``), the fill decodes each file whole, without resizing.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ...errors import UserError
from .dali_loader import finish_batch
from ..presampled import split_frames
from .reference import CLIP_MEAN, CLIP_STD
from .sharding import EpochShard

if TYPE_CHECKING:
    from ...config import DataConfig
    from ..msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")


class CachedLoader(EpochShard):
    """Batches like ``DaliLoader``'s, built from frames decoded once by
    ``fill_loader(cfg, rank, world_size)``: an evaluation loader over shard ``rank`` of
    ``world_size`` of the split's videos, built with the data config ``cfg`` it is given
    (``data_cfg`` with frame order 0: frames are cached in decode order)."""

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
        self._indices, self.presampled = split_frames(split, data_cfg)
        self._fill_loader = fill_loader
        self._fill_cfg = dataclasses.replace(data_cfg, eval_frame_order=0)
        self.backend = "cache"
        self.frames: torch.Tensor | None = None  # (videos, max_frames, 3, R, R) uint8
        self.cached = np.zeros(split.num_videos, dtype=bool)
        if mode == "train":
            from ..text import Tokenizer

            self.text, self.text_mask = Tokenizer(data_cfg.max_words)(split.captions)
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255.0  # pixel units
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255.0
        # serving normalises as x * (1 / std) + (-mean / std), on the batches' device
        self._inv_std = (1.0 / self._std).to(self.device)
        self._shift = (-self._mean / self._std).to(self.device)

    def _fill_share(self) -> tuple[int, int]:
        """(rank, ranks) that split the fill: the process group's when it is this loader's."""
        import torch.distributed as dist

        if (self.world_size > 1 and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() == self.world_size):
            return self.rank, self.world_size
        return 0, 1

    def fill(self) -> None:
        """Decode every video once, or this rank's share of them and gather the rest (the
        first pass calls this)."""
        if self.frames is not None:
            return
        t0 = time.perf_counter()
        rank, ranks = self._fill_share()
        loader = self._fill_loader(self._fill_cfg, rank, ranks)
        n, r = self.split.num_videos, self.resolution
        share = -(-n // ranks)  # videos rank, rank + ranks, ... at positions 0, 1, ...
        frames = torch.zeros((share, self.max_frames, 3, r, r), dtype=torch.uint8)
        cached = torch.zeros(share, dtype=torch.uint8)
        for batch in loader:
            video = batch["video"].float().cpu()
            pixels = torch.round(video * self._std + self._mean).clamp_(0, 255).to(torch.uint8)
            pos = batch["video_index"].cpu() // ranks
            frames[pos] = pixels
            cached[pos] = 1
        if ranks > 1:
            frames, cached = self._gather(frames, cached, ranks)
        self.frames, self.cached = frames[:n], cached[:n].numpy().astype(bool)
        missing = int((~self.cached).sum())
        log.info("frame cache for %s: %d videos decoded once by %s%s in %.1f s (%.2f GB)%s",
                 self.split.name, int(self.cached.sum()), getattr(loader, "backend", "?"),
                 f" ({ranks} ranks, a share each, all-gathered)" if ranks > 1 else "",
                 time.perf_counter() - t0, self.frames.numel() / 1e9,
                 f"; {missing} left out (failed to decode)" if missing else "")
        if not self.cached.any():
            raise UserError(f"split {self.split.name}: none of its {self.split.num_videos} videos "
                            f"could be decoded (the warnings above name each file); check "
                            f"data.features_path, or prepare the clips with "
                            f"pipelines/prepare_msvd.py.")
        if self.device.type == "cuda":  # on the GPU: a batch is then one gather, no copy
            self.frames = self.frames.to(self.device)

    def _gather(self, frames: torch.Tensor, cached: torch.Tensor, ranks: int):
        """Every rank's share, interleaved back into video order (video v = share v % ranks,
        position v // ranks). uint8 over the wire; on the GPU with NCCL."""
        import torch.distributed as dist

        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        parts = [torch.empty_like(frames, device=on) for _ in range(ranks)]
        dist.all_gather(parts, frames.to(on))
        flags = [torch.empty_like(cached, device=on) for _ in range(ranks)]
        dist.all_gather(flags, cached.to(on))
        # (share, ranks, ...) -> (share * ranks, ...): row p * ranks + k is rank k's video p
        frames = torch.stack(parts, dim=1).flatten(0, 1)
        del parts
        return frames.cpu() if self.device.type != "cuda" else frames, \
            torch.stack(flags, dim=1).flatten(0, 1).cpu()

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0):
        """This epoch's batches from batch ``start_batch`` on (exact mid-epoch resume)."""
        self.fill()
        plan = self.plan(lambda i: bool(self.cached[self._video_of(i)]), start_batch)
        if plan is None:
            return
        while (batch := plan.next_batch()) is not None:
            videos = torch.as_tensor([self._video_of(i) for i in batch])
            pixels = self.frames[videos.to(self.frames.device)].to(self.device)
            video = pixels.float().mul_(self._inv_std).add_(self._shift)  # (x - mean) / std
            for b, v in enumerate(videos.tolist()):
                video[b, len(self._indices[v]):] = 0  # padding is zero after normalisation
            yield finish_batch(self, batch, video)
