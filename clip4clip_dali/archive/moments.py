"""Moment search: each video indexed as overlapping time windows, and a video's hits merged.

``index --window W --stride S`` cuts every video into windows ``[0, W], [S, S+W], ...`` (whole
seconds, the last one clipped to the video's end; a video no longer than ``W`` is one window)
and encodes each with the project's window sampling (``data.sampling.frame_indices`` with
``window=(start, start+W)``: the frames training sees for a caption with that start and end).
``search`` ranks windows; among the ``top_k`` best, those of one video whose ranges touch or
overlap become one result covering them, scored by the best (``merge_hits``); further windows
fill the list with other moments.
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


def merge_hits(hits: list[dict], top_k: int | None = None) -> list[dict]:
    """Results from ranked windows (best first, each with ``path``, ``score``, ``start``,
    ``end``): among the first ``top_k`` windows (all with None), those of one video whose ranges
    touch or overlap become one result covering them (the best window's fields, ``windows`` the
    number merged). A later window only fills the list: it starts a result when it touches none
    of its video's results and is dropped when it does (a moment already listed is neither
    widened by weaker windows nor listed twice). At most ``top_k`` results, best first, ranks
    renumbered. Hits without a range (whole videos) pass through."""
    results: list[dict] = []
    by_video: dict[str, list[dict]] = {}
    for n, h in enumerate(hits):
        if top_k is not None and n >= top_k and len(results) >= top_k:
            break
        if h.get("start") is None:
            results.append(dict(h))
            continue
        mine = by_video.setdefault(h["path"], [])
        touching = [r for r in mine if h["start"] <= r["end"] and h["end"] >= r["start"]]
        if touching:
            if top_k is None or n < top_k:
                keep = touching[0]  # the best of them: results are made best first
                for r in touching[1:]:  # a window that bridges two results joins them
                    keep["windows"] += r["windows"]
                    mine.remove(r)
                    results.remove(r)
                keep["start"] = min([keep["start"], h["start"]] + [r["start"] for r in touching])
                keep["end"] = max([keep["end"], h["end"]] + [r["end"] for r in touching])
                keep["windows"] += 1
            continue
        if top_k is None or len(results) < top_k:
            r = dict(h, windows=1)
            mine.append(r)
            results.append(r)
    for i, r in enumerate(results):
        r["rank"] = i + 1
    return results
