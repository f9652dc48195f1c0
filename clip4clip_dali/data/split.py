"""The layout-neutral split every loader, the frame cache and evaluation read, and the steps
all dataset readers share: finding video files, reporting what is missing, probing the videos
once (cached in the manifest) and dropping the unreadable ones.

A reader (``msvd``, ``msrvtt``, ``jsonl``) turns its layout into a ``SplitListing`` (the videos
a split lists, the files found for them, their captions); ``build_split`` makes the
``VideoTextSplit`` from it. ``dataset.load_split`` picks the reader.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import DataConfig
    from .manifest import VideoInfo

log = logging.getLogger("clip4clip_dali")

VIDEO_EXTENSIONS = {".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv", ".ts", ".gif"}


class DatasetError(UserError):
    """The dataset on disk is not usable; the message names the file and the fix."""


@dataclass
class VideoTextSplit:
    """One split, ready for a loader.

    ``captions[j]`` belongs to video ``caption_video[j]``. Evaluation reads each video once and
    every caption. A "video" here is a (file, time window) pair: ``video_window[v]`` is its
    window in whole seconds (``sampling.normalise_window``) or None for the whole file, and a
    file whose captions name several windows is one entry per window (``video_paths`` repeats),
    as the original encodes each (video, window) pair on its own; ``video_window`` is None when
    no entry has a window. Training reads one sample per (video, caption) pair, or, with
    ``caption_per_epoch``, one sample per video with one of its captions drawn each epoch
    (``sharding.epoch_captions``, the one place that maps a training sample to its caption).
    """

    name: str
    video_ids: list[str]
    video_paths: list[Path]
    video_info: list["VideoInfo"]
    captions: list[str]
    caption_video: np.ndarray  # int64, index into video_ids
    caption_per_epoch: bool = False
    video_window: Optional[list[Optional[tuple[int, int]]]] = None

    def window_of(self, v: int) -> Optional[tuple[int, int]]:
        return None if self.video_window is None else self.video_window[v]

    @property
    def num_files(self) -> int:
        return len(set(self.video_paths))

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)


def default_manifest_path(features_path: str | Path) -> Path:
    return Path(features_path) / ".clip4clip_manifest.json"


def find_videos(features_path: str | Path) -> dict[str, Path]:
    """Video files under ``features_path`` by id (file name without its last extension), in a
    stable order (``walk_video_files``'s rules for odd entries)."""
    root = Path(features_path)
    if not root.is_dir():
        raise DatasetError(f"video folder {root} does not exist; set data.features_path to the "
                           f"folder holding the videos (e.g. MSVD's YouTubeClips).")
    found: dict[str, Path] = {}
    for p in walk_video_files(root):
        vid = p.stem
        if vid in found:
            log.warning("video id %s found twice (%s and %s); using the first", vid,
                        found[vid], p)
            continue
        found[vid] = p
    return found


def walk_video_files(root: Path) -> Iterator[Path]:
    """The video files under ``root`` (by extension; hidden entries left out), depth first in
    name order. Followed links are walked once (a link back up the tree is not a loop); a name
    that is not valid UTF-8, a file that is not a regular file (a pipe, a broken link) or one
    that vanished while listing is skipped with a warning naming it."""
    seen_dirs: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:
                log.warning("%s: a link back to a folder already listed; not listed again",
                            _shown(folder))
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            log.warning("%s: cannot be listed (%s); its videos are left out", _shown(folder),
                        e.strerror or e)
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            p = Path(entry.path)
            if is_dir:
                subdirs.append(p)
                continue
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            why = _unusable(entry)
            if why is not None:
                log.warning("skipping %s: %s", _shown(p), why)
                continue
            yield p
        pending.extend(reversed(subdirs))  # depth first, in name order


def _shown(path: Path) -> str:
    """A path as it can be printed (bytes that are not UTF-8 shown as escapes)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _unusable(entry: os.DirEntry) -> Optional[str]:
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename the file"
    try:
        if not entry.is_file():  # follows links
            return "not a regular file (a pipe, a device or a broken link)"
    except OSError as e:
        return f"it vanished or cannot be read ({e.strerror or e})"
    return None


@dataclass
class SplitListing:
    """What a split lists before any video is opened.

    ``listed``: video ids in order; ``videos``: the files found for them (a listed id without a
    file is missing); ``captions``: captions per listed id; ``manifest``: where the probe cache
    goes by default; ``video_source`` / ``caption_source``: where videos and captions come
    from, for messages.
    """

    name: str
    listed: list[str]
    videos: dict[str, Path]
    captions: dict[str, list[str]]
    manifest: Path
    video_source: str
    caption_source: str
    caption_per_epoch: bool = False
    notes: list[str] = field(default_factory=list)  # reader remarks, for the stats command
    # Per listed id, one time window (or None) per caption, parallel to ``captions``; empty
    # when no caption has a window.
    windows: dict[str, list[Optional[tuple[int, int]]]] = field(default_factory=dict)

    @property
    def no_video(self) -> list[str]:
        return [v for v in self.listed if v not in self.videos]

    @property
    def no_captions(self) -> list[str]:
        return [v for v in self.listed if not self.captions.get(v)]

    @property
    def usable(self) -> list[str]:
        return [v for v in self.listed if v in self.videos and self.captions.get(v)]


def report_missing(listing: SplitListing) -> None:
    """One warning naming how many listed videos are skipped, and why."""
    no_video, no_captions = listing.no_video, listing.no_captions
    if not (no_video or no_captions):
        return
    parts = []
    if no_video:
        parts.append(f"{len(no_video)} with no video file {listing.video_source} "
                     f"(e.g. {', '.join(no_video[:3])})")
    if no_captions:
        parts.append(f"{len(no_captions)} with no captions in {listing.caption_source} "
                     f"(e.g. {', '.join(no_captions[:3])})")
    log.warning("split %s: %d of %d listed videos skipped: %s", listing.name,
                len(listing.listed) - len(listing.usable), len(listing.listed), "; ".join(parts))


def manifest_path(data_cfg: "DataConfig", default: Path) -> Path:
    return Path(data_cfg.manifest) if data_cfg.manifest else default


def build_split(name: str, ids: list[str], videos: dict[str, Path],
                captions: dict[str, list[str]], data_cfg: "DataConfig", default_manifest: Path,
                probe: bool = True, caption_per_epoch: bool = False,
                windows: Optional[dict] = None) -> VideoTextSplit:
    """The split of ``ids`` (each with a file and captions): videos probed once (cached in the
    manifest) and the unreadable ones dropped with a warning; an error when none is left.
    ``windows`` (id -> one window or None per caption) makes one entry per (id, window)."""
    infos: list = [None] * len(ids)
    if probe:
        from .manifest import load_manifest

        manifest = load_manifest({v: videos[v] for v in ids},
                                 manifest_path(data_cfg, default_manifest))
        broken = [v for v in ids if not manifest[v].ok]
        for v in broken:
            log.warning("skipping unreadable video %s: %s", videos[v], manifest[v].error)
        ids = [v for v in ids if manifest[v].ok]
        if not ids:
            raise DatasetError(f"split {name}: every video is unreadable (e.g. "
                               f"{videos[broken[0]]}: {manifest[broken[0]].error}).")
        infos = [manifest[v] for v in ids]
    if windows:
        return _windowed_split(name, ids, videos, captions, infos, windows, caption_per_epoch)
    caps, owner = [], []
    for i, v in enumerate(ids):
        caps.extend(captions[v])
        owner.extend([i] * len(captions[v]))
    return VideoTextSplit(name, ids, [videos[v] for v in ids], infos, caps,
                          np.asarray(owner, dtype=np.int64), caption_per_epoch)


def entry_id(vid: str, window: Optional[tuple[int, int]], only: bool) -> str:
    """A (video, window) entry's name: the video id when it is the video's only entry (a
    paragraph set's one window), else ``id@start-end``."""
    return vid if only or window is None else f"{vid}@{window[0]}-{window[1]}"


def file_id(entry: str, window: Optional[tuple[int, int]]) -> str:
    """The video id ``entry_id`` made ``entry`` from (its ``@start-end`` taken off)."""
    suffix = "" if window is None else f"@{window[0]}-{window[1]}"
    return entry[:-len(suffix)] if suffix and entry.endswith(suffix) else entry


def _windowed_split(name, ids, videos, captions, infos, windows, caption_per_epoch):
    entry_ids, paths, entry_infos, entry_windows = [], [], [], []
    caps, owner = [], []
    for v, info in zip(ids, infos):
        wins = windows.get(v) or [None] * len(captions[v])
        distinct = list(dict.fromkeys(wins))
        first = len(entry_ids)
        for w in distinct:
            entry_ids.append(entry_id(v, w, len(distinct) == 1))
            paths.append(videos[v])
            entry_infos.append(info)
            entry_windows.append(w)
        for text, w in zip(captions[v], wins):
            caps.append(text)
            owner.append(first + distinct.index(w))
    return VideoTextSplit(name, entry_ids, paths, entry_infos, caps,
                          np.asarray(owner, dtype=np.int64), caption_per_epoch, entry_windows)


def load_listing(listing: SplitListing, data_cfg: "DataConfig",
                 probe: bool = True) -> VideoTextSplit:
    """Report what ``listing`` misses, then build the split of its usable videos."""
    report_missing(listing)
    if not listing.usable:
        raise DatasetError(f"split {listing.name}: none of the {len(listing.listed)} listed "
                           f"videos has both captions ({listing.caption_source}) and a video "
                           f"file ({listing.video_source}).")
    return build_split(listing.name, listing.usable, listing.videos, listing.captions, data_cfg,
                       listing.manifest, probe, listing.caption_per_epoch, listing.windows)


def clean_caption(text: Optional[str]) -> str:
    """A caption with its whitespace collapsed ('' for None)."""
    return " ".join(text.split()) if text else ""
