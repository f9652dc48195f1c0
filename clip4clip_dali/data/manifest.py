"""Per-video metadata (frame count, frame rate, size, codec), probed once with PyAV and cached.

The frame count is the number of frames a decoder really yields, because that is what the
sampling rule (``sampling.frame_indices``) indexes and what DALI's ``decoders.video`` can
return: asking DALI for one frame past the end fails the whole batch.

How it is counted (``count="demux"``, the default): demux the video stream without decoding
and count the packets that carry data (``size > 0``) and are neither flagged corrupt nor
discard. Measured on the 12 real MSVD AVIs (H.264 in AVI), on the 6 other real clips (H.264 and
MPEG-4 Part 2, in MP4 and AVI) and on generated VP9/WebM, MJPEG/AVI and H.264/MP4 clips, this
equals the number of frames PyAV decodes and (for VP9/MJPEG) the number DALI decodes, at a few
milliseconds per clip. The demuxer's final flush packet (size 0) and AVI "dropped frame" chunks
(size 0, which ``stream.frames`` would count and OpenCV's CAP_PROP_FRAME_COUNT reports from the
AVI index) yield no frame and are therefore not counted. ``stream.frames`` (container header)
is 0 for WebM/Matroska and can disagree with the decoder for AVI, so it is never trusted alone;
``count="header"`` uses it where non-zero (fastest, for trusted MP4 inputs) and
``count="decode"`` decodes every frame (the oracle used by the tests).

``VideoInfo.duration`` is ``frames / fps``: the span the sampling rule sees.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping, Optional

import av

log = logging.getLogger(__name__)

CACHE_VERSION = 1
COUNT_MODES = ("demux", "header", "decode")


@dataclass
class VideoInfo:
    path: str
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float
    size: int
    mtime: float
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.frames > 0 and self.fps > 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "VideoInfo":
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise ValueError(f"manifest entry lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in names})


def _bad(path: str, size: int, mtime: float, reason: str, **kw) -> VideoInfo:
    base = dict(path=path, frames=0, fps=0.0, width=0, height=0, codec="", duration=0.0,
                size=size, mtime=mtime, error=reason)
    base.update(kw)
    return VideoInfo(**base)


def _short(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return msg[:300]


TAIL_MAX_PACKETS = 400


def _count_demux(container, stream, verify_tail: bool = True) -> int:
    """Packets that carry a frame; then decode the last GOP to catch a truncated/damaged end.

    Returns the number of frames a decoder yields: packets before the last keyframe plus the
    frames that the last GOP really decodes to. Raises when the last GOP fails to decode.
    """
    n = 0
    tail: list = []  # packets from the last keyframe on
    end = 0.0
    for pkt in container.demux(stream):
        if pkt.size <= 0 or pkt.is_corrupt or pkt.is_discard:
            continue
        n += 1
        if pkt.pts is not None and pkt.time_base:
            end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
        if pkt.is_keyframe:
            tail = [pkt]
        elif tail is not None:
            tail.append(pkt)
            if len(tail) > TAIL_MAX_PACKETS:
                tail = None  # GOP too long to check cheaply; stop collecting until next key
    if not verify_tail or not tail:
        return n, end
    ctx = stream.codec_context
    got = 0
    for pkt in tail:
        got += len(ctx.decode(pkt))
    got += len(ctx.decode(None))
    return n - len(tail) + got, end


def _count_decode(container, stream) -> tuple[int, float]:
    n, end = 0, 0.0
    for frame in container.decode(stream):
        n += 1
        if frame.time is not None:
            end = max(end, frame.time)
    return n, end + (1.0 / float(stream.average_rate) if n and stream.average_rate else 0.0)


def _header_seconds(container, stream) -> Optional[float]:
    """How long the container header says the video lasts (None when it says nothing)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1e6
    return None


def _header_frames(container, stream, fps: float) -> Optional[int]:
    """Frame count the container header announces (None when it says nothing usable)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base) * fps))
    if container.duration and len(container.streams) == 1:  # e.g. WebM: duration in the header
        return int(round(container.duration / 1e6 * fps))
    return None


def _open(path: str):
    try:  # PyAV < 19 decodes metadata strictly unless told otherwise; 19 dropped the option
        return av.open(path, metadata_errors="ignore")
    except TypeError:
        return av.open(path)


def probe_video(path, count: str = "demux") -> VideoInfo:
    """Probe one file. Never raises for a bad file: returns a VideoInfo with ``error`` set."""
    if count not in COUNT_MODES:
        raise ValueError(f"count must be one of {COUNT_MODES}, got {count!r}")
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError as err:
        return _bad(path, -1, 0.0, f"cannot read file: {err.strerror or _short(err)}")
    size, mtime = st.st_size, st.st_mtime
    if not os.path.isfile(path):
        return _bad(path, size, mtime, "not a regular file")
    if size == 0:
        return _bad(path, size, mtime, "empty file (0 bytes)")
    try:
        container = _open(path)
    except Exception as err:  # av.error.FFmpegError, UnicodeDecodeError, ...
        return _bad(path, size, mtime, f"not a readable video ({_short(err)})")
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            what = f"only {'/'.join(kinds)} streams" if kinds else "no streams"
            return _bad(path, size, mtime, f"no video stream ({what})")
        stream = container.streams.video[0]
        cc = stream.codec_context
        codec = cc.name if cc is not None and cc.name else ""
        width, height = int(cc.width or 0), int(cc.height or 0)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        info = dict(codec=codec, width=width, height=height)
        if not fps > 0:
            return _bad(path, size, mtime, "no frame rate", **info)
        info["fps"] = fps
        if width <= 0 or height <= 0:
            return _bad(path, size, mtime, "no frame size (width/height unknown)", **info)
        span = 0.0  # seconds covered by the frames found (0: unknown)
        if count == "header" and stream.frames > 0:
            frames = int(stream.frames)
        else:
            try:
                frames, span = (_count_decode if count == "decode" else _count_demux)(
                    container, stream)
            except Exception as err:
                return _bad(path, size, mtime, f"damaged stream ({_short(err)})", **info)
        if frames <= 0:
            return _bad(path, size, mtime, "no frames in the video stream", **info)
        header = _header_seconds(container, stream)
        if span > 0 and header and header - span <= max(2.0 / fps, 0.1 * header) \
                and abs(frames / fps - span) > max(2.0 / fps, 0.1 * span):
            # Variable frame rate: the frames cover the whole announced span, at another
            # average rate than the nominal one. Sampling indexes frames, so use the average.
            fps = frames / span
            info["fps"] = fps
        expected = _header_frames(container, stream, fps)
        if expected is not None and expected - frames > max(2, 0.1 * expected):
            return _bad(path, size, mtime,
                        f"truncated or damaged: the header announces about {expected} frames "
                        f"but only {frames} are present (re-download or re-encode it)", **info)
        return VideoInfo(path=path, frames=frames, fps=fps, width=width, height=height,
                         codec=codec, duration=frames / fps, size=size, mtime=mtime, error=None)
    except Exception as err:  # anything PyAV raises on a damaged header
        return _bad(path, size, mtime, f"not a readable video ({_short(err)})")
    finally:
        try:
            container.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- cache

def _read_cache(cache_path: Path, count: str) -> dict[str, VideoInfo]:
    try:
        with open(cache_path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("video manifest cache %s is unreadable (%s); probing again", cache_path, err)
        return {}
    if (not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION
            or doc.get("count") != count or not isinstance(doc.get("videos"), dict)):
        return {}
    out = {}
    for key, entry in doc["videos"].items():
        try:
            out[key] = VideoInfo.from_json(entry)
        except (TypeError, ValueError):
            continue
    return out


def _write_cache(cache_path: Path, entries: Mapping[str, VideoInfo], count: str) -> None:
    doc = {"version": CACHE_VERSION, "count": count,
           "videos": {k: v.to_json() for k, v in sorted(entries.items())}}
    cache_path = Path(cache_path)
    tmp = None
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=cache_path.name + ".", suffix=".tmp",
                                   dir=cache_path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=0)
            f.write("\n")
        os.replace(tmp, cache_path)
        tmp = None
    except OSError as err:
        log.warning("cannot write video manifest cache %s (%s); continuing without it",
                    cache_path, err)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fresh(info: VideoInfo, size: int, mtime: float) -> bool:
    return info.size == size and info.mtime == mtime


def load_manifest(video_paths: Mapping[str, os.PathLike | str], cache_path: Optional[Path],
                  workers: Optional[int] = None, count: str = "demux",
                  progress: Optional[Callable[[int, int], None]] = None) -> dict[str, VideoInfo]:
    """Metadata for every video id in ``video_paths`` (same order).

    Files whose size and mtime match the cache entry are not probed again; new or changed files
    are probed in a thread pool. The cache (JSON, keyed by absolute path) keeps entries of other
    files that still exist, so several splits can share one cache; it is rewritten (tmp file +
    os.replace) only when something changed. Bad files get ``error`` set, they never raise.
    ``progress(done, total)`` is called as probes finish.
    """
    if count not in COUNT_MODES:
        raise ValueError(f"count must be one of {COUNT_MODES}, got {count!r}")
    cache = _read_cache(Path(cache_path), count) if cache_path is not None else {}
    abspaths = {vid: os.path.abspath(os.fspath(p)) for vid, p in video_paths.items()}

    result: dict[str, VideoInfo] = {}
    todo: dict[str, list[str]] = {}  # abspath -> ids (one file may serve several ids)
    for vid, ap in abspaths.items():
        hit = cache.get(ap)
        # A cached failure is probed again: it may come from the environment (another PyAV,
        # a missing codec) rather than the file, and broken files are few.
        if hit is not None and hit.ok:
            try:
                st = os.stat(ap)
            except OSError:
                st = None
            if st is not None and _fresh(hit, st.st_size, st.st_mtime):
                result[vid] = hit
                continue
        todo.setdefault(ap, []).append(vid)

    changed = False
    if todo:
        n = len(todo)
        if workers is None:
            workers = min(8, (os.cpu_count() or 2) * 2)
        workers = max(1, min(int(workers), n))
        if n > 50:
            log.info("probing %d videos with %d threads", n, workers)
        done = 0
        lock = threading.Lock()

        def job(ap: str) -> tuple[str, VideoInfo]:
            nonlocal done
            info = probe_video(ap, count=count)
            if progress is not None:
                with lock:
                    done += 1
                    progress(done, n)
            return ap, info

        if workers == 1:
            probed = [job(ap) for ap in todo]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
                probed = list(pool.map(job, todo))
        for ap, info in probed:
            for vid in todo[ap]:
                result[vid] = info
            if info.size >= 0:  # a missing file is not cached
                if cache.get(ap) != info:
                    cache[ap] = info
                    changed = True
            elif ap in cache:
                del cache[ap]
                changed = True

    if cache_path is not None:
        stale = [k for k in cache if k not in todo and not os.path.exists(k)]
        for k in stale:
            del cache[k]
        if changed or stale:
            _write_cache(Path(cache_path), cache, count)
    return {vid: result[vid] for vid in video_paths}
