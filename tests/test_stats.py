"""python -m clip4clip_dali.data.stats on MSVD (the real mini set) and MSR-VTT."""
from __future__ import annotations

import json
import subprocess
import sys

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.stats import dataset_stats, format_stats
from conftest import MINI_MSVD, REPO, require_realdata
from layout_fixtures import write_clips, write_msrvtt


def test_stats_of_real_msvd_clips(tmp_path):
    require_realdata()
    args = [sys.executable, "-m", "clip4clip_dali.data.stats", "--config",
            str(REPO / "configs" / "msvd_meanP.yaml"), "--json",
            "--set", f"data.data_path={MINI_MSVD / 'msvd_data'}",
            "--set", f"data.features_path={MINI_MSVD / 'MSVD_Videos'}",
            "--set", f"data.manifest={tmp_path / 'manifest.json'}"]
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert [s[k]["videos_listed"] for k in ("train", "val", "test")] == [7, 5, 5]
    train = s["train"]
    assert train["videos_readable"] == 7 and train["codecs"] == {"h264": 7}
    assert train["captions"] == train["pairs"] == train["train_samples_per_epoch"]
    assert "29.97" in train["frame_rates"] and "1280x720" in train["resolutions"]
    assert 30 < train["duration_s"] < 600


def test_stats_of_msrvtt_without_probing(tmp_path):
    write_clips(tmp_path / "videos", ["video0", "video1", "video5"])
    write_msrvtt(tmp_path / "data", ["video0", "video1", "video2"], ["video5", "video6"])
    c = DataConfig(dataset="msrvtt", data_path=str(tmp_path / "data"),
                   features_path=str(tmp_path / "videos"))
    s = dataset_stats(c, probe=False)
    assert s["train"]["videos_missing"] == 1 and s["train"]["missing_examples"] == ["video2"]
    assert s["train"]["pairs"] == 6 and s["train"]["train_samples_per_epoch"] == 2
    assert s["test"] == s["val"] and s["test"]["captions"] == 2 and s["test"]["pairs"] == 1
    assert "codecs" not in s["train"]
    text = format_stats(s, c)
    assert "train: 3 videos listed, 2 found, 1 missing" in text
    assert "2 samples per epoch (one per video, a caption drawn each epoch)" in text
