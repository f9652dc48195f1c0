"""Thumbnails of indexed videos: one small JPEG each, named by the file's path, size and time
(a changed file gets a new name, so a page that cached the old one never shows it again)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("clip4clip_dali")

THUMB_SIZE = 192  # longest side, pixels


def thumb_name(rel: str, size: int = 0, mtime_ns: int = 0) -> str:
    return hashlib.sha1(f"{rel}\0{size}\0{mtime_ns}".encode()).hexdigest()[:16] + ".jpg"


def make_thumbnail(src: Path | BinaryIO, dest: Path, seconds: float, name: str = "") -> bool:
    """A JPEG of the frame at ``seconds`` (the nearest keyframe before it, then decoded up to
    it), at most THUMB_SIZE pixels on its long side, of a file or of a clip's bytes (``src`` a
    binary file object; ``name`` for the log). False when no frame could be read."""
    import av

    try:
        with av.open(str(src) if isinstance(src, Path) else src) as container:
            stream = container.streams.video[0]
            image = None
            if seconds > 0 and stream.time_base:
                try:
                    container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
                except av.error.FFmpegError:
                    container.seek(0)
            for frame in container.decode(stream):
                image = frame.to_image()
                if frame.time is None or frame.time >= seconds:
                    break
        if image is None:
            return False
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
        image.convert("RGB").save(tmp, "JPEG", quality=82)
        os.replace(tmp, dest)
        return True
    except Exception as e:  # a thumbnail is a nicety: never fail the index for it
        log.warning("no thumbnail for %s (%s)", name or src, e)
        return False


