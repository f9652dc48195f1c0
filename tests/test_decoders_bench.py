"""``throughput.py --sections decoders``: the CPU dry run of the decoders table gpu_all.sh
measures on a GPU (its GPU decoders and thread sweep, plus the CPU decoders, tiny clips): every
decoder is a row, measured on the CPU or saying why not (no CUDA device, not installed, a codec
DALI cannot read), and the side-by-side table is printed."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_DECODERS = ["torchcodec_cuda", "pynvc", "dali_nvdec"]
DECODERS = GPU_DECODERS + ["torchcodec", "pyav", "dali_cpu", "opencv"]


def _gpu_all_decoders_flags() -> list[str]:
    """The --decoders list gpu_all.sh runs, so this dry run follows it."""
    text = (REPO / "benchmarks" / "gpu_all.sh").read_text()
    return re.search(r"--decoders (\S+)", text).group(1).split(",")


def test_decoders_section_cpu_dry_run(tmp_path):
    assert _gpu_all_decoders_flags() == GPU_DECODERS
    env = dict(os.environ, CLIP4CLIP_BENCH_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cpu",
           "--sections", "decoders", "--out", str(tmp_path), "--name", "dry",
           "--codecs", "h264", "--videos", "3", "--clip-size", "96x72", "--clip-fps", "10",
           "--clip-seconds", "1", "2", "--max-frames", "4", "--resolution", "32",
           "--prepare", "raw,3fps,presampled", "--prepare-codec", "vp9", "--decoders", ",".join(DECODERS),
           "--decoder-gpu-threads", "1,4,8,16", "--workers", "0", "--decoder-batch", "2",
           "--decoder-min-batches", "2", "--decoder-repeats", "1", "--decoder-budget", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Decoders side by side" in proc.stdout
    doc = json.loads((tmp_path / "dry.json").read_text())
    sec = doc["decoders"]
    assert len(sec["datasets"]) == 3  # raw, 3 fps prepared, pre-sampled
    for ds in sec["datasets"]:
        rows = {r["decoder"]: r for r in sec["rows"] if r["dataset"] == ds}
        assert set(rows) == set(DECODERS), ds
        for kind in ("torchcodec", "pyav", "opencv"):
            r = rows[kind]
            assert r["status"] == "ok", (ds, r)
            s = r["steady_frames_per_s"]
            assert math.isfinite(s["median"]) and s["median"] > 0
            assert r["batches_per_pass"] >= 3 and "float32" in r["output"]
        for kind in ("dali_nvdec", "torchcodec_cuda", "pynvc"):
            r = rows[kind]
            assert r["status"] == "n/a" and ("no CUDA device" in r["reason"]
                                             or "not installed" in r["reason"]), r
        dali = rows["dali_cpu"]
        if ds.endswith(":raw") or ":" not in ds:  # raw H.264: not DALI's CPU decoder's
            assert dali["status"] == "n/a" and "h264" in dali["reason"], dali
        else:  # prepared copies are VP9 (as gpu_all.sh's from the real MSVD clips)
            assert dali["status"] == "ok", dali
