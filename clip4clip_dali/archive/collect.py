"""What to index: the video files of a folder or of a dataset split, as they are now.

The file system as users have it: names that are not valid UTF-8, links that point back up
the tree, files that vanish between listing and reading each get one warning and are left
out; they never stop the listing or make a video appear twice.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..data.split import file_id, walk_video_files
from ..errors import UserError

log = logging.getLogger("clip4clip_dali")


@dataclass
class Candidate:
    """A file of the collection: its id, its path relative to the root, size and mtime. A clip
    inside a tar shard has ``member`` (see :mod:`.tar_clips`) and a stamp of its shard for
    mtime_ns."""

    id: str
    path: str
    size: int
    mtime_ns: int
    member: dict | None = None


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of the video files under ``root``, sorted (the data side's rules
    for names that are not UTF-8, loops, pipes and vanished files)."""
    return sorted(p.relative_to(root).as_posix() for p in walk_video_files(root))


def folder_candidates(videos: str | Path) -> tuple[Path, list[Candidate]]:
    """Every video file under ``videos`` (any container FFmpeg knows by its extension, any
    sub-folder). The id is the path without its extension (with it when two files differ only
    by extension)."""
    from ..data.split import VIDEO_EXTENSIONS

    root = Path(videos).resolve()
    if not root.is_dir():
        raise UserError(f"--videos {videos}: no such folder; pass the folder that holds the "
                        f"videos to index.")
    rels = _walk(root)
    stem = {r: r.rsplit(".", 1)[0] for r in rels}
    clashes = Counter(stem.values())
    out = [_candidate(root, r, stem[r] if clashes[stem[r]] == 1 else r) for r in rels]
    if not out:
        raise UserError(f"no video files under {root} (looked for "
                        f"{', '.join(sorted(VIDEO_EXTENSIONS))}); nothing to index.")
    return root, [c for c in out if c is not None]


def split_candidates(cfg: Config, split: str) -> tuple[Path, list[Candidate]]:
    """The videos of a split of the config's dataset (any layout), relative to the deepest
    folder that holds them all (a JSONL file's videos need not lie under data.features_path),
    each file once (a split with time windows lists a file once per window)."""
    from ..data.dataset import load_split

    if cfg.data.dataset == "shards":  # clips inside tars: members, not files
        from .tar_clips import shard_candidates

        return shard_candidates(cfg.data, split)
    s = load_split(cfg.data, split, probe=False)
    paths = [Path(p).resolve() for p in s.video_paths]
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else \
        Path(cfg.data.features_path).resolve()
    out, seen = [], set()
    for v, (vid, p) in enumerate(zip(s.video_ids, paths)):
        if p in seen:  # a file with captions for several time windows: one entry per window
            continue
        seen.add(p)
        out.append(_candidate(root, p.relative_to(root).as_posix(), file_id(vid, s.window_of(v))))
    return root, [c for c in out if c is not None]


def _candidate(root: Path, rel: str, vid: str) -> Candidate | None:
    try:
        st = (root / rel).stat()
    except OSError as e:
        log.warning("skipping %s: %s", root / rel, e.strerror or e)
        return None
    if not os.path.isfile(root / rel):
        log.warning("skipping %s: not a regular file", root / rel)
        return None
    return Candidate(vid, rel, st.st_size, st.st_mtime_ns)
