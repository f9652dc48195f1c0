"""A team's own clips: JSON Lines and CSV, one line per caption; the seeded split; the report
of broken inputs (refused or skipped); the spreadsheet converter; the stats command."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.dataset import DatasetError, load_split, split_names
from clip4clip_dali.data.jsonl import convert_spreadsheet
from clip4clip_dali.data.loaders.sharding import train_sample_count
from conftest import REPO
from layout_fixtures import caption, own_clips_records, write_clips, write_lines

SPLITS = {"video0": "train", "video1": "train", "video2": "train", "video3": "train",
          "video4": "val", "video5": "val", "video6": "test", "video7": "test"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """8 clips in two sub-folders of ``root`` (VP9/WebM and MJPEG/AVI)."""
    root = tmp_path_factory.mktemp("own")
    a = write_clips(root / "clips" / "a", ["video0", "video1", "video2", "video3"])
    b = write_clips(root / "clips" / "b", ["video4", "video5", "video6", "video7"])
    return root, {**a, **b}


def cfg(path, **kw) -> DataConfig:
    return DataConfig(**{**dict(dataset="jsonl", data_path=str(path), max_frames=4,
                                image_resolution=32, dali_threads=1), **kw})


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
def test_lines_with_splits(clips, tmp_path, ext):
    root, files = clips
    path = write_lines(root / f"ds{tmp_path.name}{ext}", own_clips_records(files, root, SPLITS))
    c = cfg(path)
    assert split_names(c) == ["train", "val", "test"]
    train = load_split(c, "train")
    assert train.video_ids == ["clips/a/video0.webm", "clips/a/video1.avi",
                               "clips/a/video2.webm", "clips/a/video3.avi"]
    assert train.captions[:2] == [caption("video0", 0), caption("video0", 1)]
    assert train_sample_count(train) == 8 and not train.caption_per_epoch
    test = load_split(c, "test")
    assert test.caption_video.tolist() == [0, 0, 1, 1]
    assert {i.codec for i in test.video_info} == {"vp9", "mjpeg"}
    assert (root / ".clip4clip_manifest.json").is_file()  # probe cache beside the file


def test_csv_from_a_spreadsheet_with_empty_unnamed_columns(clips):
    root, files = clips
    path = root / "sheet_export.csv"
    path.write_text("video,caption,split,,\n"
                    f"{files['video0'].relative_to(root).as_posix()},a caption,val,,\n")
    assert load_split(cfg(path), "val", probe=False).captions == ["a caption"]


def test_video_id_names_the_video_and_one_video_serves_several_lines(clips, tmp_path):
    root, files = clips
    rel = files["video0"].relative_to(root).as_posix()
    recs = [{"video": rel, "caption": "first", "video_id": "cat"},
            {"video": f"./{rel}", "caption": "second", "video_id": "cat", "split": "train"},
            {"video": files["video1"].relative_to(root).as_posix(), "caption": "third",
             "split": "train"}]
    split = load_split(cfg(write_lines(root / "ids.jsonl", recs)), "train")
    assert split.video_ids == ["cat", "clips/a/video1.avi"]
    assert split.captions == ["first", "second", "third"]


def test_absent_split_is_a_seeded_split_by_video(clips, tmp_path):
    root, files = clips
    path = write_lines(root / "nosplit.jsonl", own_clips_records(files, root, None, 3))
    c = cfg(path, jsonl_val_fraction=0.25, jsonl_test_fraction=0.25)
    parts = {s: load_split(c, s, probe=False) for s in ("train", "val", "test")}
    assert [p.num_videos for p in parts.values()] == [4, 2, 2]
    ids = [v for p in parts.values() for v in p.video_ids]
    assert sorted(ids) == sorted(f.relative_to(root).as_posix() for f in files.values())
    assert all(len(p.captions) == 3 * p.num_videos for p in parts.values())  # by video
    again = {s: load_split(c, s, probe=False).video_ids for s in parts}
    assert again == {s: p.video_ids for s, p in parts.items()}
    other = cfg(path, jsonl_val_fraction=0.25, jsonl_test_fraction=0.25, jsonl_split_seed=5)
    assert any(load_split(other, s, probe=False).video_ids != parts[s].video_ids
               for s in parts)


def test_small_sets_still_get_a_val_and_test_video(clips):
    root, files = clips
    three = {k: files[k] for k in ("video0", "video1", "video2")}
    path = write_lines(root / "three.jsonl", own_clips_records(three, root, None))
    assert [load_split(cfg(path), s, probe=False).num_videos
            for s in ("train", "val", "test")] == [1, 1, 1]


def _rec(files, root, vid, cap="x", **kw):
    return {"video": files[vid].relative_to(root).as_posix(), "caption": cap, **kw}


# case -> (extra lines appended to a good file, text expected in the report, refused?)
CASES = {
    "not_json": (['{"video": "clips/a/video0.webm", "caption": '], "not a JSON object", True),
    "array_line": (['["clips/a/video0.webm", "a caption"]'], "not a JSON object", True),
    "unknown_key": ([{"video": "clips/a/video0.webm", "caption": "c", "captions": "d"}],
                    "unknown keys", True),
    "missing_caption_key": ([{"video": "clips/a/video0.webm"}], "without a 'video' or", True),
    "missing_video_key": ([{"caption": "a cat"}], "without a 'video' or", True),
    "number_caption": ([{"video": "clips/a/video0.webm", "caption": 3}], "not text", True),
    "two_splits": ([{"video": "clips/a/video0.webm", "caption": "c", "split": "test"}],
                   "in two splits", True),
    "id_two_files": ([{"video": "clips/c/new1.mp4", "caption": "c", "video_id": "x"},
                      {"video": "clips/c/new2.mp4", "caption": "d", "video_id": "x"}],
                     "naming two different files", True),
    "file_two_ids": ([{"video": "clips/a/video0.webm", "caption": "c", "video_id": "x"},
                      {"video": "clips/a/video0.webm", "caption": "d", "video_id": "y"}],
                     "given two different video_ids", True),
    "empty_caption": ([{"video": "clips/a/video1.avi", "caption": "   ", "split": "train"}],
                      "empty caption", False),
    "duplicate": ([{"video": "clips/a/video1.avi", "caption": caption("video1", 0),
                    "split": "train"}], "duplicate line", False),
    "missing_file": ([{"video": "clips/a/gone.mp4", "caption": "c", "split": "train"}],
                     "file is missing", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_matrix(clips, tmp_path, caplog, case):
    root, files = clips
    extra, text, refused = CASES[case]
    good = own_clips_records(files, root, SPLITS)
    path = write_lines(root / f"case_{case}.jsonl", good + extra)
    c = cfg(path)
    if refused:
        with pytest.raises(DatasetError, match=text) as e:
            load_split(c, "train")
        assert "REFUSED" in str(e.value) and str(path) in str(e.value)
        assert any(f"line {len(good) + k}" in str(e.value) for k in (1, 2))  # the culprit
    else:
        with caplog.at_level(logging.WARNING):
            split = load_split(c, "train")
        assert text in caplog.text and "skipped" in caplog.text
        assert split.num_videos == 4 and len(split.captions) == 8  # the good lines, all kept


def test_one_report_counts_every_problem_with_first_examples(clips, tmp_path):
    root, files = clips
    lines = own_clips_records(files, root, SPLITS)
    lines += [{"video": "clips/a/video0.webm", "caption": "c", "vidoe": 1}] * 5
    lines += ["not json"] * 2 + [{"video": "clips/a/gone.mp4", "caption": "c"}]
    lines += [{"video": "clips/a/video1.avi", "caption": ""}]
    with pytest.raises(DatasetError) as e:
        load_split(cfg(write_lines(root / "many.jsonl", lines)), "train")
    msg = str(e.value)
    assert "25 line(s) read" in msg
    assert "REFUSED: 5 line(s) with unknown keys" in msg and msg.count("'vidoe'") == 3
    assert "REFUSED: 2 line(s) that are not a JSON object" in msg
    assert "skipped: 1 line(s) with an empty caption" in msg
    assert "skipped: 1 video(s) whose file is missing" in msg and "gone.mp4" in msg
    assert "Nothing was read" in msg


@pytest.mark.parametrize("case, match", [
    ("no_file", "does not exist"), ("folder", "is a folder"), ("empty", "holds no lines"),
    ("txt", "reads a .jsonl"), ("absent_split", "no video in split 'val'"),
    ("all_missing", "none of the 2 listed videos"),
    ("csv_extra_cells", "unknown keys"), ("csv_unknown_column", "unknown keys"),
    ("csv_no_video_column", "without a 'video'"), ("csv_renamed_column", "unknown keys"),
])
def test_unusable_files_are_refused(clips, tmp_path, case, match):
    root, files = clips
    path = root / f"bad_{case}.jsonl"
    if case == "folder":
        path = root
    elif case == "empty":
        path.write_text("\n\n")
    elif case == "txt":
        path = root / "bad.txt"
        path.write_text("x\n")
    elif case == "absent_split":
        write_lines(path, [_rec(files, root, "video0", split="train"),
                           _rec(files, root, "video1", split="test")])
    elif case == "all_missing":
        write_lines(path, [{"video": "nope/a.mp4", "caption": "a", "split": "val"},
                           {"video": "nope/b.mp4", "caption": "b", "split": "val"}])
    elif case.startswith("csv"):
        path = root / f"bad_{case}.csv"
        head, row = {"csv_extra_cells": ("video,caption", "clips/a/video0.webm,a caption,more"),
                     "csv_unknown_column": ("video,caption,notes", "clips/a/video0.webm,a,b"),
                     "csv_renamed_column": ("file,caption", "clips/a/video0.webm,a caption"),
                     "csv_no_video_column": ("caption,split", "a caption,val")}[case]
        path.write_text(f"{head}\n{row}\n")
    with pytest.raises(DatasetError, match=match):
        load_split(cfg(path), "val")


def test_spreadsheet_converter(clips, tmp_path):
    """Names without extension, two caption columns, a split column, other column names."""
    root, files = clips
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("File,Description,Other description,Set\n"
                     "video0,a first clip,,train\nvideo1.avi,\"a second, clip\",again,train\n"
                     "video4,a val clip,,val\nvideo6,a test clip,,test\nmissing,lost,,test\n")
    out = tmp_path / "out" / "dataset.jsonl"
    p = subprocess.run([sys.executable, "-m", "clip4clip_dali.data.jsonl", "--csv", str(sheet),
                        "--videos", str(root / "clips"), "--out", str(out),
                        "--video-column", "File", "--caption-column", "Description",
                        "--caption-column", "Other description", "--split-column", "Set"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wrote 6 caption line(s) from 5 row(s)" in p.stdout and "1 row(s) name a clip" in p.stdout
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[1]["video"].startswith("../") and lines[1]["video"].endswith("a/video1.avi")
    assert {k: lines[1][k] for k in ("caption", "split")} == {"caption": "a second, clip",
                                                              "split": "train"}
    train = load_split(cfg(out), "train")
    assert train.captions == ["a first clip", "a second, clip", "again"]
    assert [p.resolve() for p in train.video_paths] == [files["video0"].resolve(),
                                                        files["video1"].resolve()]
    with pytest.raises(DatasetError, match="no column 'Caption'"):
        convert_spreadsheet(sheet, root / "clips", out, "File", ("Caption",))


def test_stats_command_json(clips, tmp_path):
    root, files = clips
    path = write_lines(root / "stats.jsonl", own_clips_records(files, root, SPLITS)
                       + [{"video": "clips/a/gone.mp4", "caption": "c", "split": "test"}])
    args = [sys.executable, "-m", "clip4clip_dali.data.stats", "--config",
            str(REPO / "configs" / "demo.yaml"), "--set", "data.synthetic.videos=0",
            "--set", "data.dataset=jsonl", "--set", f"data.data_path={path}"]
    p = subprocess.run(args + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    stats = json.loads(p.stdout)
    assert list(stats) == ["train", "val", "test"]
    t = stats["test"]
    assert (t["videos_listed"], t["videos_found"], t["videos_missing"]) == (3, 2, 1)
    assert t["captions"] == 5 and t["pairs"] == 4 and t["missing_examples"] == ["clips/a/gone.mp4"]
    assert stats["train"]["codecs"] == {"vp9": 2, "mjpeg": 2}
    assert stats["val"]["resolutions"] == {"48x48": 1, "64x48": 1}
    assert sum(stats["train"]["frame_rates"].values()) == 4 and stats["train"]["duration_s"] > 0
    text = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "test: 3 videos listed, 2 found, 1 missing" in text.stdout
    assert "file is missing" in text.stderr  # the validation report
