"""The trainer on shards: SLURM's variables read where torchrun's are absent, a run killed
(SIGKILL) mid-epoch and resumed equal to an uninterrupted one, and two "nodes" (two torchrun
launches, --nnodes 2, one c10d endpoint on 127.0.0.1) training an epoch from shards."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip4clip_dali.distributed import env_ranks
from clip4clip_dali.errors import UserError
from conftest import REPO, free_port, run_here
from dali_fixtures import CPU_SPECS, data_config, make_dataset

sys.path.insert(0, str(REPO / "pipelines"))
import make_shards as ms  # noqa: E402
from clip4clip_dali.data.presampled import Sampling  # noqa: E402


def test_slurm_variables_give_the_ranks_when_torchrun_is_absent():
    assert env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                      "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}) == (1, 2, 1)  # torchrun wins
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4",
           "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "node1"}
    assert env_ranks(env) == (3, 4, 1)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["MASTER_PORT"]) == \
        ("3", "4", "2", "29500")
    with pytest.raises(UserError, match="MASTER_ADDR"):
        env_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert env_ranks({}) == (0, 1, 0)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    src = data_config(make_dataset(root, CPU_SPECS), max_frames=4, image_resolution=64)
    ms.make_shards(src, root / "shards", Sampling.from_config(src), shard_size="3", workers=1)
    return root / "shards" / "manifest.json"


def _args(manifest, out) -> list[str]:
    sets = ["data.dataset=shards", f"data.data_path={manifest}", "data.dali_threads=1",
            "data.synthetic.videos=0", "data.frame_cache=false", "train.epochs=2",
            "train.batch_size=2", "train.checkpoint_every=1", "train.log_every=1",
            "train.eval_every_epoch=false", "eval.test_at_end=false", "eval.index_test_split=false",
            f"train.output_dir={out}"]
    return ["--config", str(REPO / "configs" / "demo.yaml"),
            *[x for s in sets for x in ("--set", s)]]


def _train(manifest, out) -> subprocess.Popen:
    """The run as a process of its own, on one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "clip4clip_dali.train",
                             *_args(manifest, out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_here(manifest, out, resume=False) -> str:
    """The run in this process, on one thread as ``_train``'s (their losses are compared bit
    for bit); what it logged."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = run_here("clip4clip_dali.train", *_args(manifest, out),
                     *(["--resume", "auto"] if resume else []))
    finally:
        torch.set_num_threads(threads)
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stderr


def _step_losses(out) -> dict[int, float]:
    """Loss by step; a step logged before the kill and again after the resume: the last one."""
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def test_killed_training_resumes_from_its_mid_epoch_checkpoint_exactly(shard_set, tmp_path):
    """Killed as a process of its own; the uninterrupted run and the resume in this process."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    b = _train(shard_set, killed)
    try:
        metrics, deadline = killed / "metrics.jsonl", time.monotonic() + 120
        # step 2 logged: step 1's checkpoint is written (checkpoint_every=1 saves after logging)
        while not (metrics.is_file() and '"step": 2,' in metrics.read_text()):
            assert b.poll() is None and time.monotonic() < deadline, b.stdout.read()[-4000:]
            time.sleep(0.02)
        os.kill(b.pid, signal.SIGKILL)
        b.communicate(timeout=30)
    finally:
        if b.poll() is None:
            b.kill()
    assert b.returncode == -signal.SIGKILL
    state = torch.load(killed / "latest.pt", weights_only=True)
    # 5 videos x 2 captions = 10 pairs, batch 2: 5 steps an epoch, 10 in all
    assert state["epoch"] == 0 and 1 <= state["batch_in_epoch"] <= 4, state["batch_in_epoch"]
    assert "dali-shards" in _train_here(shard_set, killed, resume=True)
    _train_here(shard_set, full)
    want = _step_losses(full)
    assert sorted(want) == list(range(1, 11)) and _step_losses(killed) == want
    wa = torch.load(full / "latest.pt", weights_only=True)["model"]
    wb = torch.load(killed / "latest.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_nodes_train_an_epoch_from_shards(shard_set, tmp_path):
    out = tmp_path / "run"
    shards = tmp_path / "shards"  # a copy: the module's set stays whole for the other tests
    shutil.copytree(shard_set.parent, shards)
    shard_set = shards / "manifest.json"
    idx = shard_set.parent / "train-000001.idx"  # its sample 000000 (video3) loses its JSON
    lines = idx.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:4])
    idx.write_text("\n".join(lines) + "\n")
    sets = ["data.dataset=shards", f"data.data_path={shard_set}", "data.dali_threads=1",
            "data.synthetic.videos=0",
            "train.epochs=1", "train.batch_size=4", "train.eval_batch_size=4",
            "train.log_every=1", f"train.output_dir={out}", "eval.index_test_split=false",
            "train.eval_every_epoch=false"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "shards-test",
               "-m", "clip4clip_dali.train", "--config", str(REPO / "configs" / "demo.yaml"),
               *[x for s in sets for x in ("--set", s)]]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        finally:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    # 4 usable videos x 2 captions = 8 samples, global batch 4 on 2 ranks: 2 steps of 2 + 2
    assert len(losses) == 2 and all(x == x for x in losses)
    assert json.loads((out / "summary.json").read_text())["skipped_samples"] == 1
    assert "skipping sample video3 of shard" in logs[0] and "000000.json is missing" in logs[0]
    assert "2 process(es)" in logs[0] and "dali-shards" in logs[0]
    assert json.loads((out / "eval_test.json").read_text())["videos"] == 5
