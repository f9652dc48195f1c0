"""benchmarks/dali_stages.py runs the loader's DALI graph cut after each stage, on the CPU."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench_fixtures import bench_runs  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[1]


def test_stage_profile_on_cpu(bench_runs):
    run = bench_runs["dali_stages"]  # two clips, VP9 and MJPEG (bench_fixtures)
    run.check()
    doc = json.loads(Path(run.flag("--out")).read_text())
    assert [r["stage"] for r in doc["stages"]] == ["read", "decode", "resize", "full"]
    for r in doc["stages"]:
        assert r["batches"] >= 3
        assert math.isfinite(r["frames_per_s"]) and r["frames_per_s"] > 0
    assert doc["meta"]["clips"] == 2 and doc["meta"]["codecs"] == ["mjpeg", "vp9"]
    assert "| decode |" in run.log


def test_stage_profile_refuses_an_empty_folder(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dali_stages.py"),
                        "--features-path", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "no video under" in p.stderr and "Traceback" not in p.stderr


def test_stage_profile_refuses_a_folder_nothing_in_it_decodes(bench_runs):
    run = bench_runs["dali_stages_h264"]  # an H.264 clip and a text file, on the CPU
    assert run.rc == 2, run.log[-3000:]
    assert "that DALI can decode on the CPU" in run.log and "Traceback" not in run.log
