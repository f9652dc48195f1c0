"""Indexes of the first format (``index.json`` + ``vectors-<gen>.safetensors``), converted once
to the store: ``python -m clip4clip_dali.index --convert INDEX_DIR`` (an ``index`` run into
such a folder converts it first)."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from .store import (LEGACY_FILE, THUMBS, VECTORS, FailedVideo, Store, VideoIndexError,
                    VideoRecord, WriterLock, row_dtype, write_part)

LEGACY_FORMAT = 1


def _read(out: Path) -> dict:
    path = out / LEGACY_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VideoIndexError(f"{path} could not be read ({e}); rebuild the index with "
                              f"--rebuild.") from None
    if not isinstance(meta, dict) or meta.get("format") != LEGACY_FORMAT or "videos" not in meta:
        raise VideoIndexError(f"{path} is not a clip4clip_dali video index of format "
                              f"{LEGACY_FORMAT}; rebuild it with --rebuild.")
    return meta


def convert(out: Path, locked: bool = False) -> int:
    """Write the store of the old index at ``out``, then delete the old files. Returns the
    number of videos."""
    from safetensors.numpy import load_file

    if Store.exists(out):
        raise VideoIndexError(f"{out} is already of the new format (index.sqlite); nothing to "
                              f"convert.")
    lock = None if locked else WriterLock(out).acquire()
    try:
        meta = _read(out)
        try:
            tensors = load_file(str(out / meta["vectors"]))
        except Exception as e:  # missing, truncated
            raise VideoIndexError(f"{out / meta['vectors']} could not be read ({e}); the index "
                                  f"is damaged: rebuild it with --rebuild.") from None
        names = {f.name for f in fields(VideoRecord)} - {"rid"}
        records = [VideoRecord(**{k: v for k, v in r.items() if k in names})
                   for r in meta["videos"]]
        if meta["kind"] == "embeddings":
            emb = tensors["embeddings"]
            layout = {"dim": int(emb.shape[1])}
            rows = emb.astype(np.float16)
        else:
            fr = tensors["frames"]
            layout = {"frames": int(fr.shape[1]), "dim": int(fr.shape[2])}
            rows = np.empty(len(fr), dtype=row_dtype(layout))
            rows["frames"], rows["mask"] = fr, tensors["frame_mask"]
        if len(rows) != len(records):
            raise VideoIndexError(f"{out / meta['vectors']} holds {len(rows)} rows for "
                                  f"{len(records)} videos; rebuild the index with --rebuild.")
        (out / VECTORS).mkdir(exist_ok=True)
        part = write_part(out / VECTORS / "part-1.f16", rows)
        store = Store.create(out, {"kind": meta["kind"], "root": meta["root"],
                                   "model": meta["model"], "layout": layout,
                                   "source": meta.get("source") or {"videos": meta["root"]},
                                   "converted_from": LEGACY_FILE})
        try:
            with store.transaction():
                store.add_part(part)
                store.put_records(records, part["name"], range(len(records)))
                store.set_failed(FailedVideo(**f) for f in meta.get("failed", []))
                store.own(f"{THUMBS}/{r.thumb}" for r in records if r.thumb)
        finally:
            store.close()
        (out / meta["vectors"]).unlink(missing_ok=True)
        (out / LEGACY_FILE).unlink()
        return len(records)
    finally:
        if lock is not None:
            lock.release()


def remove_legacy(out: Path) -> None:
    """--rebuild of an old-format index: its own files (the thumbnails it lists, its vectors,
    index.json); nothing else."""
    meta = _read(out)
    for r in meta["videos"]:
        if r.get("thumb"):
            (out / THUMBS / r["thumb"]).unlink(missing_ok=True)
    (out / meta["vectors"]).unlink(missing_ok=True)
    (out / LEGACY_FILE).unlink()
