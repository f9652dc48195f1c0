"""Timed passes over a loader: warm-up, then windows of whole passes; steady state apart.

Throughput is the steady state: frames delivered after the first batch of a pass, over at
least ``min_batches`` batches. The first batch (pipeline build, worker start, the first
decodes) is start-up and reported on its own. A pass with fewer steady batches is latency, not
throughput: its row says so and no target uses it.
"""
from __future__ import annotations

import time

from .common import stats

MIN_STEADY_BATCHES = 30


def count_pass(batches, sync) -> dict:
    """Iterate one pass of (video, mask) pairs: totals, and the same after the first batch."""
    t0 = time.perf_counter()
    frames = clips = n = 0
    first = None
    for video, mask in batches:
        frames += int(mask.sum())
        clips += video.shape[0]
        n += 1
        if first is None:
            sync()
            first = (time.perf_counter() - t0, frames, clips)
    sync()
    total = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("the loader yielded no batch")
    return {"t": total, "f": frames, "c": clips, "b": n, "t1": total - first[0],
            "f1": frames - first[1], "c1": clips - first[2], "first_batch_s": first[0]}


def warm_up(run_pass) -> float:
    """One untimed pass (pipeline build, worker start, caches); returns its seconds."""
    t0 = time.perf_counter()
    run_pass()
    return time.perf_counter() - t0


def window(run_pass, min_seconds: float, deadline: float) -> dict:
    """Whole passes until ``min_seconds`` of them (or ``deadline``); their sums."""
    acc = {"t": 0.0, "f": 0, "c": 0, "b": 0, "t1": 0.0, "f1": 0, "c1": 0, "passes": 0,
           "first_batch_s": 0.0}
    while True:
        for k, v in run_pass().items():
            acc[k] += v
        acc["passes"] += 1
        if acc["t"] >= min_seconds or time.perf_counter() > deadline:
            return acc


def time_passes(run_pass, repeats: int, min_seconds: float, budget_s: float):
    """Warm-up pass, then ``repeats`` timed windows of whole passes (each at least
    ``min_seconds``). Returns (the windows' sums of run_pass's dicts, warm-up seconds)."""
    warm = warm_up(run_pass)
    deadline = time.perf_counter() + budget_s
    windows = []
    for _ in range(repeats):
        windows.append(window(run_pass, min_seconds, deadline))
        if time.perf_counter() > deadline:
            break
    return windows, warm


def interleave(run_passes: list, repeats: int, min_seconds: float, budget_s: float):
    """Like ``time_passes`` for several loaders at once, their windows taken in turn (on a
    shared machine a load change then falls on all of them alike, not on one row)."""
    warm = [warm_up(r) for r in run_passes]
    deadline = time.perf_counter() + budget_s * len(run_passes)
    windows: list[list] = [[] for _ in run_passes]
    for _ in range(repeats):
        for w, r in zip(windows, run_passes):
            w.append(window(r, min_seconds, deadline))
        if time.perf_counter() > deadline:
            break
    return list(zip(windows, warm))


def summarise(windows: list[dict], min_batches: int = MIN_STEADY_BATCHES) -> dict:
    """The row's numbers from timed windows: steady frames/s (valid only over >= min_batches
    batches after the first of each pass), whole-pass frames/s, start-up (first batch) apart."""
    w0 = windows[0]
    batches = round(w0["b"] / w0["passes"])
    out = {"frames_per_pass": round(w0["f"] / w0["passes"]), "batches_per_pass": batches,
           "steady_batches_per_pass": batches - 1, "min_steady_batches": min_batches,
           "frames_per_s": stats(w["f"] / w["t"] for w in windows),
           "clips_per_s": stats(w["c"] / w["t"] for w in windows),
           "first_batch_s": stats(w["first_batch_s"] / w["passes"] for w in windows),
           "repeats": len(windows), "passes": sum(w["passes"] for w in windows),
           "timed_s": sum(w["t"] for w in windows)}
    if all(w["f1"] > 0 and w["t1"] > 0 for w in windows):
        out["steady_frames_per_s"] = stats(w["f1"] / w["t1"] for w in windows)
        out["steady_clips_per_s"] = stats(w["c1"] / w["t1"] for w in windows)
    else:
        out["steady_frames_per_s"] = None
    out["steady_valid"] = out["steady_frames_per_s"] is not None and batches - 1 >= min_batches
    if not out["steady_valid"]:
        out["steady_note"] = (f"{batches} batch(es) a pass, {max(batches - 1, 0)} after the first "
                              f"(< {min_batches}): latency, not throughput; not used for a target")
    return out
