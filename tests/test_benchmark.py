"""The benchmark suite's --quick run: it finishes, and its JSON has the promised shape.

Every measured number must be finite and positive; a row that could not be measured says so
explicitly (status "n/a" or "error" with a reason) instead of carrying NaN or a zero.
"""
from __future__ import annotations

import math

import pytest

from bench_fixtures import bench_runs  # noqa: F401 (the fixture)

LOADER_BACKENDS = {"dali_gpu", "dali_hybrid", "dali_cpu", "reference", "cache", "original"}
STEP_VARIANTS = {"eager_fp32", "eager_amp_bf16", "compiled_amp_bf16"}


def _walk_numbers(obj, path=""):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{path}[{i}]")


def _check_stat(s, where):
    assert set(s) >= {"median", "p10", "p90", "n"}, where
    for k in ("median", "p10", "p90", "min", "max"):
        assert math.isfinite(s[k]) and s[k] > 0, (where, k, s[k])
    assert s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"], (where, s)
    assert s["n"] >= 1


def _check_row(row, required_stats, where):
    assert row["status"] in ("ok", "n/a", "error"), (where, row)
    if row["status"] != "ok":
        assert isinstance(row.get("reason"), str) and row["reason"], (where, row)
        for key in required_stats:
            assert row.get(key) is None, (where, key)
        return
    for key in required_stats:
        _check_stat(row[key], f"{where}.{key}")


@pytest.fixture(scope="module")
def quick_run(bench_runs):
    run = bench_runs["quick"]  # throughput.py --quick --device cpu (bench_fixtures)
    run.check()
    return run.out, run.doc(), run.log


def test_quick_json_schema(quick_run):
    out, doc, _ = quick_run
    assert doc["schema"] == "clip4clip-dali-benchmark/1"
    meta = doc["meta"]
    assert meta["complete"] is True and meta["quick"] is True
    assert meta["device"] == "cpu"
    assert meta["cpu"]["model"] and meta["cpu"]["cores"] >= 1
    for lib in ("torch", "dali", "open_clip", "pyav", "opencv"):
        assert lib in meta["versions"]
    assert (out / "quick.md").read_text().startswith("# clip4clip-dali benchmark")
    assert doc["errors"] == [], doc["errors"]


def test_quick_loader_rows(quick_run):
    _, doc, _ = quick_run
    rows = doc["loader"]["rows"]
    assert {r["backend"] for r in rows} == LOADER_BACKENDS
    by = {r["backend"]: r for r in rows}
    for r in rows:
        _check_row(r, ("frames_per_s", "clips_per_s"), f"loader.{r['backend']}")
    # On this CPU-only run DALI-GPU cannot run; DALI-CPU and the reference loader must.
    assert by["dali_gpu"]["status"] == by["dali_hybrid"]["status"] == "n/a"
    assert by["dali_cpu"]["status"] == "ok", by["dali_cpu"]
    assert by["reference"]["status"] == "ok", by["reference"]
    assert by["cache"]["status"] == "ok" and by["cache"]["filled_by"] == "dali_cpu", by["cache"]
    try:
        import cv2  # noqa: F401
        assert by["original"]["status"] == "ok", by["original"]
    except ImportError:
        assert by["original"]["status"] == "n/a"
    # 6 clips at batch 2: 3 batches a pass, far below 30 steady batches. The rows still report
    # what they measured, start-up apart, but call it latency and no target uses them.
    for r in rows:
        if r["status"] == "ok":
            assert r["batches_per_pass"] == 3 and r["steady_batches_per_pass"] == 2, r
            assert r["steady_valid"] is False and "latency" in r["steady_note"], r
            _check_stat(r["first_batch_s"], f"loader.{r['backend']}.first_batch_s")
    assert by["dali_cpu"]["pipelines"] == 1
    cpu_targets = [t for t in doc["targets"] if t["target"].startswith("CPU [")]
    assert cpu_targets and all(t["met"] == "n/a" for t in cpu_targets), cpu_targets


def test_quick_step_rows(quick_run):
    _, doc, _ = quick_run
    step = doc["step"]
    assert step["flops_per_step"] and step["flops_per_step"] > 0, step["flops_method"]
    rows = step["rows"]
    model_only = [r for r in rows if r["mode"] == "model_only"]
    assert {r["variant"] for r in model_only} == STEP_VARIANTS
    assert {r["grad_checkpointing"] for r in model_only} == {False, True}
    for r in rows:
        _check_row(r, ("ms_per_step",), f"step.{r['mode']}.{r['variant']}")
        if r["status"] == "ok":
            assert r["steps_per_s"] > 0 and r["frames_per_s"] > 0
            assert r["mfu"] is None  # CPU: no stated peak
    eager = [r for r in model_only if not r["compiled"]]
    assert all(r["status"] == "ok" for r in eager), eager
    e2e = {r["loader"]: r for r in rows if r["mode"] == "e2e"}
    assert set(e2e) == {"dali_cpu", "reference"}
    for r in e2e.values():
        assert r["status"] == "ok", r
        assert 0 <= r["data_wait_share"] <= 1


def test_quick_numbers_finite_and_targets(quick_run):
    _, doc, _ = quick_run
    for path, value in _walk_numbers(doc):
        assert math.isfinite(value), path
        if not path.endswith(("data_wait_share", "data_wait_ms.min", "data_wait_ms.p10",
                              "data_wait_ms.median", "data_wait_ms.p90", "data_wait_ms.max")):
            assert value >= 0, (path, value)
    assert doc["targets"], "targets block missing"
    for t in doc["targets"]:
        assert t["met"] in ("yes", "no", "n/a"), t
        assert t["target"] and t["measured"]


def test_quick_prints_targets(quick_run):
    _, _, stdout = quick_run
    assert "## Targets" in stdout
