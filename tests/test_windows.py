"""Time windows through the split and every loader: a (video, window) pair is an entry of its
own, and DALI, torchcodec, the reference loader and the frame cache serve the frames
``sampling.window_frame_indices`` picks; a window past the end samples the last second with a
warning naming the entry (never an empty, NaN-making clip); JSON Lines/CSV start/end checked."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.loaders.dali_loader import DaliLoader
from clip4clip_dali.data.loaders.frame_cache import CachedLoader
from clip4clip_dali.data.jsonl import load_split
from clip4clip_dali.data.presampled import split_frames
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from clip4clip_dali.data.sampling import window_frame_indices
from clip4clip_dali.data.split import DatasetError
from clip4clip_dali.data.loaders.torchcodec_loader import TorchcodecLoader
from dali_fixtures import smooth_clip
from layout_fixtures import write_lines
from test_dali_loader import assert_same_batches

# A 7-second clip at 10 fps; captions for the whole clip and for moments of it.
MOMENTS = [(None, None, "the whole long clip"), (1, 3.7, "seconds one to three"),
           (5.2, 5.9, "an empty window widened"), (9, 12, "a window past the end"),
           (1.0, 3.2, "seconds one to three again")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    smooth_clip(root / "long.webm", frames=70, fps=10, seed=3)
    smooth_clip(root / "short.avi", frames=20, fps=10, codec="mjpeg", seed=4)
    recs = [{"video": "long.webm", "caption": c, "split": "test"}
            | ({} if s is None else {"start": s, "end": e}) for s, e, c in MOMENTS]
    recs.append({"video": "short.avi", "caption": "a short clip", "split": "test"})
    return write_lines(root / "moments.jsonl", recs)


def cfg(path, **kw) -> DataConfig:
    return DataConfig(**{**dict(dataset="jsonl", data_path=str(path), max_frames=4,
                                image_resolution=32, dali_threads=1, slice_framepos=2), **kw})


def test_each_video_window_pair_is_an_entry(dataset):
    split = load_split(cfg(dataset), "test")
    assert split.video_ids == ["long.webm", "long.webm@1-3", "long.webm@5-6",
                               "long.webm@9-12", "short.avi"]
    assert split.video_window == [None, (1, 3), (5, 6), (9, 12), None]
    assert list(split.caption_video) == [0, 1, 2, 3, 1, 4]  # 3.2 s ends in second 3 too
    assert split.num_files == 2


def test_evaluation_and_stats_count_moments_and_files(dataset):
    from clip4clip_dali.data.stats import dataset_stats
    from clip4clip_dali.retrieval import window_counts

    split = load_split(cfg(dataset), "test")
    assert window_counts(split, range(5)) == {"moments": 3, "video_files": 2}
    assert window_counts(split, [0, 4]) == {"moments": 0, "video_files": 2}
    stats = dataset_stats(cfg(dataset), probe=False)["test"]
    assert stats["entries"] == 5 and stats["captions"] == 6


def test_every_loader_serves_the_window_frames(dataset, caplog):
    c = cfg(dataset)
    split = load_split(c, "test")
    want = [window_frame_indices(i.frames, i.fps, 1, 4, 2, split.window_of(v))[0]
            for v, i in enumerate(split.video_info)]
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        got, _ = split_frames(split, c)
    assert "long.webm@9-12" in caplog.text and "past the video's end" in caplog.text
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    assert list(want[1]) == [10, 20, 30] and list(want[3]) == [60]
    ref = list(ReferenceLoader(split, c, "eval", 5, num_workers=0))
    assert [int(m.sum()) for m in ref[0]["video_mask"]] == [len(w) for w in want]
    assert_same_batches(list(DaliLoader(split, c, "eval", 5)), ref)
    assert_same_batches(list(TorchcodecLoader(split, c, "eval", 5)), ref)
    cached = CachedLoader(split, c, "eval", 5,
                          lambda data, rank, ranks: ReferenceLoader(split, data, "eval", 5,
                                                                    num_workers=0))
    assert_same_batches(list(cached), ref)
    # the windows are other frames than the whole clip's
    assert float((ref[0]["video"][1, :3] - ref[0]["video"][0, :3]).abs().mean()) > 0.05


def test_training_samples_each_caption_with_its_window(dataset):
    c = cfg(dataset, train_split="test")
    split = load_split(c, "test")
    batches = list(DaliLoader(split, c, "train", 6, seed=1))
    seen = np.concatenate([b["video_index"].numpy() for b in batches])
    assert sorted(seen) == sorted(split.caption_video)
    assert all(b["video_mask"].sum(1).min() > 0 for b in batches)


@pytest.mark.parametrize("line,match", [
    ({"start": 1}, r"start without end"),
    ({"start": "soon", "end": 2}, r"start is 'soon'"),
    ({"start": 4, "end": 2}, r"end 2 s is before start 4 s"),
    ({"start": -1, "end": 2}, r"start is -1"),
    ({"start": 1, "end": float("inf")}, r"end is inf"),
    ({"start": True, "end": 2}, r"start is True"),
])
def test_bad_times_are_refused_with_the_line(tmp_path, line, match):
    (tmp_path / "a.webm").write_bytes(b"")
    path = write_lines(tmp_path / "d.jsonl", [{"video": "a.webm", "caption": "ok"},
                                              {"video": "a.webm", "caption": "x", **line}])
    with pytest.raises(DatasetError, match=r"(?s)REFUSED.*line 2: " + match):
        load_split(cfg(path), "train", probe=False)


def test_csv_times_are_read(tmp_path):
    smooth_clip(tmp_path / "a.webm", frames=30, fps=10)
    path = write_lines(tmp_path / "d.csv", [
        {"video": "a.webm", "caption": "all", "start": "", "end": ""},
        {"video": "a.webm", "caption": "part", "start": "0.5", "end": "2"}])
    split = load_split(cfg(path), "train")
    assert split.video_window == [None, (0, 2)]


def test_presampled_set_serves_only_windows_that_are_the_whole_video(dataset, tmp_path,
                                                                    monkeypatch):
    from clip4clip_dali.data import presampled
    from clip4clip_dali.errors import UserError

    # (a real record is tested in test_presampled.py; here the windows against its sources)
    record = {"long": {"frames": 4, "source_frames": 70, "source_fps": 10.0},
              "short": {"frames": 3, "source_frames": 20, "source_fps": 10.0}}
    pset = SimpleNamespace(root=dataset.parent, videos=record,
                           sampling=presampled.Sampling(1, 4, 2, 32))
    monkeypatch.setattr(presampled, "check_sampling", lambda data_cfg: pset)
    c = cfg(dataset)
    with pytest.raises(UserError, match=r"3 of its 5 entries.*long.webm@1-3: 1-3 s.*"
                                        r"pre-sampled from whole"):
        split_frames(load_split(c, "test"), c)
    whole = write_lines(dataset.parent / "whole.jsonl", [
        {"video": "long.webm", "caption": "all of it", "start": 0, "end": 31},
        {"video": "short.avi", "caption": "all of that", "start": 0, "end": 2.5}])
    frames, is_presampled = split_frames(load_split(cfg(whole), "train"), cfg(whole))
    assert is_presampled and len(frames) == 2  # (sizes differ from the record: warned, left out)


def test_windows_of_a_real_clip_through_torchcodec_and_the_reference(tmp_path):
    """A real H.264 clip (mmaction2_test.mp4, 10 s at 30 fps; DALI's CPU decoder cannot read
    H.264): windows inside it, an empty one and one past its end."""
    from conftest import require_realdata

    src = require_realdata() / "clips" / "mmaction2_test.mp4"
    path = write_lines(tmp_path / "real.jsonl", [
        {"video": str(src), "caption": c, "split": "test", "start": s, "end": e}
        for s, e, c in [(2, 5.5, "two to five"), (3, 3, "second three"), (12, 20, "after")]])
    c = cfg(path)
    split = load_split(c, "test")
    assert split.video_window == [(2, 5), (3, 4), (12, 20)]
    ref = list(ReferenceLoader(split, c, "eval", 3, num_workers=0))
    # seconds 2..5 at 30 fps, one frame a second, cut to 4 by linspace; 3..4; the last second
    assert [int(m.sum()) for m in ref[0]["video_mask"]] == [4, 2, 1]
    assert_same_batches(list(TorchcodecLoader(split, c, "eval", 3)), ref)
