"""Batches from tar shards: the DALI loader's graph fed with clips read by offset from the tars.

Why not ``readers.webdataset``'s own order: it splits the global sample list by
``shard_id``/``num_shards`` and shuffles through a buffer, so it cannot take the project's
epoch plan (``sharding.EpochShard``: one seeded permutation shared by all ranks, full global
batches, broken samples refilled), and DALI cannot checkpoint it with ``decoders.video`` (its
checkpointing refuses that operator). Here each rank computes the global epoch permutation
from the seed, takes its part, and reads each of its samples by offset (the shard's index
file) into the same external source the per-file loader uses: one ``pread`` (on S3 one ranged
GET) per clip on a file kept open, instead of an open, a stat and a read per file. Everything
after the bytes is ``DaliLoader``'s: decode whole (pre-sampled clips), normalise, pad, batch
assembly, broken-member handling, exact mid-epoch resume (``iter_from``). What a rank holds
is the plan (a few integers per sample) and DALI's prefetch queue, never the data set.

``data.shards_resampled = N`` (training): every epoch draws N samples with replacement from
(seed, epoch) alone, cut to whole global batches and dealt to the ranks as the permutation
is: deterministic per seed and rank, the same in a resumed run (open_clip's
``--dataset-resampled``).
"""
from __future__ import annotations

import logging

import numpy as np

from ...errors import UserError
from .dali_loader import DaliLoader
from .dali_support import dali_import_error

log = logging.getLogger("clip4clip_dali")

REMOTE_READS = 16  # ranged GETs in flight per loader on object storage
_RESAMPLE = 0x52534D50  # entropy key of the resampled draw (never equal to other generators')


def shard_backend(choice: str) -> tuple[str, str]:
    """(backend, reason) for a shard set: DALI only."""
    if choice not in ("auto", "dali"):
        raise UserError(f"data.loader={choice}, but tar shards (data.dataset=shards) are read by "
                        f"DALI only; set data.loader=auto or dali.")
    err = dali_import_error()
    if err is not None:
        raise UserError(f"data.dataset=shards needs NVIDIA DALI, which cannot be imported "
                        f"({err.splitlines()[0][:200]}); pip install nvidia-dali-cuda130.")
    return "dali", "tar shards (data.dataset=shards) are read by DALI"


class ShardLoader(DaliLoader):
    """``DaliLoader`` over a ``shards.ShardSplit``."""

    backend = "dali-shards"

    def __init__(self, split, data_cfg, mode, batch_size, **kw):
        if getattr(split, "locations", None) is None:
            raise ValueError("ShardLoader reads a shards.ShardSplit (data.dataset=shards)")
        super().__init__(split, data_cfg, mode, batch_size, **kw)
        self.resampled = int(getattr(data_cfg, "shards_resampled", 0) or 0) if mode == "train" else 0
        self.unreadable: dict[int, str] = {}
        self._pool, self._fetched = None, {}

    def indices(self) -> np.ndarray:
        if not self.resampled:
            return super().indices()
        rng = np.random.default_rng([self.seed, self.epoch, 0, _RESAMPLE])
        order = rng.integers(0, self.num_samples(), size=self.resampled, dtype=np.int64)
        per_step = self.batch_size * self.world_size
        return order[: (len(order) // per_step) * per_step][self.rank::self.world_size]

    def _feed(self, batch: list[int]):
        if self.split.store.remote:  # object storage: a batch's ranged GETs at once, not in turn
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is None:
                self.split.store.client()  # made once, here: boto3 clients are thread-safe
                self._pool = ThreadPoolExecutor(REMOTE_READS, thread_name_prefix="shard-read")
            videos = list(dict.fromkeys(self._video_of(i) for i in batch))
            self._fetched = dict(zip(videos, self._pool.map(self._fetch, videos)))
        try:
            return super()._feed(batch)
        finally:
            self._fetched = {}

    def _read_clip(self, v: int) -> np.ndarray:
        got = self._fetched.get(v)
        return got if got is not None else self._fetch(v)

    def _fetch(self, v: int) -> np.ndarray:
        shard, offset, size = (int(x) for x in self.split.locations[v])
        try:
            data = self.split.store.read_range(self.split.tars[shard], offset, size)
        except (OSError, UserError) as e:
            # An empty sample makes the decoder fail; the loader then finds and skips it.
            if v not in self.unreadable:
                log.warning("cannot read %s: %s", self.split.video_paths[v], e)
            self.unreadable[v] = str(e)
            return np.zeros(0, np.uint8)
        return np.frombuffer(data, np.uint8)
