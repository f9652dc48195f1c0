"""ActivityNet Captions in CLIP4Clip's layout (its dataloaders/dataloader_activitynet_retrieval.py):
video-paragraph retrieval.

``data_path`` holds ``train_ids.json`` / ``val_ids.json`` (lists of ids with the ``v_`` prefix,
e.g. ``"v_QOlSCBRmfWY"``) and ``train.json`` / ``val_1.json``: ``{"v_<id>": {"duration": 82.73,
"timestamps": [[0.83, 19.86], ...], "sentences": ["...", ...]}, ...}``. ``features_path`` holds
``<id>.<ext>``, the id without ``v_`` as the original looks them up (``v_<id>.<ext>`` is found
too).

As the original: a video's sentences joined with spaces are its one caption, sampled in the
window 0-ceil(duration) s; the per-sentence timestamps are not used. The original has train
and val only: test reads val (``val_ids.json`` + ``val_1.json``), as the paper reports on it.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from .layout_files import annotation_file, listing, require_split
from .split import (DatasetError, SplitListing, VideoTextSplit, clean_caption, find_videos,
                    load_listing)
from .tables import read_json, text_problem

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

SPLITS = ("train", "val", "test")
FILES = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json"),
         "test": ("val_ids.json", "val_1.json")}
HOLDS = "train_ids.json, val_ids.json, train.json, val_1.json"


def video_id(pseudo: str) -> str:
    """The file name of a ``v_``-prefixed id (the original drops its first two characters)."""
    return pseudo[2:]


def read_ids(path) -> list[str]:
    doc = read_json(path, "ActivityNet id list", "restore ActivityNet's *_ids.json.")
    if not isinstance(doc, list) or any(text_problem(x) for x in doc):
        raise DatasetError(f"{path} must be a JSON list of video ids (\"v_<id>\", ...).")
    unique = list(dict.fromkeys(doc))
    if len(unique) < len(doc):
        log.warning("%s lists %d id(s) more than once; each is used once", path,
                    len(doc) - len(unique))
    return unique


def read_paragraphs(path) -> dict[str, tuple[str, tuple[int, int]]]:
    """pseudo id -> (paragraph, window 0-ceil(duration))."""
    doc = read_json(path, "ActivityNet caption file", "restore ActivityNet's train.json / "
                                                      "val_1.json.")
    if not isinstance(doc, dict):
        raise DatasetError(f"{path} holds a {type(doc).__name__}; ActivityNet Captions' "
                           f"{path.name} maps \"v_<id>\" to {{'duration', 'timestamps', "
                           f"'sentences'}}.")
    out = {}
    for pseudo, item in doc.items():
        sentences = item.get("sentences") if isinstance(item, dict) else None
        duration = item.get("duration") if isinstance(item, dict) else None
        why = None
        if not isinstance(sentences, list) or any(text_problem(s) for s in sentences):
            why = "'sentences' is not a list of text"
        elif isinstance(duration, bool) or not isinstance(duration, (int, float, str)):
            why = f"'duration' is {duration!r:.40}, not a number of seconds"
        else:
            try:
                seconds = float(duration)
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds) or seconds < 0:
                why = f"'duration' is {duration!r:.40}, not a number of seconds from 0"
        if why:
            raise DatasetError(f"{path}: {pseudo!r}: {why}; fix or remove the entry.")
        text = clean_caption(" ".join(sentences))
        if text:
            out[pseudo] = (text, (0, int(math.ceil(seconds))))
    return out


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(SPLITS)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (no video is opened)."""
    require_split(split, SPLITS, "ActivityNet", " (test reads val)")
    ids_name, json_name = FILES[split]
    pseudo_ids = read_ids(annotation_file(data_cfg, ids_name, "ActivityNet Captions", HOLDS))
    json_path = annotation_file(data_cfg, json_name, "ActivityNet Captions", HOLDS)
    paragraphs = read_paragraphs(json_path)
    found = find_videos(data_cfg.features_path)
    listed, captions, windows = [], {}, {}
    for pseudo in pseudo_ids:
        vid = video_id(pseudo)
        if vid not in found and pseudo in found:  # files kept their v_ prefix
            vid = pseudo
        listed.append(vid)
        if pseudo in paragraphs:
            captions[vid] = [paragraphs[pseudo][0]]
            windows[vid] = [paragraphs[pseudo][1]]
    return listing(data_cfg, split, list(dict.fromkeys(listed)), found, captions, json_path,
                   windows)


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    return load_listing(list_split(data_cfg, split), data_cfg, probe)
