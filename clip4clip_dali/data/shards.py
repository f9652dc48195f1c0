"""Tar shards of pre-sampled clips (``pipelines/make_shards.py``) as a dataset layout.

``data.dataset: shards`` with ``data.data_path`` = the shard set's manifest (a local path or
``s3://bucket/prefix/manifest.json``). The manifest, written last by the writer, records::

    {"format": "clip4clip-shards", "version": 1, "sampling": {...}, "codec": "vp9", "crf": 6,
     "splits": {"train": {"caption_per_epoch": false, "shards": [
        {"tar": "train-000000.tar", "index": "train-000000.idx", "bytes": 1234,
         "samples": [{"key": "000000", "id": "vid", "captions": ["..."], "frames": 12}, ...]}]}},
     "failed": {"<video id>": "<why it could not be pre-sampled>"}}

Each shard holds per sample ``<key>.webm`` (or ``.mp4``), the pre-sampled clip (the same bytes
``prepare_msvd.py --presample`` writes), and ``<key>.json`` (id, captions, split, source frame
indices); its ``.idx`` is DALI's index. ``load_split`` checks, before anything is decoded, that
the config samples as the shards were written (else a ``UserError`` naming both values) and
that every shard's index lists the manifest's samples (else refused: another shard set). A
missing, unreadable or truncated shard and a sample without its JSON member are skipped with a
warning naming the shard and member; ``split.skipped`` counts them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import UserError
from .presampled import Sampling, sampling_mismatch
from .shards_store import Store, member_key, parse_index
from .split import DatasetError, SplitListing, VideoTextSplit

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

FORMAT, VERSION = "clip4clip-shards", 1
MANIFEST = "manifest.json"
CLIP_EXT = {"vp9": "webm", "h264": "mp4"}


@dataclass
class ShardSplit(VideoTextSplit):
    """A split whose clips are members of tar shards: clip ``v`` is ``size`` bytes at
    ``offset`` of ``store``'s ``tars[shard]`` (``locations[v] = (shard, offset, size)``)."""

    store: Optional[Store] = None
    tars: list = field(default_factory=list)
    locations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    skipped: list = field(default_factory=list)  # one message per sample left out


def _manifest_path(data_cfg: "DataConfig") -> str:
    path = str(data_cfg.data_path)
    if not path.startswith("s3://") and Path(path).is_dir():
        path = str(Path(path) / MANIFEST)
    return path


_CACHE: dict = {}  # the last manifest read: train, val and test splits read it in turn


def read_manifest(data_cfg: "DataConfig") -> tuple[dict, Store]:
    """(the manifest, the store it sits in); a UserError naming the file and the fix."""
    path = _manifest_path(data_cfg)
    store = Store.of(path)
    name = path.rsplit("/", 1)[-1]
    try:
        key = (path, store.size(name), store.mtime(name))
        if key in _CACHE:
            return _CACHE[key], store
        doc = json.loads(store.read(name))
    except FileNotFoundError:
        raise DatasetError(f"shard manifest {path} does not exist; write the shards with "
                           f"`python pipelines/make_shards.py --config <cfg> --out <dir>` and "
                           f"set data.data_path to <dir>/{MANIFEST}.") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable shard manifest ({e}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise DatasetError(f"{path}: not a {FORMAT} manifest version {VERSION}; write the shards "
                           f"again with pipelines/make_shards.py.")
    _CACHE.clear()
    _CACHE[key] = doc
    return doc, store


def check_manifest_sampling(doc: dict, data_cfg: "DataConfig", where: str) -> Sampling:
    recorded = Sampling.from_json(doc["sampling"])
    diff = sampling_mismatch(recorded, Sampling.from_config(data_cfg))
    if diff:
        raise UserError(f"{where} holds clips pre-sampled with {recorded.describe()}; "
                        f"{'; '.join(diff)}. Set those keys to the recorded values, or write "
                        f"shards for this config (pipelines/make_shards.py --config <your "
                        f"config> --out <new folder>).")
    return recorded


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(read_manifest(data_cfg)[0]["splits"])


def _split_entry(doc: dict, split: str, where: str) -> dict:
    if split not in doc["splits"]:
        raise DatasetError(f"{where} has no split {split!r} (its splits: "
                           f"{', '.join(doc['splits'])}); set data.train_split / val_split / "
                           f"test_split, or write shards of that split.")
    return doc["splits"][split]


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What the manifest lists for ``split`` (no shard is opened)."""
    doc, store = read_manifest(data_cfg)
    where = _manifest_path(data_cfg)
    entry = _split_entry(doc, split, where)
    listed, videos, captions = [], {}, {}
    for shard in entry["shards"]:
        for s in shard["samples"]:
            listed.append(s["id"])
            videos[s["id"]] = Path(f"{shard['tar']}:{s['key']}")
            captions[s["id"]] = list(s["captions"])
    return SplitListing(split, listed, videos, captions, Path(where), f"in the shards of {where}",
                        where, bool(entry.get("caption_per_epoch", False)))


def _usable_samples(store: Store, shard: dict, codec_ext: str, skipped: list) -> list[tuple]:
    """(sample record, clip offset, clip size) of each usable sample of ``shard``."""
    tar, where = shard["tar"], store.where(shard["tar"])
    want = [s["key"] for s in shard["samples"]]

    def skip_all(why: str) -> list:
        log.warning("skipping shard %s (%d samples): %s", where, len(want), why)
        skipped.extend(f"{where}: {why}" for _ in want)
        return []

    try:
        index = parse_index(store.read(shard["index"]).decode("utf-8", "replace"),
                            store.where(shard["index"]))
        size = store.size(tar)
    except FileNotFoundError as e:
        return skip_all(f"missing ({e.filename or e})")
    except (OSError, ValueError) as e:
        return skip_all(f"unreadable ({e})")
    keys = [member_key(next(iter(m.values())).name) for m in index]
    if keys != want or size > int(shard["bytes"]):
        raise DatasetError(
            f"{where} does not match the manifest ({len(keys)} samples, {size} bytes in the "
            f"shard; {len(want)} samples, {shard['bytes']} bytes in the manifest): the manifest "
            f"belongs to another shard set. Point data.data_path at this set's own manifest, or "
            f"write the shards again.")
    out = []
    for rec, members in zip(shard["samples"], index):
        clip, meta = members.get(codec_ext), members.get("json")
        why = None
        if clip is None:
            why = f"member {rec['key']}.{codec_ext} is missing"
        elif meta is None:
            why = f"member {rec['key']}.json is missing (a sample without its JSON)"
        elif max(clip.offset + clip.size, meta.offset + meta.size) > size:
            why = f"member {clip.name} lies past the end of the file ({size} bytes: truncated)"
        if why:
            log.warning("skipping sample %s of shard %s: %s", rec["id"], where, why)
            skipped.append(f"{where}: {why}")
        else:
            out.append((rec, clip.offset, clip.size))
    return out


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> ShardSplit:
    """The split's usable samples (``probe`` is accepted for the interface; shards are checked
    against their index and size, never probed)."""
    from .manifest import VideoInfo

    doc, store = read_manifest(data_cfg)
    where = _manifest_path(data_cfg)
    sampling = check_manifest_sampling(doc, data_cfg, where)
    entry = _split_entry(doc, split, where)
    codec = str(doc.get("codec", "vp9"))
    ext = CLIP_EXT.get(codec, "webm")
    per_epoch = getattr(data_cfg, "shards_caption_per_epoch", None)
    per_epoch = bool(entry.get("caption_per_epoch", False)) if per_epoch is None else per_epoch
    ids, names, infos, caps, owner, locs, tars, skipped = [], [], [], [], [], [], [], []
    r = sampling.image_resolution
    for shard in entry["shards"]:
        tars.append(shard["tar"])
        for rec, offset, size in _usable_samples(store, shard, ext, skipped):
            v = len(ids)
            ids.append(str(rec["id"]))
            names.append(f"{store.where(shard['tar'])}:{rec['key']}.{ext}")
            infos.append(VideoInfo(names[-1], int(rec["frames"]), float(sampling.feature_framerate),
                                   r, r, codec, 0.0, int(size), 0.0))
            caps.extend(rec["captions"])
            owner.extend([v] * len(rec["captions"]))
            locs.append((len(tars) - 1, offset, size))
    if skipped:
        log.warning("split %s: %d sample(s) of the shards skipped (see above)", split,
                    len(skipped))
    if not ids:
        raise DatasetError(f"split {split} of {where}: no usable sample left"
                           + (f" ({skipped[0]})" if skipped else "") + ".")
    return ShardSplit(split, ids, names, infos, caps, np.asarray(owner, np.int64), per_epoch,
                      store=store, tars=tars, locations=np.asarray(locs, np.int64).reshape(-1, 3),
                      skipped=skipped)
