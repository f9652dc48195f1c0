"""pipelines/prepare_msvd.py --config: the videos of an MSR-VTT or JSONL dataset, transcoded;
the JSONL dataset rewritten to point at the copies with the same ids and splits."""
from __future__ import annotations

import subprocess
import sys

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.dataset import load_split, output_names
from conftest import REPO
from layout_fixtures import own_clips_records, write_clips, write_lines, write_msrvtt


def prepare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "pipelines" / "prepare_msvd.py"), "--short-side", "32",
           "--max-duration", "1", "--workers", "1", "-q", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_output_names_stay_inside_the_output_folder():
    names = output_names(["video7", "clips/a/x.mp4", "clips/a/x.webm", "../up/y.avi", "/abs/z"])
    assert names == {"video7": "video7", "clips/a/x.mp4": "clips/a/x",
                     "clips/a/x.webm": "clips/a/x_1", "../up/y.avi": "_/up/y",
                     "/abs/z": "abs/z"}


def test_prepare_a_jsonl_dataset_keeps_ids_and_splits(tmp_path):
    root = tmp_path / "own"
    clips = {**write_clips(root / "clips" / "a", ["video0", "video1", "video2"]),
             **write_clips(root / "clips" / "b", ["video3", "video4"])}
    src = write_lines(root / "mine.jsonl", own_clips_records(clips, root, None))  # drawn splits
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  dataset: jsonl\n  data_path: {src}\n")
    out = tmp_path / "prepared"
    p = prepare("--config", str(config), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "set data.data_path to it" in p.stdout
    before = DataConfig(dataset="jsonl", data_path=str(src))
    after = DataConfig(dataset="jsonl", data_path=str(out / "mine.jsonl"))
    for name in ("train", "val", "test"):
        a, b = load_split(before, name), load_split(after, name)
        assert a.video_ids == b.video_ids and a.captions == b.captions
        assert all(i.codec == "vp9" and min(i.width, i.height) == 32 for i in b.video_info)
        assert all(out in p.parents for p in b.video_paths)


def test_prepare_an_msrvtt_dataset(tmp_path):
    root = tmp_path / "msrvtt"
    write_clips(root / "videos", ["video1", "video3", "video5"])
    write_msrvtt(root / "data", ["video1", "video3"], ["video5"])
    out = tmp_path / "prepared"
    p = prepare("--config", str(REPO / "configs" / "msrvtt_meanP.yaml"), "--out", str(out),
                "--set", f"data.data_path={root / 'data'}",
                "--set", f"data.features_path={root / 'videos'}")
    assert p.returncode == 0, p.stderr
    assert f"set data.features_path to {out}" in p.stdout
    c = DataConfig(dataset="msrvtt", data_path=str(root / "data"), features_path=str(out))
    assert load_split(c, "train").video_ids == ["video1", "video3"]
    assert [i.codec for i in load_split(c, "test").video_info] == ["vp9"]
    assert prepare("--out", str(out)).returncode != 0  # neither --src nor --config
