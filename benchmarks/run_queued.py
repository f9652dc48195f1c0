"""Queued commands, run in turn in one process: ``gpu_all.sh --device cpu``'s stages, tests' runs.

    python benchmarks/run_queued.py QUEUE PREFIX

QUEUE holds, per stage, NUL-terminated fields: its name, the number of its command's words,
the words (what ``gpu_all.sh`` would run under the stage's timeout on a GPU). A Python command
(``python X.py ARGS``, ``python -m MODULE ARGS``: throughput.py, pytest, clip4clip_dali's CLIs)
runs in this process, as the interpreter would run it: one start-up of the interpreter, torch
and DALI for every stage instead of one a stage. Any other command runs as a subprocess. Each
stage's output (its file descriptors 1 and 2, so the libraries' own output too) goes to
``PREFIX<name>.log`` and its exit status to ``PREFIX<name>.rc``. The tests use it too, for runs
several tests read. Exits 1 when a stage failed.
"""
from __future__ import annotations

import contextlib
import gc
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

# As throughput.py: before torch starts (see there).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def read_queue(path: Path) -> list[tuple[str, list[str]]]:
    fields = [f.decode() for f in path.read_bytes().split(b"\0")[:-1]]
    stages, i = [], 0
    while i < len(fields):
        n = int(fields[i + 1])
        stages.append((fields[i], fields[i + 2:i + 2 + n]))
        i += 2 + n
    return stages


@contextlib.contextmanager
def output_to(log: Path):
    """File descriptors 1 and 2 (and sys.stdout/stderr) into ``log`` for the block."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def run_command(argv: list[str]) -> int:
    """The exit status of ``argv``: ``python X.py ARGS`` and ``python -m MODULE ARGS`` run in
    this process, as the interpreter would run them; any other command as a subprocess."""
    python = Path(argv[0]).name.startswith("python") and len(argv) >= 2
    if python and argv[1] == "-m" and len(argv) >= 3:
        args, run = [argv[2], *argv[3:]], lambda: runpy.run_module(
            argv[2], run_name="__main__", alter_sys=True)
    elif python and argv[1].endswith(".py"):
        args, run = argv[1:], lambda: runpy.run_path(argv[1], run_name="__main__")
    else:
        return subprocess.run(argv).returncode
    saved, sys.argv = sys.argv, args
    try:
        run()
        return 0
    except SystemExit as e:  # how the CLIs end
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved
        # A CLI's run_cli froze every object for its process's exit
        # (errors.skip_the_last_collection); this process goes on, so they are collectable again.
        gc.unfreeze()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    queue, prefix = Path(argv[0]), argv[1]
    failed, t0 = 0, time.monotonic()
    for name, cmd in read_queue(queue):
        print(f"== {name} ({time.monotonic() - t0:.0f} s)", flush=True)
        with output_to(Path(f"{prefix}{name}.log")):
            rc = run_command(cmd)
        Path(f"{prefix}{name}.rc").write_text(f"{rc}\n")
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
