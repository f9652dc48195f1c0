"""pipelines/prepare_msvd.py: duration-keeping resampling, short side, verification, resume,
fallback copy, manifest; and DALI-CPU equals the reference on prepared real MSVD clips."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.loaders.dali_loader import DaliLoader
from clip4clip_dali.data.manifest import probe_video
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from conftest import MINI_MSVD, REPO, require_realdata
from dali_fixtures import pixel_mae, smooth_clip

sys.path.insert(0, str(REPO / "pipelines"))  # importable by name, in pool workers too
import prepare_msvd as prep  # noqa: E402

REAL = ["klteYv1Uv9A_27_33", "778mkceE0UQ_40_46", "0lh_UWF9ZP4_62_69"]  # 15, 59.94, 29.92 fps


def test_planned_frames_keep_duration():
    # 29.97 fps, 210 frames = 7.007 s -> 21 frames at 3 fps, each the frame shown at k/3 s.
    plan = prep.planned_frames(210, 30000 / 1001, 3.0)
    assert len(plan) == 21 and plan[:3] == [0, 9, 19] and plan[-1] < 210
    assert len(prep.planned_frames(91, 15.0, 3.0)) == 18  # 6.07 s
    assert prep.planned_frames(2, 30.0, 3.0) == [0]  # never empty
    assert len(prep.planned_frames(300, 30.0, 3.0, max_duration=2)) == 6
    assert prep.output_size(320, 240, 224) == (298, 224)
    assert prep.output_size(240, 426, 224) == (224, 398)  # portrait
    assert prep.output_size(160, 120, 224) == (160, 120)  # never upscaled


def test_prepare_generated_clips(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    smooth_clip(src / "land.mp4", 60, fps=30, width=96, height=64, codec="h264")
    smooth_clip(src / "port.avi", 45, fps=15, width=48, height=80, codec="mpeg4", seed=1)
    (src / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3" + bytes(300))
    opts = prep.Options(short_side=32, fps=3.0)
    s = prep.prepare(src, out, opts, workers=1)
    assert (s["transcoded"], s["copied"], s["failed"]) == (2, 1, 0)
    assert s["copied_ids"] == ["broken"] and s["unreadable"] == ["broken"]
    land, port = probe_video(out / "land.webm", count="decode"), probe_video(out / "port.webm")
    assert (land.codec, land.frames, land.fps, land.width, land.height) == ("vp9", 6, 3.0, 48, 32)
    assert (port.frames, port.width, port.height) == (9, 32, 54)  # 3 s kept; portrait
    assert (out / "broken.mkv").exists() and (out / ".clip4clip_manifest.json").exists()
    again = prep.prepare(src, out, opts, workers=1)  # resumable: verified outputs are kept
    assert (again["skipped"], again["transcoded"]) == (2, 0)
    mtime = (out / "land.webm").stat().st_mtime
    (out / "port.webm").write_bytes(b"garbage")  # a damaged output is redone
    third = prep.prepare(src, out, opts, workers=2)
    assert (third["skipped"], third["transcoded"], third["copied"]) == (1, 1, 1)
    assert (out / "land.webm").stat().st_mtime == mtime


def test_cli_summary_and_codec_choice(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    smooth_clip(src / "a.webm", 20, fps=10, codec="vp9")
    rc = prep.main(["--src", str(src), "--out", str(tmp_path / "o"), "--codec", "mjpeg",
                    "--short-side", "32", "--workers", "1", "-q"])
    assert rc == 0
    assert "1 transcoded" in capsys.readouterr().out
    info = probe_video(tmp_path / "o" / "a.avi")
    assert (info.codec, info.frames) == ("mjpeg", 6)


def test_prepared_real_msvd_dali_equals_reference(tmp_path):
    require_realdata()
    src, out, data = tmp_path / "raw", tmp_path / "prepared", tmp_path / "msvd_data"
    src.mkdir()
    data.mkdir()
    for vid in REAL:
        (src / f"{vid}.avi").symlink_to(MINI_MSVD / "MSVD_Videos" / f"{vid}.avi")
    shutil.copy(MINI_MSVD / "msvd_data" / "raw-captions.pkl", data)
    for s in ("train", "val", "test"):
        (data / f"{s}_list.txt").write_text("\n".join(REAL))
    s = prep.prepare(src, out, prep.Options(max_duration=4.0), workers=2)
    assert s["transcoded"] == 3 and not s["copied_ids"]
    for vid in REAL:
        info = probe_video(out / f"{vid}.webm", count="decode")
        raw = probe_video(src / f"{vid}.avi")
        assert info.codec == "vp9" and info.fps == 3.0 and info.frames == 12  # 4 s at 3 fps
        assert min(info.width, info.height) == 224
        assert abs(info.width / info.height - raw.width / raw.height) < 0.02
    cfg = DataConfig(data_path=str(data), features_path=str(out), max_frames=12,
                     dali_threads=2)
    split = load_split(cfg, "test")
    dali = list(DaliLoader(split, cfg, "eval", 3))
    ref = list(ReferenceLoader(split, cfg, "eval", 3, num_workers=0))
    assert len(dali) == len(ref) == 1
    a, b = dali[0], ref[0]
    assert torch.equal(a["video_mask"], b["video_mask"]) and torch.equal(a["video_index"], b["video_index"])
    assert a["video_mask"].sum(1).tolist() == [4, 4, 4]  # 1 frame/s over 4 s
    for i in range(3):
        assert pixel_mae(a["video"][i, :4], b["video"][i, :4]) < 2.0
