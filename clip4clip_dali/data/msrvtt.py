"""MSR-VTT in CLIP4Clip's layout (its dataloaders/dataloader_msrvtt_retrieval.py).

``data_path`` holds ``MSRVTT_data.json`` (``sentences``: ``{"video_id", "caption", ...}``;
``videos``: per-video metadata, not needed here), the train CSV (a ``video_id`` column:
``MSRVTT_train.9k.csv`` or ``MSRVTT_train.7k.csv``) and the 1k-A test CSV
``MSRVTT_JSFUSION_test.csv`` (``key, vid_key, video_id, sentence``: one caption per video).
``features_path`` holds ``<video_id>.mp4`` (or ``.webm``, or any container).

Train: the captions of the train CSV's videos from the JSON; with
``data.msrvtt_unfold_sentences`` (the original's ``--expand_msrvtt_sentences``) one sample per
(video, caption), else one sample per video with one of its captions drawn per epoch. Val and
test: the rows of the test CSV (val: ``data.msrvtt_val_csv`` when set), as the original
evaluates on its ``--val_csv``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .split import (DatasetError, SplitListing, VideoTextSplit, clean_caption,
                    default_manifest_path, find_videos, load_listing)
from .tables import read_csv as read_table
from .tables import loads, read_text, text_problem

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

SPLITS = ("train", "val", "test")


def _file(data_cfg: "DataConfig", name: str, key: str) -> Path:
    path = Path(data_cfg.data_path) / name
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; data.{key} names it relative to "
                           f"data.data_path ({data_cfg.data_path}), the folder of CLIP4Clip's "
                           f"msrvtt_data (MSRVTT_data.json, MSRVTT_train.9k.csv, "
                           f"MSRVTT_JSFUSION_test.csv).")
    return path


def read_sentences(path: str | Path) -> dict[str, list[str]]:
    """Captions by video id from ``MSRVTT_data.json``'s ``sentences``, in file order."""
    path = Path(path)
    try:
        doc = loads(read_text(path, "MSR-VTT annotation file"))
    except ValueError as e:
        raise DatasetError(f"{path} is not readable JSON ({e}); restore CLIP4Clip's "
                           f"MSRVTT_data.json.") from None
    sentences = doc.get("sentences") if isinstance(doc, dict) else None
    if not isinstance(sentences, list):
        raise DatasetError(f"{path} has no 'sentences' list; MSR-VTT's MSRVTT_data.json holds "
                           f"{{'videos': [...], 'sentences': [{{'video_id', 'caption'}}, ...]}}.")
    captions: dict[str, list[str]] = {}
    bad, empty = [], 0
    for k, item in enumerate(sentences):
        if not isinstance(item, dict):
            bad.append((k, f"a {type(item).__name__}, not an object"))
            continue
        why = [f"{key} is {text_problem(item.get(key))}" for key in ("video_id", "caption")
               if text_problem(item.get(key)) is not None]
        if why:
            bad.append((k, "; ".join(why)))
            continue
        text = clean_caption(item["caption"])
        if text:
            captions.setdefault(item["video_id"], []).append(text)
        else:
            empty += 1
    if bad:
        k, why = bad[0]
        raise DatasetError(f"{path}: {len(bad)} of {len(sentences)} sentences lack a string "
                           f"video_id or caption (e.g. sentences[{k}]: {why}: "
                           f"{str(sentences[k])[:120]}); nothing was read. Fix or remove "
                           f"them.")
    if empty:
        log.warning("%s: skipped %d empty caption(s)", path, empty)
    return captions


def read_csv(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header holding ``columns`` (extra columns are kept, unused), cells
    stripped; the rules of ``tables.read_csv``."""
    _header, rows = read_table(Path(path), columns, what="MSR-VTT annotation file")
    return [{k: v.strip() for k, v in row.items()} for _line, row in rows]


def read_train_ids(path: str | Path) -> list[str]:
    """The ``video_id`` column of a train CSV, in order, each id once."""
    ids = [r["video_id"] for r in read_csv(path, ("video_id",)) if r["video_id"]]
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        log.warning("%s lists %d video id(s) more than once; each is used once", path,
                    len(ids) - len(unique))
    return unique


def read_test_rows(path: str | Path) -> list[tuple[str, str]]:
    """(video_id, sentence) of every row of a test CSV (1k-A: key, vid_key, video_id,
    sentence), in order."""
    rows = read_csv(path, ("video_id", "sentence"))
    out = [(r["video_id"], clean_caption(r["sentence"])) for r in rows]
    empty = sum(1 for v, s in out if v and not s)
    if empty:
        log.warning("%s: skipped %d row(s) with an empty sentence", path, empty)
    return [(v, s) for v, s in out if v and s]


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(SPLITS)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (no video is opened)."""
    if split not in SPLITS:
        raise DatasetError(f"MSR-VTT has the splits {', '.join(SPLITS)}, not {split!r}; set "
                           f"data.train_split / val_split / test_split to one of them.")
    features_path = Path(data_cfg.features_path)
    if split == "train":
        json_path = _file(data_cfg, data_cfg.msrvtt_json, "msrvtt_json")
        csv_path = _file(data_cfg, data_cfg.msrvtt_train_csv, "msrvtt_train_csv")
        listed = read_train_ids(csv_path)
        sentences = read_sentences(json_path)
        captions = {v: sentences.get(v, []) for v in listed}
        caption_source = str(json_path)
        per_epoch = not data_cfg.msrvtt_unfold_sentences
    else:
        name, key = data_cfg.msrvtt_test_csv, "msrvtt_test_csv"
        if split == "val" and data_cfg.msrvtt_val_csv:
            name, key = data_cfg.msrvtt_val_csv, "msrvtt_val_csv"
        csv_path = _file(data_cfg, name, key)
        captions = {}
        for vid, sentence in read_test_rows(csv_path):
            captions.setdefault(vid, []).append(sentence)
        listed = list(captions)
        caption_source = str(csv_path)
        per_epoch = False
    if not listed:
        raise DatasetError(f"{csv_path} lists no videos.")
    return SplitListing(split, listed, find_videos(features_path), captions,
                        default_manifest_path(features_path), f"under {features_path}",
                        caption_source, caption_per_epoch=per_epoch)


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    """Read one split, check its videos (probed once, cached in the manifest), drop the broken."""
    return load_listing(list_split(data_cfg, split), data_cfg, probe)
