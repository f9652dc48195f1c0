"""curves.png: drawn from metrics.jsonl by the tracker and by ``python -m clip4clip_dali.plot``."""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch

from clip4clip_dali import plot
from clip4clip_dali.errors import UserError
from clip4clip_dali.tracking import Tracker


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def _fake_run(out: Path, steps: int = 6, epochs: int = 3, curves_every_s: float = 3600) -> Tracker:
    """A run written through the Tracker as the trainer writes it (val before training too)."""
    tr = Tracker(out, True, steps, None, None, frames_per_sample=4, log_every=1,
                 use_progress=False, curves_every_s=curves_every_s)
    res = lambda r1: {"plain": {"t2v": {"R1": r1}, "v2t": {"R1": r1}}, "videos": 10}  # noqa: E731
    tr.eval(step=0, epoch=0, split="val", results=res(10.0), seconds=0.1, epochs_done=0)
    for s in range(1, steps + 1):
        tr.step(step=s, epoch=(s - 1) * epochs // steps, loss=3.0 / s, lr=1e-3 * s / steps,
                step_s=0.1, wait_s=0.02, samples=8, skipped=0, grad_norm=1.0,
                device=torch.device("cpu"))
        if s % (steps // epochs) == 0:
            e = s * epochs // steps - 1
            tr.eval(step=s, epoch=e, split="val", results=res(20.0 + 10 * e), seconds=0.1)
    return tr


def _records(out: Path, steps: int = 6) -> Path:
    """metrics.jsonl as the tracker writes it (train and val records), without drawing."""
    out.mkdir(parents=True)
    recs = [{"kind": "eval", "step": 0, "epoch": 0, "epochs_done": 0, "split": "val",
             "plain": {"t2v": {"R1": 5.0}}}]
    for s in range(1, steps + 1):
        recs.append({"kind": "train", "step": s, "epoch": s // 3, "loss": 3.0 / s, "lr": 1e-3,
                     "frames_per_s": 100.0 + s, "data_wait_share": 0.1})
        if s % 3 == 0:
            recs.append({"kind": "eval", "step": s, "epoch": s // 3 - 1, "split": "val",
                         "plain": {"t2v": {"R1": 10.0 * s}}})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return out


def test_tracker_draws_curves_at_evaluations_and_close(tmp_path):
    tr = _fake_run(tmp_path / "run", epochs=2, curves_every_s=0)
    png = tmp_path / "run" / "curves.png"
    assert png.is_file()  # drawn at the evaluations already, before close
    first = png.stat().st_mtime_ns
    tr.close()
    w, h = _png_size(png)
    assert w > 3 * h > 0
    assert png.stat().st_mtime_ns >= first
    train, evals = plot.read_metrics(tmp_path / "run")
    assert [r["step"] for r in train] == list(range(1, 7))
    assert [(e["epochs_done"], e["R1"]) for e in evals] == [(0, 10.0), (1, 20.0), (2, 30.0)]


def test_the_evaluation_before_the_first_step_draws_nothing(tmp_path):
    tr = Tracker(tmp_path / "run", True, 2, None, None, frames_per_sample=4, log_every=1,
                 use_progress=False, curves_every_s=0)
    res = {"plain": {"t2v": {"R1": 10.0}, "v2t": {"R1": 10.0}}, "videos": 10}
    tr.eval(step=0, epoch=0, split="val", results=res, seconds=0.1, epochs_done=0)
    assert not (tmp_path / "run" / "curves.png").exists()  # no curve yet: one point
    tr.step(step=1, epoch=0, loss=1.0, lr=1e-3, step_s=0.1, wait_s=0.0, samples=8, skipped=0,
            grad_norm=1.0, device=torch.device("cpu"))
    tr.eval(step=1, epoch=0, split="val", results=res, seconds=0.1)
    assert (tmp_path / "run" / "curves.png").is_file()
    tr.close()


def test_tracker_throttles_drawing_but_always_draws_at_the_end(tmp_path):
    tr = _fake_run(tmp_path / "run", curves_every_s=3600)
    png = tmp_path / "run" / "curves.png"
    drawn = png.stat().st_mtime_ns  # the first evaluation draws; later ones are too close
    assert tr.curves() is None
    tr.close()
    assert png.stat().st_mtime_ns > drawn


def test_cli_one_and_several_runs(tmp_path, capsys):
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b", steps=9)
    assert plot.main([str(a)]) == 0
    assert capsys.readouterr().out.strip() == str(a / "curves.png")
    assert _png_size(a / "curves.png")[0] > 0
    assert plot.main([str(a), str(b)]) == 0
    assert _png_size(tmp_path / "curves_compare.png")[0] > 0
    assert plot.main([str(b), "--out", str(tmp_path / "x" / "b.png")]) == 0
    assert (tmp_path / "x" / "b.png").is_file() and not (b / "curves.png").exists()


def test_read_metrics_resumed_run_and_truncated_line(tmp_path):
    """A resumed run appends records for steps it redoes; a crash can cut the last line.
    Val records before ``epochs_done`` existed count epoch e as e + 1 epochs done."""
    r = _records(tmp_path / "r")
    with open(r / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 2, "loss": 9.0}) + "\n")
        f.write(json.dumps({"kind": "eval", "split": "test", "plain": {"t2v": {"R1": 1}}}) + "\n")
        f.write('{"kind": "train", "step": 7, "lo')
    train, evals = plot.read_metrics(r)
    assert [x["step"] for x in train] == list(range(1, 7))
    assert train[1]["loss"] == 9.0
    assert [(e["epochs_done"], e["R1"]) for e in evals] == [(0, 5.0), (1, 30.0), (2, 60.0)]


def test_cli_errors_name_the_input(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        plot.main([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metrics.jsonl"):
        plot.main([str(tmp_path / "empty")])
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no training or evaluation records"):
        plot.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match=r"\.png"):
        plot.main([str(_records(tmp_path / "ok")), "--out", str(tmp_path / "c.jpg")])


def test_without_matplotlib_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(plot, "_import_matplotlib", lambda: None)
    monkeypatch.setattr(plot, "_warned", False)
    monkeypatch.setattr(logging.getLogger("clip4clip_dali"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="clip4clip_dali"):
        _fake_run(tmp_path / "run").close()
    assert not (tmp_path / "run" / "curves.png").exists()
    assert len([r for r in caplog.records if "matplotlib" in r.getMessage()]) == 1
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot.main([str(tmp_path / "run")])
