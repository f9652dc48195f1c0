"""benchmarks/gpu_all.sh --device cpu: the GPU script's dry run, so it cannot rot unseen.

Every stage runs with tiny sizes on the CPU, queued and run in one process
(``benchmarks/run_queued.py``): the GPU tests (skipped here with their reason), the data sets
(drawn, 3 fps and pre-sampled copies, two widths, VP9 and H.264), the NVDEC / widths /
CPU-decoder loader runs (GPU rows n/a with the reason, CPU rows measured), the step section and
a short real training run (its own process, as on the GPU), then the merged report.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_all_dry_run_on_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), CLIP4CLIP_BENCH_CACHE=str(tmp_path / "cache"),
               PYTHON=sys.executable)
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_all.sh"), "--device", "cpu"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "out"
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "== 9 stages in one process" in p.stdout, p.stdout[-4000:]
    for stage in ("tests", "data", "nvdec", "widths", "cpudec", "step", "train", "decoders",
                  "shards"):
        assert f"{stage} exit 0" in p.stdout, (stage, p.stdout[-4000:])
    tests_log = (out / "dry-run-cpu-tests.log").read_text()  # every GPU test skips, with its reason
    assert re.search(r"\d+ skipped", tests_log) and "needs a CUDA device" in tests_log, tests_log
    assert not re.search(r"\d+ (passed|failed|error)", tests_log), tests_log
    doc = json.loads((out / "dry-run-cpu.json").read_text())
    assert doc["errors"] == [], doc["errors"]
    rows = doc["loader"]["rows"]
    shapes = doc["loader"]["dataset_shapes"]
    # 3 fps and pre-sampled copies of one drawn set; the widths stage's sets drawn at 3 fps
    assert {s["shape"] for s in shapes.values()} == {"raw", "3fps", "presampled", "shards"}
    assert {d for d, s in shapes.items() if s["shape"] == "raw"} == {
        f"synthetic-{c}-{w}-3fps" for c in ("vp9", "h264") for w in ("90x64", "96x64")}
    gpu = [r for r in rows if r["backend"] in ("dali_gpu", "dali_hybrid")]
    assert gpu and all(r["status"] == "n/a" and r["reason"] == "no CUDA device" for r in gpu)
    assert {r.get("pipelines") for r in rows if r["backend"] == "dali_gpu"} == {1, 2}
    cpu = [r for r in rows if r["backend"] == "dali_cpu"]
    assert cpu and all(r["status"] == "ok" and r["steady_valid"] for r in cpu), cpu
    assert any(r["backend"] == "cache" and r["status"] == "ok" for r in rows)
    step = {(r["mode"], r.get("loader")): r for r in doc["step"]["rows"]}
    assert step[("model_only", None)]["status"] == "ok"
    assert step[("e2e", "cache")]["status"] == "ok"
    [train] = doc["train"]["rows"]
    assert train["status"] == "ok" and 0 <= train["data_wait_share"] <= 1, train
    assert train["steps_measured"] >= 2
    assert any("pre-sampled >= 2x" in t["target"] for t in doc["targets"])
    assert any("tar shards >= 1.5x" in t["target"] for t in doc["targets"])
    assert any(r["backend"] == "dali_cpu" and r["status"] == "ok" and shapes[r["dataset"]][
        "shape"] == "shards" for r in rows)
    assert (out / "dry-run-cpu.md").read_text().startswith("# clip4clip-dali benchmark")
