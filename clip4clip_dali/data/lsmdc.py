"""LSMDC in CLIP4Clip's layout (its dataloaders/dataloader_lsmdc_retrieval.py): one clip per
caption, whole clips.

``data_path`` holds ``LSMDC16_annos_training.csv`` (train), ``LSMDC16_annos_val.csv`` (val) and
``LSMDC16_challenge_1000_publictect.csv`` (test): despite the name, tab-separated and without a
header, six fields a line: ``<CLIP_ID> <START_ALIGNED> <END_ALIGNED> <START_EXTRACTED>
<END_EXTRACTED> <SENTENCE>``. A clip id may have several lines (captions). ``features_path``
holds ``<CLIP_ID>.<ext>`` at any depth (LSMDC keeps a folder per movie). The times are those of
the clip inside its movie, not used (as there): each clip is read whole.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .layout_files import annotation_file, listing, require_split
from .split import (DatasetError, SplitListing, VideoTextSplit, clean_caption, find_videos,
                    load_listing)
from .tables import read_text

if TYPE_CHECKING:
    from ..config import DataConfig

SPLITS = ("train", "val", "test")
FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
         "test": "LSMDC16_challenge_1000_publictect.csv"}
FIELDS = 6


def read_annotations(path) -> dict[str, list[str]]:
    """Captions by clip id, in file order. The lines are split on tabs as the original does
    (no CSV quoting: a sentence may hold quotes)."""
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(read_text(path, "LSMDC annotation file").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) != FIELDS:
            raise DatasetError(f"{path}, line {number}: {len(cells)} tab-separated fields, "
                               f"LSMDC's annotations have {FIELDS} (clip id, 4 times, "
                               f"sentence); separate them with tabs.")
        clip_id, text = cells[0].strip(), clean_caption(cells[-1])
        if clip_id and text:
            captions.setdefault(clip_id, []).append(text)
    return captions


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(SPLITS)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (no video is opened)."""
    require_split(split, SPLITS, "LSMDC")
    path = annotation_file(data_cfg, FILES[split], "LSMDC", ", ".join(FILES.values()))
    captions = read_annotations(path)
    if not captions:
        raise DatasetError(f"{path} holds no caption line.")
    return listing(data_cfg, split, list(captions), find_videos(data_cfg.features_path),
                   captions, path)


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    return load_listing(list_split(data_cfg, split), data_cfg, probe)
