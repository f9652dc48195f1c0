"""The dataset interface: ``load_split(data_cfg, split)`` -> ``VideoTextSplit``, whatever the
layout on disk. ``data.dataset`` picks the reader:

- ``msvd``: CLIP4Clip's MSVD layout (``msvd.py``): split lists + ``raw-captions.pkl``;
- ``msrvtt``: CLIP4Clip's MSR-VTT layout (``msrvtt.py``): ``MSRVTT_data.json`` + split CSVs;
- ``jsonl``: one line per caption, for a team's own clips (``jsonl.py``; CSV too);
- ``didemo``, ``activitynet``, ``lsmdc``: the original's other layouts (``didemo.py``...);
- ``shards``: tar shards of pre-sampled clips (``shards.py``; ``pipelines/make_shards.py``).

Loaders, the frame cache, evaluation, preparation and the benchmark read only the split.
"""
from __future__ import annotations

import importlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .split import DatasetError, SplitListing, VideoTextSplit  # noqa: F401  (the interface)

if TYPE_CHECKING:
    from ..config import DataConfig

READERS = {"msvd": "msvd", "msrvtt": "msrvtt", "jsonl": "jsonl", "didemo": "didemo",
           "activitynet": "activitynet", "lsmdc": "lsmdc", "shards": "shards"}


def reader(data_cfg: "DataConfig"):
    """The module that reads ``data.dataset``'s layout (load_split, list_split, split_names)."""
    name = getattr(data_cfg, "dataset", "msvd")
    if name not in READERS:
        raise DatasetError(f"data.dataset = {name!r} is not a known layout; choose one of "
                           f"{', '.join(READERS)}.")
    return importlib.import_module(f"{__package__}.{READERS[name]}")


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    """Split ``split`` of the dataset ``data_cfg`` describes: its videos checked (probed once,
    cached in the manifest), the unreadable and the missing ones dropped with a warning."""
    return reader(data_cfg).load_split(data_cfg, split, probe=probe)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (videos, files found, captions) without opening a video."""
    return reader(data_cfg).list_split(data_cfg, split)


def split_names(data_cfg: "DataConfig") -> list[str]:
    """The splits the dataset has (MSVD and MSR-VTT: train, val, test; JSONL: those in it)."""
    return list(reader(data_cfg).split_names(data_cfg))


def dataset_videos(data_cfg: "DataConfig") -> dict[str, Path]:
    """Every video file the dataset's splits list and that exists, by video id."""
    out: dict[str, Path] = {}
    for name in split_names(data_cfg):
        listing = list_split(data_cfg, name)
        out.update({v: listing.videos[v] for v in listing.listed if v in listing.videos})
    return out


def output_names(video_ids) -> dict[str, str]:
    """A relative file name (no extension) for each video id, for a prepared copy: the id itself
    (MSVD, MSR-VTT), or for a path-like id (JSONL) that path without its video extension and
    without '..' parts, so copies stay inside the output folder."""
    from .split import VIDEO_EXTENSIONS

    names: dict[str, str] = {}
    taken: set[str] = set()
    for vid in video_ids:
        p = PurePosixPath(vid)
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            p = p.with_suffix("")
        name = "/".join(part if part not in ("..", ".") else "_" for part in p.parts
                        if part != "/") or "_"
        base, k = name, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[vid] = name
    return names
