"""host_memory: a freed batch-sized block stays in the heap for the next batch (no fresh pages)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PROBE = """
import ctypes, os, sys
from clip4clip_dali.data.loaders.host_memory import reuse_freed_batches
tuned = reuse_freed_batches() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = 58 << 20  # one float batch of 8 x 12 x 3 x 224 x 224
p = libc.malloc(size)
ctypes.memset(p, 1, size)
before = rss()
libc.free(p)
q = libc.malloc(size)
print(tuned, before - rss(), p == q)
"""


def probe(*args: str, env: dict | None = None) -> list[str]:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env={**e, **(env or {})})
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_freed_batch_blocks_are_kept_and_reused_once_tuned():
    tuned, returned, same = probe("tune")
    assert tuned == "True" and int(returned) < (8 << 20) and same == "True"
    # glibc's default: the block is unmapped on free, its pages given back (and faulted anew)
    tuned, returned, _ = probe("plain")
    assert tuned == "False" and int(returned) > (50 << 20)
    # the user's own malloc settings win
    assert probe("tune", env={"MALLOC_TRIM_THRESHOLD_": "1"})[0] == "False"
