"""Staged parts of an ``index`` run (``INDEX_DIR/parts``): what each rank encoded, written every
``flush_every`` videos so that a killed run resumes, committed to the store by rank 0."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .store import PARTS, FailedVideo, VideoIndexError, VideoRecord, atomic_write_text, write_part
from .video_index import read_part

log = logging.getLogger("clip4clip_dali")


def staged(out: Path) -> list[Path]:
    d = out / PARTS
    return sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) if d.is_dir() else []


def stage(out: Path, name: str, identity: dict, records: list[VideoRecord],
          failed: list[FailedVideo], rows: np.ndarray | None, window: dict | None = None) -> str:
    d = out / PARTS
    d.mkdir(parents=True, exist_ok=True)
    part = write_part(d / f"{name}.f16", rows) if rows is not None and len(rows) else None
    doc = {"model_sha256": identity["sha256"], "config_sha256": identity["config_sha256"],
           "records": [asdict(r) for r in records], "failed": [asdict(f) for f in failed],
           "part": part, "window": window}
    atomic_write_text(d / f"{name}.json", json.dumps(doc))  # last: the part is complete
    return f"{name}.json"


def read_staged(out: Path, identity: dict, layout: dict | None, rows: bool = True,
                window: dict | None = None) -> list[tuple]:
    """Complete staged parts written with this model (and these ``window`` settings), oldest
    first: (json path, records, failed, rows or None). Parts of another model or windowing,
    unreadable or damaged ones are dropped."""
    found = []
    for p in staged(out):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            mine = (doc["model_sha256"] == identity["sha256"]
                    and doc["config_sha256"] == identity["config_sha256"]
                    and doc.get("window") == window)
            records = [VideoRecord(**r) for r in doc["records"]]
            data = None
            if rows and records and mine:
                data = read_part(p.with_suffix(".f16"), doc["part"], layout, out)
            if records and not doc["part"]:
                raise ValueError("records without vectors")
        except (OSError, ValueError, KeyError, TypeError, VideoIndexError):
            mine = False
        if not mine:
            log.warning("discarding the staged part %s (another model's or windowing's, "
                        "unreadable or damaged)", p)
            drop_staged(p)
            continue
        found.append((p, records, [FailedVideo(**f) for f in doc["failed"]], data))
    return found


def drop_staged(p: Path) -> None:
    p.with_suffix(".f16").unlink(missing_ok=True)
    p.unlink(missing_ok=True)

