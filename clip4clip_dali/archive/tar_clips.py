"""Indexing the clips of a tar shard set (``data.dataset: shards``): each clip is a member of a
shard, read by offset, never a file of its own.

A candidate's ``member`` records where its bytes are and what the shard was when listed::

    {"tar": "/data/set/test-000000.tar" or "s3://bucket/set/test-000000.tar",
     "offset": 1536, "size": 20480, "tar_size": 81920, "tar_mtime": "<st_mtime_ns or ETag>",
     "frames": 12, "codec": "vp9"}

The clips are encoded by the shard loader the trainer evaluates with (the same bytes, decoded
whole, normalised, padded: the same frames), thumbnails are drawn from the bytes, and the store
keeps the member (``store.members``) so that ``serve`` streams it out of the tar
(:mod:`.media`) while the shard is the one indexed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..config import Config, DataConfig
from ..errors import UserError
from .collect import Candidate

SAMPLING_KEYS = ("feature_framerate", "max_frames", "slice_framepos", "image_resolution")
NO_WINDOWS = ("index --window: the clips of a tar shard set are pre-sampled (a few frames of "
              "each video), so they cannot be cut into time windows; index the source videos "
              "with --videos and --window.")


def with_model_sampling(data: DataConfig, model_cfg: Config) -> DataConfig:
    """A shard set's data config sampling as the model does: the clips were sampled when the
    shards were written, so a set sampled otherwise is refused (naming both values) when it
    is read, instead of being encoded into vectors that do not compare."""
    return dataclasses.replace(data, **{k: getattr(model_cfg.data, k) for k in SAMPLING_KEYS})


def stamp(tar_size: int, tar_mtime: str, offset: int) -> int:
    """The candidate's ``mtime_ns``: changes when the shard is rewritten or the member moves."""
    digest = hashlib.sha1(f"{tar_size}\0{tar_mtime}\0{offset}".encode()).hexdigest()
    return int(digest[:15], 16)


def shard_candidates(data: DataConfig, split: str) -> tuple[Path, list[Candidate]]:
    """(the manifest's folder, a candidate per usable sample of ``split``); paths are
    ``<shard>:<member>`` under that folder."""
    from ..data.shards import load_split

    s = load_split(data, split)  # sampling checked, broken shards and members skipped by name
    store, shards = s.store, {}
    remote = store.remote

    def where(tar: str) -> str:  # a local shard by its absolute path: serve may run elsewhere
        return store.where(tar) if remote else str(Path(store.where(tar)).resolve())

    out = []
    for v, vid in enumerate(s.video_ids):
        t, offset, size = (int(x) for x in s.locations[v])
        tar = s.tars[t]
        if tar not in shards:
            shards[tar] = (store.size(tar), str(store.mtime(tar)))
        tar_size, tar_mtime = shards[tar]
        member = s.video_paths[v].rsplit(":", 1)[1]
        info = s.video_info[v]
        out.append(Candidate(vid, f"{tar}:{member}", size, stamp(tar_size, tar_mtime, offset),
                             {"tar": where(tar), "offset": offset, "size": size,
                              "tar_size": tar_size, "tar_mtime": tar_mtime,
                              "frames": int(info.frames), "codec": info.codec}))
    return Path(store.root) if remote else Path(store.root).resolve(), out


def _store_and_name(tar: str):
    from ..data.shards_store import Store

    return Store.of(tar), tar.rsplit("/", 1)[-1]


class MemberClips:
    """The clips of a share of candidates that are tar members, as the indexer reads them."""

    def __init__(self, model, share: Sequence[Candidate]):
        from ..data.manifest import VideoInfo

        self.model, self.share = model, list(share)
        fps = float(model.config.data.feature_framerate)
        r = int(model.config.data.image_resolution)
        self.infos = [VideoInfo(f"{c.member['tar']}:{c.path.rsplit(':', 1)[1]}",
                                int(c.member["frames"]), fps, r, r, c.member["codec"],
                                int(c.member["frames"]) / fps, c.size, 0.0)
                      for c in self.share]
        self._stores: dict[str, tuple] = {}

    def _where(self, c: Candidate):
        tar = c.member["tar"]
        if tar not in self._stores:
            self._stores[tar] = _store_and_name(tar)
        return self._stores[tar]

    def iter_frames(self, infos: Sequence | None = None, windows: Sequence | None = None,
                    batch_size: int | None = None
                    ) -> Iterator[tuple[np.ndarray, "object", "object"]]:
        """``VideoTextModel.iter_frames`` for the members (``infos``: this share's, in order):
        per shard store one shard loader in evaluation mode (a member that does not decode
        never appears). A pre-sampled clip has no time windows to sample."""
        if windows is not None and any(w is not None for w in windows):
            raise UserError(NO_WINDOWS)
        from ..data.loaders.loader import build_loader
        from ..data.shards import ShardSplit

        cfg, groups = self.model.config, {}
        for pos, c in enumerate(self.share):
            store, name = self._where(c)
            groups.setdefault(store.root, (store, []))[1].append((pos, name))
        run_cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, dataset="shards", loader="dali",
                                          frame_cache=False),
            train=dataclasses.replace(cfg.train,
                                      eval_batch_size=batch_size or self.model.batch_size))
        for store, members in groups.values():
            tars = sorted({name for _, name in members})
            at = {n: i for i, n in enumerate(tars)}
            positions = [pos for pos, _ in members]
            locs = [(at[name], self.share[pos].member["offset"], self.share[pos].size)
                    for pos, name in members]
            split = ShardSplit("index", [self.share[p].id for p in positions],
                               [self.infos[p].path for p in positions],
                               [self.infos[p] for p in positions], [], np.zeros(0, np.int64),
                               False, store=store, tars=tars,
                               locations=np.asarray(locs, np.int64).reshape(-1, 3))
            loader = build_loader(run_cfg, split, "eval", device=self.model.device,
                                  frame_cache=False)
            yield from self.model.iter_loader(loader, positions)

    def thumbnail(self, pos: int, dest: Path, seconds: float) -> bool:
        from .thumbs import make_thumbnail

        c = self.share[pos]
        store, name = self._where(c)
        try:
            data = store.read_range(name, int(c.member["offset"]), int(c.size))
        except OSError:
            return False
        return make_thumbnail(io.BytesIO(data), dest, seconds, self.infos[pos].path)
