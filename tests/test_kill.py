"""Killing a long command (train, index, prepare) leaves no worker, forkserver or decoder behind,
and the API works from a plain script without a ``__main__`` guard.

Every process a command starts inherits its environment, so a marker variable finds them all in
``/proc`` (they are re-parented away from the command once it dies).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, require_realdata

pytest_plugins = ["reliability_fixtures"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


def marked(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds ``marker``."""
    found = []
    needle = f"C4C_KILL_TEST={marker}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            stat = (d / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            found.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            continue
    return found


def start(cmd: list[str], marker: str) -> subprocess.Popen:
    env = dict(os.environ, C4C_KILL_TEST=marker, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_when_workers_run(proc: subprocess.Popen, marker: str, workers: int, sig: int,
                          timeout: float = 120) -> list:
    """Wait until ``workers`` forkserver children run, send ``sig`` to the command (only to it),
    and return what is still alive 10 s later."""
    deadline = time.monotonic() + timeout
    while True:
        servers = [p for p, cmd in marked(marker) if "multiprocessing.forkserver" in cmd]
        if len(servers) >= 1 + workers:  # the server and its forked workers
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
            proc.kill()
            pytest.fail(f"the workers never ran (rc {proc.poll()}):\n{out[-3000:]}")
        time.sleep(0.1)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = marked(marker)
    for pid, _ in left:  # do not leave them to the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def test_sigkill_of_torchrun_training_leaves_no_rank_or_worker(tiny_clips, tmp_path):
    """torchrun starts its ranks in sessions of their own: they must end with it, and their
    loader workers with them."""
    marker = uuid.uuid4().hex
    sets = [f"data.data_path={tiny_clips}", f"data.features_path={tiny_clips / 'videos'}",
            "data.synthetic.videos=0", "data.loader=reference", "data.num_workers=2",
            "data.frame_cache=false", "train.batch_size=2", "train.epochs=1000",
            f"train.output_dir={tmp_path / 'run'}", "eval.index_test_split=false"]
    proc = start([sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node=1", "-m", "clip4clip_dali.train", "--config",
                  str(REPO / "configs" / "demo.yaml"), *[a for s in sets for a in ("--set", s)]],
                 marker)
    assert kill_when_workers_run(proc, marker, 2, signal.SIGKILL) == []


def test_sigterm_of_index_leaves_no_worker(tiny_clips, tiny_checkpoint, tmp_path):
    # the reference loader over many (hard-linked) copies of the clips, so it is still reading
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(5):
        for clip in sorted((tiny_clips / "videos").glob("*.webm")):
            os.link(clip, videos / f"{i}_{clip.name}")
    marker = uuid.uuid4().hex
    proc = start([sys.executable, "-m", "clip4clip_dali.index", "--no-progress", "--checkpoint",
                  str(tiny_checkpoint), "--videos", str(videos), "--out", str(tmp_path / "index"),
                  "--set", "data.loader=reference", "--set", "data.num_workers=2"], marker)
    assert kill_when_workers_run(proc, marker, 2, signal.SIGTERM) == []


def test_sigkill_of_prepare_leaves_no_worker(tmp_path):
    src = require_realdata() / "mini_msvd" / "MSVD_Videos"
    marker = uuid.uuid4().hex
    proc = start([sys.executable, str(REPO / "pipelines" / "prepare_msvd.py"), "--src", str(src),
                  "--out", str(tmp_path / "out"), "--workers", "2", "--no-manifest"], marker)
    assert kill_when_workers_run(proc, marker, 2, signal.SIGKILL) == []


PLAIN_SCRIPT = """
from clip4clip_dali.api import load_model
model = load_model({ckpt!r})
text = model.encode_text(["a man is playing a guitar"])
videos = model.encode_videos([{clip!r}])
print("scores", tuple((text @ videos.T).shape))
"""


def test_api_from_a_plain_script_on_an_h264_clip(tiny_checkpoint, tmp_path):
    """The README's snippet, saved as a script without a ``__main__`` guard, on a real H.264
    clip: read by the reference loader's worker processes, which must not re-run the script."""
    clip = sorted((require_realdata() / "mini_msvd" / "MSVD_Videos").glob("*.avi"))[0]
    script = tmp_path / "snippet.py"
    script.write_text(PLAIN_SCRIPT.format(ckpt=str(tiny_checkpoint), clip=str(clip)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "scores (1, 1)" in p.stdout
