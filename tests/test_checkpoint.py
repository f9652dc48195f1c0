"""Atomic checkpoints: a SIGKILL mid-write leaves the previous file loadable; safe loading."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clip4clip_dali import checkpoint as ckpt

WRITER = r"""
import sys, torch
from clip4clip_dali.checkpoint import atomic_save
path = sys.argv[1]
atomic_save({"gen": torch.tensor(0), "w": torch.zeros(10)}, path)
print("first", flush=True)
big = torch.randn(40_000_000)  # 160 MB: each write takes a while
i = 1
while True:
    atomic_save({"gen": torch.tensor(i), "w": big}, path)
    i += 1
"""


def test_sigkill_during_write_keeps_previous(tmp_path):
    path = tmp_path / "latest.pt"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "first"
        deadline = time.time() + 60
        while not list(tmp_path.glob(".latest.pt.tmp.*")) and time.time() < deadline:
            time.sleep(0.005)
        assert list(tmp_path.glob(".latest.pt.tmp.*")), "writer never started a second write"
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    obj = ckpt.load(path)  # weights_only, must not raise
    assert "gen" in obj and "w" in obj
    # the next save cleans the dead writer's temporary file
    ckpt.atomic_save({"x": torch.ones(1)}, path)
    assert not list(tmp_path.glob(".latest.pt.tmp.*"))


def test_corrupt_and_missing_are_user_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load(bad)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nope.pt")


def test_full_state_roundtrip_weights_only(tmp_path):
    from clip4clip_dali.optim import BertAdam, LRScheduler

    model = torch.nn.Linear(3, 2)
    opt = BertAdam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = LRScheduler(opt, "warmup_cosine", 10, 0.1)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.full_state(model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=1,
                            step=5, batch_in_epoch=2, config={"train": {"lr": 0.1}})
    expect = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.atomic_save(state, tmp_path / "s.pt")
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    ckpt.set_rng_state(obj["rng"])
    assert (random.random(), np.random.rand()) == expect[:2]
    assert torch.equal(torch.rand(1), expect[2])
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(ckpt.model_state(obj))
    assert torch.equal(m2.weight, model.weight)
    opt2 = BertAdam(m2.parameters(), lr=0.1)
    opt2.load_state_dict(obj["optimizer"])
    assert obj["batch_in_epoch"] == 2 and obj["config"]["train"]["lr"] == 0.1
