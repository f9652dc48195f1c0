"""DiDeMo in CLIP4Clip's layout (its dataloaders/dataloader_didemo_retrieval.py): video-paragraph
retrieval.

``data_path`` holds ``{train,val,test}_list.txt`` (one video file name a line, e.g.
``12090392@N02_13482799053_87ef417396.mov``) and ``{train,val,test}_data.json``: a list of
``{"video", "description", "times": [[start, end], ...], ...}``, one object per description,
``times`` in 5-second chunks, one pair per annotator. ``features_path`` holds the videos (any
folder depth), named as listed (or with another extension: prepared copies).

As the original: every description of a listed video joined with spaces (file order) is the
video's one caption, sampled in the window 0-31 s (its note: videos were cut to 30 s for
annotation); the per-description ``times`` are read but not used, as there.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .layout_files import annotation_file, listing, require_split
from .split import (DatasetError, SplitListing, VideoTextSplit, clean_caption, find_videos,
                    load_listing)
from .tables import read_json, read_text, text_problem

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

SPLITS = ("train", "val", "test")
WINDOW = (0, 31)
HOLDS = "{train,val,test}_list.txt and {train,val,test}_data.json"


def read_list(path) -> list[str]:
    """The video names of a ``*_list.txt``, in order, each once."""
    names = [line.strip() for line in read_text(path, "DiDeMo split list").splitlines()]
    names = [n for n in names if n]
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        log.warning("%s lists %d video(s) more than once; each is used once", path,
                    len(names) - len(unique))
    return unique


def read_descriptions(path) -> dict[str, list[str]]:
    """Descriptions by video, in file order, from a ``*_data.json``."""
    doc = read_json(path, "DiDeMo annotation file", "restore the DiDeMo *_data.json.")
    if not isinstance(doc, list):
        raise DatasetError(f"{path} holds a {type(doc).__name__}; DiDeMo's *_data.json is a "
                           f"list of {{'video', 'description', 'times'}} objects.")
    out: dict[str, list[str]] = {}
    for k, item in enumerate(doc):
        why = ("not an object" if not isinstance(item, dict) else
               "; ".join(f"{key} is {text_problem(item.get(key))}"
                         for key in ("video", "description")
                         if text_problem(item.get(key)) is not None))
        if why:
            raise DatasetError(f"{path}: item [{k}] {why} (need text 'video' and "
                               f"'description'): {str(item)[:120]}; fix or remove it.")
        text = clean_caption(item["description"])
        if text:
            out.setdefault(item["video"], []).append(text)
    return out


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(SPLITS)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (no video is opened)."""
    require_split(split, SPLITS, "DiDeMo")
    listed = read_list(annotation_file(data_cfg, f"{split}_list.txt", "DiDeMo", HOLDS))
    json_path = annotation_file(data_cfg, f"{split}_data.json", "DiDeMo", HOLDS)
    descriptions = read_descriptions(json_path)
    captions = {v: [" ".join(descriptions[v])] for v in listed if descriptions.get(v)}
    return listing(data_cfg, split, listed, find_videos(data_cfg.features_path), captions,
                   json_path, windows={v: [WINDOW] for v in captions})


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    return load_listing(list_split(data_cfg, split), data_cfg, probe)
