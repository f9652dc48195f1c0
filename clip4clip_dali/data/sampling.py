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
                  slice_framepos: int) -> np.ndarray:
    """Sorted int64 indices of the frames CLIP4Clip samples from a clip of ``num_frames`` frames.

    An empty clip gives an empty array. A frame rate below 1 is treated as 1 (every frame is
    more than a second apart, so every frame is a sample); the original divides by zero there.
    When ``feature_framerate`` exceeds the integer frame rate, every frame of each second is
    taken (the original asserts).
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
    seconds = np.arange(0, duration + 1)
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
