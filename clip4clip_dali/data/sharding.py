"""Which samples each process reads in an epoch: DistributedSampler semantics, one function.

Training shuffles with a seed shared by all ranks and reshuffled every epoch, and may drop the
tail so every rank runs the same number of full batches. Evaluation keeps every sample exactly
once: shards may then differ in length by one, and nothing is padded or duplicated.
"""
from __future__ import annotations

import collections
from typing import Optional

import numpy as np


def shard_order(n: int, epoch: int, seed: int, shuffle: bool, num_shards: int = 1,
                shard_id: int = 0, drop_last: bool = False, batch_size: int = 1) -> np.ndarray:
    """Indices into ``range(n)`` that shard ``shard_id`` of ``num_shards`` reads this epoch.

    With ``drop_last`` the global order is cut to a whole number of global batches
    (``batch_size`` per shard), so every shard yields the same number of full batches.
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is outside 0..{num_shards - 1}")
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    if drop_last:
        per_step = batch_size * num_shards
        order = order[: (n // per_step) * per_step]
    return order[shard_id::num_shards].astype(np.int64)


class EpochShard:
    """A loader's per-rank sample order and batch count for the current epoch.

    Subclasses set ``split`` (an MSVDSplit), ``mode`` ("train" or "eval"), ``batch_size``,
    ``seed``, ``rank``, ``world_size`` and ``epoch``. A sample is a caption (training) or a
    video (evaluation). Training shuffles and keeps only full batches; evaluation keeps every
    sample once, in order.
    """

    def num_samples(self) -> int:
        return len(self.split.captions) if self.mode == "train" else self.split.num_videos

    def _video_of(self, i: int) -> int:
        """The video of sample ``i``."""
        return int(self.split.caption_video[i]) if self.mode == "train" else int(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's sample indices this epoch."""
        train = self.mode == "train"
        return shard_order(self.num_samples(), self.epoch, self.seed, shuffle=train,
                           num_shards=self.world_size, shard_id=self.rank, drop_last=train,
                           batch_size=self.batch_size)

    def __len__(self) -> int:
        n = len(self.indices())
        return n // self.batch_size if self.mode == "train" else -(-n // self.batch_size)


class EpochPlan:
    """The batches of one epoch on one rank, built lazily so failed samples can be put back.

    Training (``num_batches`` set) always makes ``num_batches`` full batches: when broken
    videos leave too few samples, the rank's order is reused from its start. Evaluation makes
    chunks of the order until it is used up (the last one partial).
    """

    def __init__(self, order: list[int], batch_size: int, num_batches: Optional[int], usable):
        self.queue = collections.deque(order)
        self.order, self.batch_size, self.num_batches, self.usable = order, batch_size, num_batches, usable
        self.made = 0
        self.wrap = 0

    def next_batch(self) -> Optional[list[int]]:
        if self.num_batches is not None and self.made >= self.num_batches:
            return None
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if self.queue:
                i = self.queue.popleft()
            elif self.num_batches is None:
                break
            else:
                if not self.order or not any(self.usable(j) for j in self.order):
                    return None
                i = self.order[self.wrap % len(self.order)]
                self.wrap += 1
            if self.usable(i):
                batch.append(i)
        if not batch:
            return None
        self.made += 1
        return batch

    def put_back(self, batches: list[list[int]]) -> None:
        """Batches made but never delivered: their samples come first again."""
        self.made -= len(batches)
        for i in reversed([i for b in batches for i in b]):
            self.queue.appendleft(i)
