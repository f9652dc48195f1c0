"""Helpers of the reliability tests: was anything a user owns touched?"""
from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def snapshot(*roots: Path) -> dict:
    """Every file under ``roots``: (bytes, mtime_ns), to assert that nothing was touched."""
    out = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = Path(dirpath) / name
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def old_mtime(path: Path) -> None:
    """Set ``path``'s times an hour back, so a rewrite within the test shows in its mtime."""
    t = time.time() - 3600
    os.utime(path, (t, t))
