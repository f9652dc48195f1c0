"""The trainer end to end on a tiny synthetic dataset (CPU): resume, DDP, precision, signals.

Runs whose subject is the process (signals, SIGKILL, torchrun, the demo as the README runs it)
are subprocesses, so signals and exit codes are real; the others run in this process
(``train_here``), whose torch and open_clip are imported already. Either way
OMP_WAIT_POLICY=PASSIVE is set before torch loads (conftest).
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import Ran, check, env, made_once, run_here, run_main, run_module

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """16 generated clips, made once a run (shared by the xdist workers, read only)."""
    from clip4clip_dali.data.synthetic import generate_dataset

    def make(folder: Path) -> None:
        generate_dataset(folder / "data", 16, codec="vp9", seed=1, min_seconds=2.0,
                         max_seconds=3.0)

    return made_once(tmp_path_factory, "syn", make) / "data"


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"data.data_path={data}", f"data.features_path={data / 'videos'}",
            "data.synthetic.videos=0", "data.max_frames=2", "train.batch_size=8",
            "train.epochs=1", "eval.test_at_end=false", "train.log_every=1",
            f"train.output_dir={out}", "train.eval_batch_size=4", *extra]
    return ["--config", DEMO] + [x for s in sets for x in ("--set", s)]


def run_train(args: list[str], timeout: float = 300, module: str = "clip4clip_dali.train",
              torchrun: int = 0) -> subprocess.CompletedProcess:
    return run_module(module, *args, timeout=timeout, torchrun=torchrun)


def train_here(args: list[str], module: str = "clip4clip_dali.train") -> Ran:
    """``run_train`` in this process (conftest.run_here): for runs whose subject is not the
    process; signals, kills and torchrun stay subprocesses, and so does the demo (the README's
    command)."""
    return run_here(module, *args)


def losses(out: Path) -> list[float]:
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


TWO_EPOCHS = ("train.epochs=2", "train.checkpoint_every=1")


@pytest.fixture(scope="session")
def two_epochs(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted 2-epoch run (val after each epoch, latest.pt every step) and its
    stderr: the reference of the resume and the SIGKILL tests, trained once a run (shared by
    the xdist workers; tests only read it)."""
    def make(folder: Path) -> None:
        p = train_here(tiny_args(tiny_data, folder / "run", *TWO_EPOCHS))
        check(p)
        (folder / "stderr.txt").write_text(p.stderr)

    folder = made_once(tmp_path_factory, "two_epochs", make)
    return folder / "run", (folder / "stderr.txt").read_text()


@pytest.fixture(scope="session")
def three_steps(tiny_data, tmp_path_factory) -> Path:
    """The same run stopped by max_steps after 3 steps (mid-epoch): the resume test resumes a
    copy of it, and it is the one-rank reference of the two-rank run. Made once a run."""
    def make(folder: Path) -> None:
        check(train_here(tiny_args(tiny_data, folder / "run", *TWO_EPOCHS, "train.max_steps=3")))

    return made_once(tmp_path_factory, "three_steps", make) / "run"


def test_resume_continues_exactly_and_evaluate_cli(tiny_data, two_epochs, three_steps,
                                                   tmp_path):
    (a, first_stderr), b = two_epochs, tmp_path / "b"
    # two evaluations on val, one val loader (DALI keeps its pipeline between them)
    assert len(list((a).glob("eval_val_epoch*.json"))) == 2
    assert first_stderr.count("data loader for val") == 1
    full = losses(a)
    assert len(full) >= 4 and all(map(lambda x: x == x, full))
    # stop after 3 steps (mid-epoch), then resume: the same losses, bit for bit
    shutil.copytree(three_steps, b)
    obj = torch.load(b / "latest.pt", weights_only=True)
    assert obj["step"] == 3 and obj["batch_in_epoch"] == 3 and obj["epoch"] == 0
    check(train_here(tiny_args(tiny_data, b, *TWO_EPOCHS) + ["--resume", "auto"]))
    assert losses(b) == full
    # weights equal too
    wa = torch.load(a / "latest.pt", weights_only=True)["model"]
    wb = torch.load(b / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # val before training (not a best.pt candidate) and after each epoch, drawn in curves.png
    history = torch.load(a / "latest.pt", weights_only=True)["extra"]["history"]
    assert [h["epochs_done"] for h in history] == [0, 1, 2]
    assert (a / "eval_val_before.json").is_file() and (a / "curves.png").is_file()
    # best.pt by val R@1, and the evaluate CLI on it
    assert (a / "best.pt").is_file()
    p = run_train(["--config", DEMO, "--checkpoint", str(a / "best.pt"), "--split", "test",
                   "--set", f"data.data_path={tiny_data}",
                   "--set", f"data.features_path={tiny_data / 'videos'}",
                   "--set", "data.max_frames=2", "--set", f"train.output_dir={a}",
                   "--set", "eval.dsl=true"], module="clip4clip_dali.evaluate")
    check(p)
    res = json.loads((a / "eval_test.json").read_text())
    assert set(res["plain"]) == {"t2v", "v2t"} and "dsl" in res
    assert "R1" in p.stdout


def test_two_ranks_match_one(tiny_data, three_steps, tmp_path):
    one, two = three_steps, tmp_path / "two"
    extra = (*TWO_EPOCHS, "train.max_steps=3", "train.eval_every_epoch=true")
    p = run_train(tiny_args(tiny_data, two, *extra), torchrun=2, timeout=400)
    check(p)
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == 3
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    w1 = torch.load(one / "latest.pt", weights_only=True)["model"]
    w2 = torch.load(two / "latest.pt", weights_only=True)["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k


def test_amp_bf16_with_compile(tiny_data, tmp_path):
    """torch.compile through the trainer; one block a tower, so inductor's CPU compile (the
    cost of this test) has the least to do."""
    out = tmp_path / "c"
    check(run_train(tiny_args(tiny_data, out, "train.precision=amp_bf16", "train.compile=true",
                              "train.max_steps=2", "train.eval_every_epoch=false",
                              "model.open_clip_config.vision_cfg.layers=1",
                              "model.open_clip_config.text_cfg.layers=1"), timeout=400))
    ls = losses(out)
    assert len(ls) == 2 and all(x == x and abs(x) < 1e4 for x in ls)


def test_accumulation_and_fp16_modes_run(tiny_data, tmp_path):
    out = tmp_path / "acc"
    check(train_here(tiny_args(tiny_data, out, "train.gradient_accumulation_steps=2",
                               "train.precision=amp_fp16", "train.max_steps=2",
                               "train.eval_every_epoch=false", "eval.test_at_end=true",
                               "eval.index_test_split=false")))  # the demo's index: tested apart
    assert len(losses(out)) == 2
    # a run cut by max_steps is tested at the end, not before training
    assert (out / "eval_test.json").is_file() and not (out / "eval_test_before.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_zero(tiny_data, tmp_path, signum):
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "clip4clip_dali.train",
           *tiny_args(tiny_data, out, "train.epochs=50", "train.eval_every_epoch=false")]
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "metrics.jsonl").is_file() and losses(out):
                break
            if p.poll() is not None:
                break
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[1][-3000:]
        p.send_signal(signum)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    obj = torch.load(out / "latest.pt", weights_only=True)
    assert obj["step"] >= 1
    assert signal.Signals(signum).name in err


def test_sigkill_mid_run_then_resume_finishes_like_an_uninterrupted_run(tiny_data, two_epochs,
                                                                        tmp_path):
    (ref, _), out = two_epochs, tmp_path / "killed"
    extra = TWO_EPOCHS
    cmd = [sys.executable, "-m", "clip4clip_dali.train", *tiny_args(tiny_data, out, *extra)]
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if (out / "metrics.jsonl").is_file() and len(losses(out)) >= 3:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed"
        p.kill()  # SIGKILL: no handler runs, possibly in the middle of a checkpoint write
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    check(train_here(tiny_args(tiny_data, out, *extra) + ["--resume", "auto"]))
    a = torch.load(ref / "latest.pt", weights_only=True)
    b = torch.load(out / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_nonfinite_stop_reports_and_saves_nothing(tiny_data, tmp_path):
    out = tmp_path / "nan"
    p = train_here(tiny_args(tiny_data, out, "train.lr=1.0e+30", "train.nonfinite_loss=stop",
                             "train.warmup_proportion=0.0", "train.max_grad_norm=0",
                             "train.eval_every_epoch=false", "train.checkpoint_every=1"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "non-finite" in p.stderr and "Traceback" not in p.stderr
    if (out / "latest.pt").exists():  # anything saved must hold finite weights
        sd = torch.load(out / "latest.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_nonfinite_skip_drops_the_step_and_trains_on(tiny_data, tmp_path, monkeypatch):
    from clip4clip_dali import engine

    forward_backward = engine.Trainer._forward_backward

    def nan_at_step2(self, batch):  # one bad batch: its loss is NaN, the weights still finite
        loss = forward_backward(self, batch)
        return loss * torch.nan if self.state.step == 1 else loss

    monkeypatch.setattr(engine.Trainer, "_forward_backward", nan_at_step2)
    out = tmp_path / "skip"
    p = train_here(tiny_args(tiny_data, out, "train.nonfinite_loss=skip", "train.max_steps=4",
                             "train.eval_every_epoch=false", "train.epochs=2"))
    check(p)
    assert "skipping this step" in p.stderr
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r["skipped_steps"] for r in train_recs] == [0, 1, 1, 1]
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(train_recs) if i != 1)
    obj = torch.load(out / "latest.pt", weights_only=True)
    assert obj["step"] == 4
    assert all(torch.isfinite(v).all() for v in obj["model"].values() if v.is_floating_point())


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    from clip4clip_dali import train

    def refused(*argv: str) -> str:
        assert run_main(train.main, *argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err, err
        return err

    refused("--config", DEMO, "--set", f"data.data_path={tmp_path / 'missing'}",
            "--set", "data.synthetic.videos=0", "--set", f"train.output_dir={tmp_path}")
    assert "nope.yaml" in refused("--config", str(tmp_path / "nope.yaml"))
    # a bad --resume is refused before the (missing) synthetic dataset is generated
    assert "nope.pt" in refused("--config", DEMO, "--resume", str(tmp_path / "nope.pt"),
                                "--set", f"train.output_dir={tmp_path}",
                                "--set", f"data.data_path={tmp_path / 'syn'}")
    assert not (tmp_path / "syn").exists()


def test_demo_end_to_end_small(tmp_path):
    """configs/demo.yaml end to end, shrunk (48 clips, 4 epochs; .ci/run runs the full demo
    and checks its R@1): generation, recall before and after training in the summary,
    curves.png, the test split indexed and one search printed."""
    data, out = tmp_path / "synthetic", tmp_path / "demo"
    p = run_train(["--config", DEMO, "--set", f"data.data_path={data}",
                   "--set", f"data.features_path={data / 'videos'}",
                   "--set", "data.synthetic.videos=48", "--set", "train.epochs=4",
                   "--set", f"train.output_dir={out}"], timeout=600)
    check(p)
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["test_before"]["plain"]["t2v"], summary["test"]["plain"]["t2v"]
    assert before == json.loads((out / "eval_test_before.json").read_text())["plain"]["t2v"]
    assert after["MnR"] < before["MnR"], (before, after)  # training helped
    assert f"R@1 {after['R1']:.1f} (before training {before['R1']:.1f}; chance" in p.stderr
    assert (out / "eval_val_before.json").is_file()
    assert f"Curves (loss, learning rate, val R@1, frames/s, data wait): {out / 'curves.png'}" \
        in p.stdout and (out / "curves.png").stat().st_size > 1000
    # it ends with the test split indexed and one search printed
    assert "right video first:" in p.stdout and (out / "index" / "index.sqlite").is_file()
    search = summary["search"]
    # the index keeps float16 vectors: a near tie may flip a caption or two
    flip = 2 * 100 / summary["test"]["captions"]
    assert len(search["hits"]) == 3 and search["top1"] * 100 == pytest.approx(after["R1"], abs=flip)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-vp9-dali", "raw-h264-auto"])
def test_trains_and_evaluates_on_real_msvd_clips(tmp_path, prepared):
    """The trainer end to end on the 12 real MSVD clips (7 train, 5 test): prepared by
    pipelines/prepare_msvd.py and read by DALI, or as shipped (H.264 AVI, which DALI cannot
    decode on a CPU: auto takes torchcodec, or the reference loader without it)."""
    from conftest import MINI_MSVD, require_realdata

    require_realdata()
    videos = MINI_MSVD / "MSVD_Videos"
    if prepared:
        out = tmp_path / "prepared"
        p = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare_msvd.py"),
                            "--src", str(videos), "--out", str(out), "--short-side", "64",
                            "--max-duration", "4", "--workers", "2", "-q"],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        check(p)
        videos = out
    run = tmp_path / "run"
    args = ["--config", DEMO]
    for s in (f"data.data_path={MINI_MSVD / 'msvd_data'}", f"data.features_path={videos}",
              "data.synthetic.videos=0", f"data.loader={'dali' if prepared else 'auto'}",
              "train.batch_size=8", "train.epochs=2", "train.eval_batch_size=4",
              f"train.output_dir={run}", "train.log_every=1",
              "eval.index_test_split=false"):  # indexing (a worker pool): tested elsewhere
        args += ["--set", s]
    p = train_here(args)
    check(p)
    from clip4clip_dali.data.loaders.torchcodec_loader import torchcodec_import_error

    cpu_fallback = "reference" if torchcodec_import_error() else "torchcodec"
    assert f"loader {'dali' if prepared else cpu_fallback}" in p.stderr
    assert all(math.isfinite(x) for x in losses(run)) and len(losses(run)) >= 2
    res = json.loads((run / "eval_test.json").read_text())
    assert res["videos"] == 5 and res["captions"] > 5  # every test clip decoded and ranked
    assert res["plain"]["t2v"]["R10"] == 100.0  # 5 videos: the right one is always in the top 10
    assert 1 <= res["plain"]["t2v"]["MnR"] <= 5
