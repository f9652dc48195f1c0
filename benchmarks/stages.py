"""The dry run of ``benchmarks/gpu_all.sh --device cpu``: the stages it queued, in one process.

    python benchmarks/stages.py QUEUE PREFIX

QUEUE holds, per stage, NUL-terminated fields: its name, the number of its command's words,
the words (what ``gpu_all.sh`` would run under the stage's timeout on a GPU). A
``... benchmarks/throughput.py ARGS`` command runs here, as ``suite.cli.main`` with those ARGS,
and so do ``... -m clip4clip_dali.X ARGS`` (as ``python -m`` would run it) and
``... -m pytest ARGS`` (``pytest.main``): one start-up of
the interpreter, torch and DALI for every command instead of one a command. Any other command
runs as a subprocess. The tests use it too, for runs several tests read. Each stage's output (its file descriptors 1 and 2, so the
libraries' own output too) goes to ``PREFIX<name>.log`` and its exit status to
``PREFIX<name>.rc``. Exits 1 when a stage failed.
"""
from __future__ import annotations

import contextlib
import os
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
    if len(argv) >= 2 and Path(argv[1]).name == "throughput.py":
        from suite.cli import main

        saved, sys.argv = sys.argv, argv[1:]  # main reads it, and records it as the command
        try:
            return main() or 0
        except SystemExit as e:  # argparse
            return e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            sys.argv = saved
    if argv[1:3] == ["-m", "pytest"]:
        import pytest

        return int(pytest.main(argv[3:]))
    if len(argv) >= 3 and argv[1] == "-m" and argv[2].startswith("clip4clip_dali."):
        import runpy

        saved, sys.argv = sys.argv, [argv[2], *argv[3:]]
        try:  # as ``python -m``: the module's CLI, which ends with SystemExit(code)
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            return 0
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            sys.argv = saved
    return subprocess.run(argv).returncode


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
