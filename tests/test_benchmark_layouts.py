"""DiDeMo, ActivityNet Captions and LSMDC from fixtures in their exact original formats: what
the readers make of them, bad files refused with the file and the fix, and one epoch plus an
evaluation on CPU each (DALI on VP9/MJPEG clips, tiny model)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench_fixtures import once_a_session, run_queue
from benchmark_layouts import (DIDEMO_SPLITS, LSMDC_FILES, write_activitynet, write_didemo,
                               write_lsmdc)
from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.dataset import load_split
from clip4clip_dali.data.split import DatasetError
from layout_fixtures import caption
from test_datasets_train import args, check_run
from test_train import losses

WRITERS = {"didemo": write_didemo, "activitynet": write_activitynet, "lsmdc": write_lsmdc}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: write(root / name) for name, write in WRITERS.items()}


def cfg(layouts, name, **kw) -> DataConfig:
    data, videos = layouts[name]
    return DataConfig(dataset=name, data_path=str(data), features_path=str(videos), **kw)


def test_didemo_one_paragraph_per_video_in_0_31_s(layouts):
    split = load_split(cfg(layouts, "didemo"), "test")
    assert split.video_ids == [p.name for p in split.video_paths]  # listed with extension
    assert [p.stem for p in split.video_paths] == DIDEMO_SPLITS["test"]
    assert split.captions == [" ".join(caption(v, j) for j in range(3))
                              for v in DIDEMO_SPLITS["test"]]
    assert split.video_window == [(0, 31)] * 3
    assert list(split.caption_video) == [0, 1, 2]


def test_didemo_list_names_another_extension_finds_the_prepared_copy(layouts, tmp_path):
    data, videos = layouts["didemo"]
    (tmp_path / "test_list.txt").write_text("video5.mov\n")
    items = json.loads((data / "test_data.json").read_text())
    for it in items:
        it["video"] = it["video"].rsplit(".", 1)[0] + ".mov"
    (tmp_path / "test_data.json").write_text(json.dumps(items))
    c = DataConfig(dataset="didemo", data_path=str(tmp_path), features_path=str(videos))
    split = load_split(c, "test", probe=False)
    assert split.video_ids == ["video5.mov"] and split.video_paths[0].name == "video5.avi"


def test_activitynet_paragraphs_windows_to_ceil_duration_and_test_is_val(layouts):
    c = cfg(layouts, "activitynet")
    val, test = load_split(c, "val"), load_split(c, "test")
    assert val.video_ids == test.video_ids == ["video5", "video6", "video7"]
    assert val.captions[0] == f"{caption('video5', 0)} {caption('video5', 1)}"
    # durations 2 - 0.4, 3 - 0.4, 2 - 0.4 s: windows to their ceiling, as int(ceil(float()))
    assert val.video_window == [(0, 2), (0, 3), (0, 2)]
    train = load_split(c, "train", probe=False)
    assert train.num_videos == 5 and len(train.captions) == 5


def test_lsmdc_tab_lines_a_sample_per_line_quotes_kept(layouts):
    c = cfg(layouts, "lsmdc")
    train = load_split(c, "train", probe=False)
    assert train.num_videos == 5 and len(train.captions) == 10
    assert train.captions[1] == f'{caption("video0", 1)} "quoted"'
    assert train.video_window is None
    assert load_split(c, "test", probe=False).video_ids == ["video5", "video6", "video7"]


def test_stats_and_prepare_see_every_layout(layouts):
    """``data.stats`` per split and the videos ``prepare_msvd.py --config`` copies (output
    names without the listed extension, so a DiDeMo copy 'video0.webm' is found again)."""
    from clip4clip_dali.data.dataset import dataset_videos, output_names
    from clip4clip_dali.data.stats import dataset_stats

    for name in WRITERS:
        stats = dataset_stats(cfg(layouts, name), probe=False)
        assert set(stats) == {"train", "val", "test"}
        assert stats["test"]["videos_found"] == 3 and stats["test"]["videos_missing"] == 0
        assert ("entries" in stats["test"]) == (name != "lsmdc")
        videos = dataset_videos(cfg(layouts, name))
        assert len(videos) == 8
        assert sorted(output_names(videos).values()) == [f"video{k}" for k in range(8)]


@pytest.mark.parametrize("name,file,text,match", [
    ("lsmdc", LSMDC_FILES["val"], "video5\t1\t2\t3\tsentence\n", r"line 1: 5 tab-separated"),
    ("didemo", "val_data.json", '{"video": "x"}', r"val_data.json holds a dict"),
    ("didemo", "val_data.json", '[{"video": "x", "description": 3}]', r"description is int"),
    ("activitynet", "val_1.json", '{"v_a": {"duration": "long", "sentences": ["a"]}}',
     r"'duration' is 'long'"),
    ("activitynet", "val_1.json", '{"v_a": {"duration": 3, "sentences": "a"}}',
     r"'sentences' is not a list"),
    ("activitynet", "val_ids.json", '{"v_a": 1}', r"val_ids.json must be a JSON list"),
])
def test_bad_annotation_files_name_the_file_and_the_fix(layouts, tmp_path, name, file, text,
                                                        match):
    data, videos = layouts[name]
    for f in data.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / file).write_text(text)
    c = DataConfig(dataset=name, data_path=str(tmp_path), features_path=str(videos))
    with pytest.raises(DatasetError, match=match):
        load_split(c, "val", probe=False)


def test_missing_annotation_file_names_the_layout(tmp_path):
    c = DataConfig(dataset="activitynet", data_path=str(tmp_path), features_path=str(tmp_path))
    with pytest.raises(DatasetError, match=r"train_ids.json does not exist.*ActivityNet"):
        load_split(c, "train")


@pytest.fixture(scope="module")
def epochs(layouts, tmp_path_factory) -> dict[str, tuple[Path, int, str]]:
    """One epoch and an evaluation per layout, the three runs in one process (run_queue):
    {name: (output folder, exit status, log)}."""
    def make(root: Path) -> dict:
        commands = {}
        for name, (data, videos) in layouts.items():
            commands[name] = [sys.executable, "-m", "clip4clip_dali.train", *args(
                root / name, f"data.dataset={name}", f"data.data_path={data}",
                f"data.features_path={videos}", "data.loader=dali", "data.frame_cache=false",
                "data.max_words=16", "eval.index_test_split=false")]
        return {name: [str(root / name), *r] for name, r in run_queue(root, commands).items()}

    runs = once_a_session(tmp_path_factory, "layout_runs", make)
    return {name: (Path(out), rc, log) for name, (out, rc, log) in runs.items()}


@pytest.mark.parametrize("name", list(WRITERS))
def test_one_epoch_and_evaluation(epochs, name):
    out, rc, log = epochs[name]
    assert rc == 0, log[-5000:]
    assert losses(out) and "data loader for train (train): dali" in log, log[-3000:]
    res = check_run(out, "test")
    assert res["videos"] == 3 and res["captions"] == 3
    if name == "lsmdc":
        assert "moments" not in res
    else:  # the paragraph sets carry a window: one per video
        assert res["moments"] == res["video_files"] == 3
