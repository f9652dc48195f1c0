"""MSVD in CLIP4Clip's layout: split lists, ``raw-captions.pkl`` and a folder of videos.

``data_path`` holds ``{train,val,test}_list.txt`` (one video id a line) and ``raw-captions.pkl``
(video id -> list of captions, each a list of tokens). ``features_path`` holds the videos, any
extension, in any sub-folder; a video's id is its file name without the last extension.
Training reads one sample per (video, caption); evaluation reads each video once and every
caption with the index of its video.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import run_cli
from .split import (VIDEO_EXTENSIONS, DatasetError, SplitListing, VideoTextSplit,  # noqa: F401
                    build_split, default_manifest_path, find_videos)
from .tables import read_text

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

CAPTIONS_FILE = "raw-captions.pkl"
SPLITS = ("train", "val", "test")
MSVDSplit = VideoTextSplit  # the name every caller used before the other layouts came


class _CaptionsUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, tuples, strings and numbers: no global is ever looked up."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """Read ``raw-captions.pkl`` as the original does: each caption's tokens joined by spaces.

    Captions given as plain strings are accepted too. A pickle that would import or call
    anything is refused without being executed.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"captions file {path} does not exist; data_path must hold "
                           f"{CAPTIONS_FILE} (video id -> list of captions).") from None
    try:
        raw = _CaptionsUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{path} is not a plain captions pickle ({e}); it may be malicious "
                           f"or made with other types. Rebuild it as a dict of video id -> "
                           f"list of captions (lists of token strings).") from None
    except Exception as e:  # truncated or garbage bytes
        raise DatasetError(f"{path} could not be read as a pickle ({type(e).__name__}: {e}); "
                           f"the file is corrupt. Restore or rebuild it.") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path} holds a {type(raw).__name__}, expected a dict of video id "
                           f"-> list of captions.")
    captions: dict[str, list[str]] = {}
    empty = 0
    for vid, caps in raw.items():
        vid = _utf8(vid, vid, path)
        if not isinstance(vid, str):
            raise DatasetError(f"{path}: key {vid!r} is a {type(vid).__name__}; video ids must "
                               f"be strings.")
        if not isinstance(caps, (list, tuple)):
            raise DatasetError(f"{path}: captions of {vid!r} are a {type(caps).__name__}; "
                               f"expected a list of captions.")
        out = []
        for cap in caps:
            text = _caption_text(cap, vid, path)
            if text:
                out.append(text)
            else:
                empty += 1
        captions[vid] = out
    if empty:
        log.warning("%s: skipped %d empty caption(s)", path, empty)
    return captions


def _utf8(value, vid, path: Path):
    """Bytes (Python 2 pickles) as text: UTF-8, else Latin-1 (what Python 2 tools wrote), with
    a warning naming the video."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
        log.warning("%s: %r holds bytes that are not UTF-8 (%r), read as Latin-1: %r", path,
                    vid, value[:40], text[:40])
        return text


def _caption_text(cap, vid: str, path: Path) -> str:
    cap = _utf8(cap, vid, path)
    if isinstance(cap, str):
        return " ".join(cap.split())
    if isinstance(cap, (list, tuple)):
        tokens = []
        for tok in cap:
            tok = _utf8(tok, vid, path)
            if not isinstance(tok, str):
                raise DatasetError(f"{path}: a caption of {vid!r} holds the token {tok!r} "
                                   f"({type(tok).__name__}); tokens must be strings.")
            tokens.append(tok)
        return " ".join(" ".join(tokens).split())
    raise DatasetError(f"{path}: a caption of {vid!r} is a {type(cap).__name__}; expected a "
                       f"list of tokens or a string.")


def read_split_ids(data_path: str | Path, split: str) -> list[str]:
    """Video ids of ``<data_path>/<split>_list.txt`` in file order; a repeated id is kept once."""
    path = Path(data_path) / f"{split}_list.txt"
    if not path.exists():
        raise DatasetError(f"split file {path} does not exist; data_path must hold "
                           f"train_list.txt, val_list.txt and test_list.txt (one video id a "
                           f"line).")
    lines = read_text(path, "split file").splitlines()
    ids, seen, repeated = [], set(), []
    for line in lines:
        vid = line.strip()
        if not vid:
            continue
        if vid in seen:
            repeated.append(vid)
            continue
        seen.add(vid)
        ids.append(vid)
    if repeated:
        log.warning("%s lists %d id(s) more than once (e.g. %s); each is used once", path,
                    len(repeated), ", ".join(repeated[:3]))
    return ids


@dataclass
class SplitIndex:
    """Which listed ids of a split have captions and videos."""

    name: str
    listed: list[str]
    usable: list[str]
    no_video: list[str] = field(default_factory=list)
    no_captions: list[str] = field(default_factory=list)


def index_split(name: str, listed: list[str], captions: dict[str, list[str]],
                videos: dict[str, Path] | None) -> SplitIndex:
    no_captions = [v for v in listed if not captions.get(v)]
    no_video = [v for v in listed if videos is not None and v not in videos]
    bad = set(no_captions) | set(no_video)
    usable = [v for v in listed if v not in bad]
    return SplitIndex(name, listed, usable, no_video, no_captions)


def _report_missing(index: SplitIndex, data_path: Path, features_path: Path) -> None:
    if not (index.no_video or index.no_captions):
        return
    parts = []
    if index.no_video:
        parts.append(f"{len(index.no_video)} with no video under {features_path} "
                     f"(e.g. {', '.join(index.no_video[:3])})")
    if index.no_captions:
        parts.append(f"{len(index.no_captions)} with no captions in "
                     f"{data_path / CAPTIONS_FILE} (e.g. {', '.join(index.no_captions[:3])})")
    log.warning("split %s: %d of %d listed videos skipped: %s", index.name,
                len(index.listed) - len(index.usable), len(index.listed), "; ".join(parts))


def _paths(data_cfg: "DataConfig") -> tuple[Path, Path]:
    data_path, features_path = Path(data_cfg.data_path), Path(data_cfg.features_path)
    if not data_path.is_dir():
        raise DatasetError(f"data folder {data_path} does not exist; set data.data_path to the "
                           f"folder with the split lists and {CAPTIONS_FILE}.")
    return data_path, features_path


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    """Read one split, check its videos (probed once, cached in the manifest), drop the broken."""
    data_path, features_path = _paths(data_cfg)
    listed = read_split_ids(data_path, split)
    if not listed:
        raise DatasetError(f"{data_path / f'{split}_list.txt'} lists no videos.")
    captions = load_captions(data_path / CAPTIONS_FILE)
    videos = find_videos(features_path)
    index = index_split(split, listed, captions, videos)
    _report_missing(index, data_path, features_path)
    if not index.usable:
        raise DatasetError(f"split {split}: none of the {len(listed)} listed videos has both "
                           f"captions and a video file under {features_path}; check "
                           f"data.features_path and the ids in {split}_list.txt.")
    return build_split(split, index.usable, videos, captions, data_cfg,
                       default_manifest_path(features_path), probe)


def split_names(data_cfg: "DataConfig") -> list[str]:
    return list(SPLITS)


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists, for the stats command (no video is opened)."""
    data_path, features_path = _paths(data_cfg)
    captions = load_captions(data_path / CAPTIONS_FILE)
    listed = read_split_ids(data_path, split)
    return SplitListing(split, listed, find_videos(features_path),
                        {v: captions.get(v, []) for v in listed},
                        default_manifest_path(features_path), f"under {features_path}",
                        str(data_path / CAPTIONS_FILE))


def dataset_stats(data_path: str | Path, features_path: str | Path | None = None) -> dict:
    """Per split: videos listed, found (with a features path), missing, captions, pairs."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise DatasetError(f"data folder {data_path} does not exist.")
    captions = load_captions(data_path / CAPTIONS_FILE)
    videos = find_videos(features_path) if features_path is not None else None
    stats = {}
    for split in SPLITS:
        listed = read_split_ids(data_path, split)
        index = index_split(split, listed, captions, videos)
        n_captions = sum(len(captions.get(v, ())) for v in listed)
        stats[split] = {
            "videos_listed": len(listed),
            "videos_found": None if videos is None else len(listed) - len(index.no_video),
            "videos_missing": None if videos is None else len(index.no_video),
            "missing_examples": index.no_video[:5],
            "videos_without_captions": len(index.no_captions),
            "captions": n_captions,
            "pairs": sum(len(captions[v]) for v in index.usable),
        }
    if videos is not None and not any(s["videos_found"] for s in stats.values()):
        raise DatasetError(f"no listed video was found under {features_path}; check "
                           f"--features-path (videos are matched by file name without "
                           f"extension).")
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.data.msvd",
                                description="Print per-split statistics of an MSVD-format dataset.")
    p.add_argument("--data-path", required=True, help="folder with the split lists and raw-captions.pkl")
    p.add_argument("--features-path", help="folder with the videos (optional)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    stats = dataset_stats(args.data_path, args.features_path)
    json.dump(stats, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    run_cli(main)
