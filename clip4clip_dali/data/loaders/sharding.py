"""Which samples each process reads in an epoch: DistributedSampler semantics, one function.

Training shuffles with a seed shared by all ranks and reshuffled every epoch, and may drop the
tail so every rank runs the same number of full batches. Evaluation keeps every sample exactly
once: shards may then differ in length by one, and nothing is padded or duplicated.

What a training sample is lives here too: a (video, caption) pair, or, for a split with
``caption_per_epoch`` (MSR-VTT without ``data.msrvtt_unfold_sentences``), a video with one of
its captions drawn per epoch from (seed, epoch) alone: the same on every rank, in a resumed
run and in a rerun.
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


# Entropy key of the caption draw's generator: 4 words, so it never equals the shuffle's
# ([seed, epoch]) or a sample's frame-order generator ([seed, epoch, i]).
_CAPTION_DRAW = 0x43415054


def train_sample_count(split) -> int:
    """Training samples of ``split`` per epoch: its videos or its (video, caption) pairs."""
    return split.num_videos if split.caption_per_epoch else len(split.captions)


def train_sample_video(split, i: int) -> int:
    """The video of training sample ``i``."""
    return int(i) if split.caption_per_epoch else int(split.caption_video[i])


def epoch_captions(split, epoch: int, seed: int) -> np.ndarray:
    """The caption (index into ``split.captions``) of every training sample in ``epoch``."""
    if not split.caption_per_epoch:
        return np.arange(len(split.captions), dtype=np.int64)
    owner = np.asarray(split.caption_video, dtype=np.int64)
    counts = np.bincount(owner, minlength=split.num_videos)
    if (counts == 0).any():
        raise ValueError(f"split {split.name}: video {split.video_ids[int(np.argmin(counts))]} "
                         f"has no caption to draw")
    by_video = np.argsort(owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng([seed, epoch, 0, _CAPTION_DRAW])
    pick = np.minimum((rng.random(split.num_videos) * counts).astype(np.int64), counts - 1)
    return by_video[starts + pick]


class EpochShard:
    """A loader's per-rank sample order and batch count for the current epoch.

    Subclasses set ``split`` (a VideoTextSplit), ``mode`` ("train" or "eval"), ``batch_size``,
    ``seed``, ``rank``, ``world_size`` and ``epoch``. A sample is a caption (training) or a
    video (evaluation). Training shuffles and keeps only full batches; evaluation keeps every
    sample once, in order.
    """

    def num_samples(self) -> int:
        return train_sample_count(self.split) if self.mode == "train" else self.split.num_videos

    def _video_of(self, i: int) -> int:
        """The video of sample ``i``."""
        return train_sample_video(self.split, i) if self.mode == "train" else int(i)

    def _captions_of(self, batch: list[int]) -> np.ndarray:
        """The captions of training samples ``batch`` in the current epoch."""
        cached = getattr(self, "_epoch_captions", None)
        if cached is None or cached[0] != (self.epoch, self.seed):
            cached = ((self.epoch, self.seed), epoch_captions(self.split, self.epoch, self.seed))
            self._epoch_captions = cached
        return cached[1][np.asarray(batch, dtype=np.int64)]

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

    def plan(self, usable, start_batch: int = 0) -> Optional["EpochPlan"]:
        """This epoch's batch plan with its first ``start_batch`` batches already made (exact
        mid-epoch resume: planned with the same refills, never decoded); None when the epoch
        ends before ``start_batch``. ``usable(sample)`` says whether a sample can be served."""
        order = [int(i) for i in self.indices()]
        num_batches = len(order) // self.batch_size if self.mode == "train" else None
        plan = EpochPlan(order, self.batch_size, num_batches, usable)
        for _ in range(max(0, int(start_batch))):
            if plan.next_batch() is None:
                return None
        return plan


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
