"""Time windows (issue #19's first brick): the frames the original's ``rawvideo_util`` reads for a
``start_time``/``end_time`` and its loaders' int/swap/+1 rules, on drawn cases."""
import math

import numpy as np
import pytest

from clip4clip_dali.data.sampling import (frame_indices, normalise_window,
                                          window_frame_indices)


def original_window_frames(frames, fps, sample_fp, max_frames, slice_framepos, start, end):
    """A literal model of the original's loop (cv2 replaced by 'frame < frames'): the loaders'
    int()/swap/+1 on the caption's times, then video_to_tensor's seconds, then slicing."""
    start_time, end_time = int(start), int(end)
    start_time = start_time if start_time >= 0 else 0
    end_time = end_time if end_time >= 0 else 0
    if start_time > end_time:
        start_time, end_time = end_time, start_time
    elif start_time == end_time:
        end_time += 1
    fps = int(fps)
    total = (frames + fps - 1) // fps
    start_sec, end_sec = start_time, end_time if end_time <= total else total
    interval = max(fps // sample_fp, 1)
    inds = list(np.arange(0, fps, interval))[:sample_fp]
    out, ret = [], True
    for sec in np.arange(start_sec, end_sec + 1):
        if not ret:
            break
        for ind in inds:
            f = int(sec * fps) + int(ind)
            ret = f < frames
            if not ret:
                break
            out.append(f)
    if len(out) > max_frames:
        if slice_framepos == 0:
            out = out[:max_frames]
        elif slice_framepos == 1:
            out = out[-max_frames:]
        else:
            out = [out[i] for i in np.linspace(0, len(out) - 1, num=max_frames, dtype=int)]
    return out


def test_window_rules_match_the_original_on_drawn_cases():
    rng = np.random.default_rng(19)
    checked = 0
    for _ in range(3000):
        fps = float(rng.choice([5, 15, 24, 25, 29.97, 30, 59.94, 60]))
        frames = int(rng.integers(1, 90 * 60))
        start = float(rng.uniform(-5, frames / fps + 10))
        end = float(rng.uniform(-5, frames / fps + 10))
        sample_fp, max_frames = int(rng.integers(1, 4)), int(rng.choice([12, 32, 64]))
        slice_framepos = int(rng.integers(0, 3))
        want = original_window_frames(frames, fps, sample_fp, max_frames, slice_framepos,
                                      start, end)
        got = frame_indices(frames, fps, sample_fp, max_frames, slice_framepos,
                            normalise_window(start, end))
        assert got.tolist() == want, (frames, fps, start, end, sample_fp, max_frames)
        checked += bool(want)
    assert checked > 2000  # most drawn windows hold frames


def test_window_none_is_the_whole_clip():
    assert normalise_window(None, None) is None
    for frames, fps in ((300, 29.97), (91, 15.0), (600, 30)):
        assert (frame_indices(frames, fps, 1, 12, 2, None).tolist()
                == frame_indices(frames, fps, 1, 12, 2).tolist())


@pytest.mark.parametrize("start,end,expected", [
    (3.7, 9.2, (3, 9)),       # int() truncates
    (9, 3, (3, 9)),           # inverted: swapped
    (4, 4, (4, 5)),           # empty: one second wider
    (-2.5, 1, (0, 1)),        # negative: 0
    (0, 31, (0, 31)),         # DiDeMo's paragraph window
])
def test_normalise_window(start, end, expected):
    assert normalise_window(start, end) == expected


@pytest.mark.parametrize("start,end", [(None, 3), (1, math.nan), (math.inf, 2)])
def test_normalise_window_refuses_missing_or_infinite_times(start, end):
    with pytest.raises(ValueError, match="finite"):
        normalise_window(start, end)


def test_window_past_the_end_samples_the_last_second_with_a_note():
    # 10 s at 30 fps; a window at 40-50 s gives the original nothing (NaN downstream)
    assert frame_indices(300, 30, 1, 12, 2, (40, 50)).tolist() == []
    idx, note = window_frame_indices(300, 30, 1, 12, 2, (40, 50))
    assert idx.tolist() == [270] and "past the video's end" in note and "40-50" in note
    idx, note = window_frame_indices(300, 30, 1, 12, 2, (2, 4))
    assert idx.tolist() == [60, 90, 120] and note is None
