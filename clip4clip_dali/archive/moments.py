"""Moment search: each video indexed as overlapping time windows, and a video's hits merged.

``index --window W --stride S`` cuts every video into windows ``[0, W], [S, S+W], ...`` (whole
seconds, the last one clipped to the video's end; a video no longer than ``W`` is one window)
and encodes each with the project's window sampling (``data.sampling.frame_indices`` with
``window=(start, start+W)``: the frames training sees for a caption with that start and end).
``search`` ranks windows; the hits of one video whose ranges touch or overlap become one
result covering them all, scored by the best of them.
"""
from __future__ import annotations

import math

from ..errors import UserError


def check_windowing(window: int | None, stride: int | None) -> dict | None:
    """``{"window": W, "stride": S}`` from the ``index`` flags, or None for whole videos.
    ``stride`` defaults to half the window (rounded up)."""
    if window is None:
        if stride is not None:
            raise UserError(f"--stride {stride} needs --window SECONDS: the stride is the step "
                            f"between the starts of windows of that length.")
        return None
    if window < 1:
        raise UserError(f"--window must be a whole number of seconds, at least 1, got {window}.")
    if stride is None:
        stride = (window + 1) // 2
    if stride < 1:
        raise UserError(f"--stride must be a whole number of seconds, at least 1, got {stride}.")
    if stride > window:
        raise UserError(f"--stride {stride} is longer than --window {window}: the "
                        f"{stride - window} s between two windows would never be indexed, so a "
                        f"moment there could not be found. Pass --stride {window} or less "
                        f"(e.g. --stride {(window + 1) // 2} for windows overlapping by half).")
    return {"window": int(window), "stride": int(stride)}


def whole_seconds(flag: str):
    """An argparse type for ``flag``: a whole number of seconds, with a message saying why."""
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number of seconds; the model samples time windows in "
                f"whole seconds (as the original CLIP4Clip casts a caption's start and end), "
                f"e.g. {flag} {max(1, round(float(text))) if _is_number(text) else 10}") from None
    return parse


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def describe(windowing: dict | None) -> str:
    if not windowing:
        return "whole videos (no --window)"
    return f"{windowing['window']} s windows every {windowing['stride']} s " \
           f"(--window {windowing['window']} --stride {windowing['stride']})"


def video_windows(duration: float, window: int, stride: int) -> list[tuple[int, float]]:
    """(start, end) in seconds of each window of a video lasting ``duration`` seconds: starts
    every ``stride`` s until a window reaches the end, which is clipped to it."""
    out = []
    start = 0
    while True:
        out.append((start, round(min(start + window, max(duration, 0.0)), 3)))
        if start + window >= duration:
            return out
        start += stride


def merge_hits(hits: list[dict]) -> list[dict]:
    """Hits (best first, each with ``path``, ``score``, ``start``, ``end``) with those of one
    video whose ranges touch or overlap merged into one: the best hit's fields, its range
    widened to cover the group, ``windows`` the number merged. Best first, ranks renumbered.
    Hits without a range (whole videos) pass through."""
    by_video: dict[str, list[dict]] = {}
    for h in hits:
        by_video.setdefault(h["path"], []).append(h)
    merged = []
    for group in by_video.values():
        if group[0].get("start") is None:
            merged.extend(group)
            continue
        group = sorted(group, key=lambda h: (h["start"], h["end"]))
        cluster = [group[0]]
        for h in group[1:]:
            if h["start"] <= max(c["end"] for c in cluster):
                cluster.append(h)
            else:
                merged.append(_one(cluster))
                cluster = [h]
        merged.append(_one(cluster))
    merged.sort(key=lambda h: -h["score"])
    for i, h in enumerate(merged):
        h["rank"] = i + 1
    return merged


def _one(cluster: list[dict]) -> dict:
    best = dict(max(cluster, key=lambda h: h["score"]))
    best["start"] = min(h["start"] for h in cluster)
    best["end"] = max(h["end"] for h in cluster)
    best["windows"] = len(cluster)
    return best


def candidates_for(top_k: int, windowing: dict) -> int:
    """How many windows to rank first for ``top_k`` merged results: each result may merge
    about ``window / stride`` windows on each side of its best."""
    return top_k * (2 * math.ceil(windowing["window"] / windowing["stride"]) + 1)
