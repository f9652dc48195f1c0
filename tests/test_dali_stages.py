"""benchmarks/dali_stages.py runs the loader's DALI graph cut after each stage, on the CPU."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from dali_fixtures import make_dataset

REPO = Path(__file__).resolve().parents[1]


def test_stage_profile_on_cpu(tmp_path):
    _, videos = make_dataset(tmp_path, [dict(frames=30, fps=10, codec="vp9"),
                                        dict(frames=20, fps=10, codec="mjpeg", width=48, height=64)])
    out = tmp_path / "stages.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dali_stages.py"),
                        "--features-path", str(videos), "--resolution", "32", "--batch", "2",
                        "--threads", "1", "--seconds", "0.2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [r["stage"] for r in doc["stages"]] == ["read", "decode", "resize", "full"]
    for r in doc["stages"]:
        assert r["batches"] >= 3
        assert math.isfinite(r["frames_per_s"]) and r["frames_per_s"] > 0
    assert doc["meta"]["clips"] == 2 and doc["meta"]["codecs"] == ["mjpeg", "vp9"]
    assert "| decode |" in p.stdout


def test_stage_profile_refuses_an_empty_folder(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dali_stages.py"),
                        "--features-path", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "no video under" in p.stderr and "Traceback" not in p.stderr
