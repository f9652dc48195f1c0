"""Shared test fixtures: paths to the real data beside the checkout, and tiny encoded clips."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

# As the CLIs do: under pytest-xdist two workers share the cores, and OpenMP threads that
# spin while waiting would steal them from each other (set before any test loads torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("CLIP4CLIP_REALDATA", REPO.parent / "shared" / "realdata"))
MINI_MSVD = REALDATA / "mini_msvd"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or a rendezvous a test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(target, args_of_rank, ranks, timeout: float) -> None:
    """Start ``target(*args_of_rank(r))`` in a clean process per rank (the loaders' forkserver,
    torch already imported there: a spawned rank spent about 2 CPU-s importing it); every
    rank must exit 0 within ``timeout`` seconds (a hung rank is killed and fails the test)."""
    from clip4clip_dali.data.loaders.reference import worker_context

    ctx = worker_context()
    procs = [ctx.Process(target=target, args=args_of_rank(r)) for r in ranks]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, "a rank hung or failed"


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)`` run once per test run, its folder shared by every pytest-xdist worker
    (a session fixture alone runs once per worker): the first worker to get the lock makes it,
    the others wait and reuse it. A folder left half made by a failed ``make`` is made again."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def run_main(main, *argv: str) -> int:
    """A command's ``main(argv)`` run in this process as its ``python -m`` entry runs it
    (``errors.exit_code``: a UserError is one ``error:`` paragraph and exit code 2; argparse
    exits 2 by itself): the exit code; the test reads what it printed with capsys. For
    refusals and other quick paths, where a subprocess would spend its seconds importing
    torch (each command's own ``python -m`` entry is still run as a process elsewhere)."""
    from clip4clip_dali.errors import exit_code

    try:
        return exit_code(lambda: main(list(argv)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def env() -> dict:
    """The environment of a command a test starts: unbuffered, and not inside torchrun."""
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("WORLD_SIZE", None)
    return e


def run_module(module: str, *args: str, timeout: float = 300, torchrun: int = 0
               ) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a process of its own (under torchrun with ``torchrun``
    ranks), from the repository, its output captured."""
    cmd = [sys.executable, "-m", module, *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def check(p, rc: int = 0) -> None:
    """``p`` (``run_module``'s or ``run_here``'s) ended with ``rc``; else its output's tail."""
    assert p.returncode == rc, (f"rc {p.returncode}\nSTDOUT\n{p.stdout[-3000:]}\n"
                                f"STDERR\n{p.stderr[-5000:]}")


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_here(module: str, *argv: str) -> Ran:
    """``python -m <module> <argv>`` run in this process (``run_main``), what it prints
    captured: a subprocess spends about 4 CPU-s importing torch and open_clip before it does
    anything, this process has them already."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(main, *argv)
    return Ran(code, out.getvalue(), err.getvalue())


def require_realdata() -> Path:
    if not MINI_MSVD.is_dir():
        pytest.skip(f"real data not found at {REALDATA} (set CLIP4CLIP_REALDATA)")
    return REALDATA


def write_clip(path: Path, frames: int, fps=30, width=64, height=48, codec="libvpx-vp9",
               seed=0) -> Path:
    """Encode ``frames`` frames of smooth random colour fields (each frame distinct)."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(frames):
            img = np.kron(base, np.ones((8, 8, 1), np.float32))[:height, :width]
            img = np.clip(img + 40 * np.sin(i / 3 + np.arange(3)), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


_LOG = logging.getLogger("clip4clip_dali")
_PRISTINE_LOG = (list(_LOG.handlers), _LOG.propagate, _LOG.level)  # before any command ran


@pytest.fixture(autouse=True)
def restore_logging():
    """The package logger as it is before any command ran, around each test: a command's
    main() run in-process (setup_logging) gives it a handler and stops propagation, which hid
    every later test's records from caplog. Session and module fixtures run main() too
    (before this fixture), so the state is reset before the test as well as after it."""
    def reset():
        _LOG.handlers[:] = _PRISTINE_LOG[0]
        _LOG.propagate, _LOG.level = _PRISTINE_LOG[1], _PRISTINE_LOG[2]

    reset()
    yield
    reset()
