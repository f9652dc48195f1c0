"""The benchmark's clip sets and steady-state rules, beyond the --quick run.

- ``--prepare 3fps,presampled``: one drawn set prepared both ways by pipelines/prepare_msvd.py,
  measured in one run (``--interleave``: the rows' windows in turn), with the pre-sampled/3 fps target computed from steady rows;
- ``timing.summarise``: steady frames/s count only over enough batches, first batch apart;
- the section registry: every section has the interface the CLI and the report call.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_fixtures import bench_runs  # noqa: E402, F401 (the fixture)
from suite import sections, timing  # noqa: E402


def test_presampled_and_3fps_sets_in_one_run(bench_runs):
    run = bench_runs["sets"]  # the flags: bench_fixtures
    run.check()
    doc = run.doc()
    assert doc["errors"] == [], doc["errors"]
    assert doc["loader"]["config"]["interleaved"] is True
    shapes = doc["loader"]["dataset_shapes"]
    assert sorted(s["shape"] for s in shapes.values()) == ["3fps", "presampled"]
    assert len({s["source"] for s in shapes.values()}) == 1  # the same clips, prepared twice
    rows = {shapes[r["dataset"]]["shape"]: r for r in doc["loader"]["rows"]}
    for shape, r in rows.items():
        assert r["status"] == "ok", r
        assert r["batches_per_pass"] == 6 and r["steady_valid"] is True, r
        assert r["steady_frames_per_s"]["median"] > 0
    # The pre-sampled clips hold exactly the frames sampled from the sources (their sidecar's
    # count); the 3 fps copies may differ by a frame a clip (their length is rounded at 3 fps).
    pre = next(d for d, s in shapes.items() if s["shape"] == "presampled")
    sidecar = json.loads(next((run.cache / "prepared").glob(
        "*presampled*/.clip4clip_presampled.json")).read_text())
    assert rows["presampled"]["frames_per_pass"] == sum(
        v["frames"] for v in sidecar["videos"].values())
    assert abs(rows["presampled"]["frames_per_pass"] - rows["3fps"]["frames_per_pass"]) <= 6
    assert doc["loader"]["dataset_info"][pre]["mean_frames"] <= 4
    [t] = [t for t in doc["targets"] if "pre-sampled >= 2x" in t["target"]]
    assert t["met"] in ("yes", "no") and "steady frames/s" in t["measured"], t
    # Prepared copies are cached: the same run again reuses them (no "preparing" line).
    again = bench_runs["sets_again"]
    again.check()
    assert "preparing" not in again.log and "generating" not in again.log, again.log[-2000:]
    assert len(again.doc()["loader"]["rows"]) == 2 and again.cache == run.cache


def _window(batches, passes=1, t=1.0, t_first=0.1, frames_per_batch=8):
    f = batches * frames_per_batch * passes
    return {"t": t * passes, "f": f, "c": batches * 2 * passes, "b": batches * passes,
            "t1": (t - t_first) * passes, "f1": f - frames_per_batch * passes,
            "c1": (batches - 1) * 2 * passes, "passes": passes, "first_batch_s": t_first * passes}


def test_steady_needs_enough_batches():
    ok = timing.summarise([_window(31), _window(31, t=1.2)], min_batches=30)
    assert ok["steady_valid"] and "steady_note" not in ok
    assert ok["steady_batches_per_pass"] == 30
    assert ok["steady_frames_per_s"]["median"] == pytest.approx(
        (30 * 8 / 0.9 + 30 * 8 / 1.1) / 2)
    assert ok["first_batch_s"]["median"] == pytest.approx(0.1)
    short = timing.summarise([_window(30)], min_batches=30)  # 29 after the first
    assert not short["steady_valid"] and "latency" in short["steady_note"]
    one = timing.summarise([_window(1)], min_batches=30)
    assert one["steady_frames_per_s"] is None and not one["steady_valid"]


def test_count_pass_separates_the_first_batch():
    import torch

    batches = [(torch.zeros(2, 4), torch.ones(2, 4)) for _ in range(5)]
    r = timing.count_pass(iter(batches), lambda: None)
    assert (r["b"], r["f"], r["f1"], r["c"], r["c1"]) == (5, 40, 32, 10, 8)
    assert 0 <= r["first_batch_s"] <= r["t"] and r["t1"] <= r["t"]
    with pytest.raises(RuntimeError, match="no batch"):
        timing.count_pass(iter([]), lambda: None)


def test_every_section_has_the_interface():
    names = [s.NAME for s in sections.SECTIONS]
    assert len(names) == len(set(names)) and {"loader", "step"} <= set(names)
    for s in sections.SECTIONS:
        for attr in ("DEFAULT", "QUICK", "add_args", "run", "markdown", "targets", "plot", "merge"):
            assert hasattr(s, attr), (s.NAME, attr)
        meta = {"device": "cpu", "gpu": None}
        assert s.markdown({"meta": meta}) == [] and s.plot({"meta": meta}) is None
        assert isinstance(s.targets({"meta": meta}), list)


def test_unknown_section_is_refused():
    p = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--sections", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "unknown section" in p.stderr and "Traceback" not in p.stderr


def test_worker_server_starts_with_the_loaders_modules(monkeypatch):
    """The benchmark starts its forkserver with torch preloaded before any pool: a pool that
    preloads only ``av`` (the set generator's, prepare_msvd.py's) must not start the server
    first and leave every later loader worker importing torch again, each pass (the server
    keeps the preload of whoever starts it)."""
    import multiprocessing.forkserver as forkserver

    from suite.loaders import start_worker_server

    server, started = forkserver._forkserver, []
    monkeypatch.setattr(server, "_preload_modules", ["__main__"])  # restored after the test
    monkeypatch.setattr(forkserver, "ensure_running", lambda: started.append(
        list(server._preload_modules)))
    start_worker_server()
    assert len(started) == 1 and {"torch", "av"} <= set(started[0]), started
