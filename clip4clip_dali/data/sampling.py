"""CLIP4Clip's frame sampling: the single source of truth for which frames a clip contributes.

The original (dataloaders/rawvideo_util.py + dataloader_msvd_retrieval.py) reads, for every
second ``sec`` in ``0..ceil(frames/fps)``, the frames ``sec*fps + offset`` for the first
``feature_framerate`` offsets of ``range(0, fps, fps // feature_framerate)``, stopping at the
first frame that does not exist; ``fps`` is truncated to an integer first (29.97 -> 29). When
more than ``max_frames`` frames result, ``slice_framepos`` keeps the head (0), the tail (1) or
``np.linspace(0, n-1, max_frames)`` of them (2).
"""
from __future__ import annotations

import math

import numpy as np


def frame_indices(num_frames: int, fps: float, feature_framerate: int, max_frames: int,
                  slice_framepos: int, window: tuple[int, int] | None = None) -> np.ndarray:
    """Sorted int64 indices of the frames CLIP4Clip samples from a clip of ``num_frames`` frames.

    An empty clip gives an empty array. A frame rate below 1 is treated as 1 (every frame is
    more than a second apart, so every frame is a sample); the original divides by zero there.
    When ``feature_framerate`` exceeds the integer frame rate, every frame of each second is
    taken (the original asserts).

    ``window`` = ``(start_sec, end_sec)``, integer seconds as ``normalise_window`` makes them,
    samples only the seconds ``start_sec..min(end_sec, duration)`` (both ends included, as the
    original's ``rawvideo_util`` does); ``None`` is the whole clip. A window that starts past
    the clip's end gives an empty array: ``window_frame_indices`` says what to do then.
    """
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"frame rate must be a positive number, got {fps!r}")
    if feature_framerate < 1 or max_frames < 1:
        raise ValueError("feature_framerate and max_frames must be at least 1")
    if slice_framepos not in (0, 1, 2):
        raise ValueError(f"slice_framepos must be 0, 1 or 2, got {slice_framepos!r}")
    num_frames = int(num_frames)
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)

    ifps = max(int(fps), 1)
    interval = max(ifps // feature_framerate, 1)
    offsets = np.arange(0, ifps, interval)[:feature_framerate]
    duration = (num_frames + ifps - 1) // ifps
    first, last = (0, duration) if window is None else (window[0], min(window[1], duration))
    seconds = np.arange(first, last + 1)
    candidates = (seconds[:, None] * ifps + offsets[None, :]).reshape(-1)
    # The original stops at the first missing frame; candidates increase, so that is a cut.
    stop = np.searchsorted(candidates, num_frames)
    indices = candidates[:stop].astype(np.int64)

    if len(indices) > max_frames:
        if slice_framepos == 0:
            indices = indices[:max_frames]
        elif slice_framepos == 1:
            indices = indices[-max_frames:]
        else:
            keep = np.linspace(0, len(indices) - 1, num=max_frames, dtype=int)
            indices = indices[keep]
    return indices


def normalise_window(start: float | None, end: float | None) -> tuple[int, int] | None:
    """A caption's time window in whole seconds, by the original's rules (its DiDeMo and
    ActivityNet loaders): each end cast with ``int()``, negatives made 0, an inverted window
    swapped, an empty one (start == end) widened by a second. ``None`` for no window."""
    if start is None and end is None:
        return None
    for name, value in (("start", start), ("end", end)):
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"a time window needs a finite {name} in seconds, got {value!r}")
    s, e = max(int(float(start)), 0), max(int(float(end)), 0)
    if s > e:
        s, e = e, s
    elif s == e:
        e += 1
    return s, e


def window_frame_indices(num_frames: int, fps: float, feature_framerate: int, max_frames: int,
                         slice_framepos: int, window: tuple[int, int] | None
                         ) -> tuple[np.ndarray, str | None]:
    """``frame_indices`` inside ``window``, never empty for a non-empty clip.

    A window past the clip's end gives the original no frames, an all-zero mask and so a NaN
    video feature. Here it samples the clip's last second instead and returns a note saying so
    (the caller logs it, naming the video); the note is None when the window was served as is.
    """
    idx = frame_indices(num_frames, fps, feature_framerate, max_frames, slice_framepos, window)
    if len(idx) or num_frames <= 0 or window is None:
        return idx, None
    last = (int(num_frames) - 1) // max(int(fps), 1)
    idx = frame_indices(num_frames, fps, feature_framerate, max_frames, slice_framepos,
                        (last, last))
    seconds = (int(num_frames) + max(int(fps), 1) - 1) // max(int(fps), 1)
    return idx, (f"time window {window[0]}-{window[1]} s starts past the video's end "
                 f"({seconds} s); sampled its last second instead")


def clip_frame_indices(info, data_cfg) -> np.ndarray:
    """``frame_indices`` for a manifest ``VideoInfo`` under a ``DataConfig``."""
    return frame_indices(info.frames, info.fps, data_cfg.feature_framerate,
                         data_cfg.max_frames, data_cfg.slice_framepos)


def frame_order_permutation(n: int, order: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Permutation of the ``n`` decoded frames: 0 keeps, 1 reverses, 2 shuffles (with ``rng``)."""
    if order == 0:
        return np.arange(n)
    if order == 1:
        return np.arange(n - 1, -1, -1)
    if order == 2:
        return (rng or np.random.default_rng()).permutation(n)
    raise ValueError(f"frame_order must be 0, 1 or 2, got {order!r}")
