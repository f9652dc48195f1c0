"""Build or extend a video index (the format: :mod:`clip4clip_dali.archive.store`).

Each video is decoded with the loaders and the frame sampling of the model's config and encoded
once. A re-run encodes only the files that are new or whose size or modification time changed,
drops the records of files that are gone, and does not retry files that failed before unless
they changed (``retry_failed``). Under torchrun every rank encodes its share of the work and
stages it in parts (``INDEX_DIR/parts``, every ``flush_every`` videos); rank 0 then checks that
it sees every rank's parts (the folder must be shared) and commits them to the store as one
new vector part and one transaction. A run that is killed keeps its staged parts: the next run
with the same model takes them and encodes only the rest.

Only one run writes a folder at a time (a lock); a folder that is not an index is refused; an
index deletes only files it wrote and recorded.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import distributed as D
from ..config import Config
from ..errors import UserError
from .collect import Candidate, folder_candidates, split_candidates  # noqa: F401 (re-exported)
from .store import (CONFIG_FILE, DB_FILE, LEGACY_FILE, LOCK_FILE, PARTS, THUMBS, VECTORS,
                    FailedVideo, Store, VideoIndexError, VideoRecord, WriterLock,
                    atomic_write_text, row_dtype, write_part)
from .encode import encode_share, layout_of
from .moments import describe as describe_windows
from . import staging
from .video_index import VideoIndex, describe, model_identity, read_part

log = logging.getLogger("clip4clip_dali")


# ------------------------------------------------------------------------------ the run
def build_index(out: str | Path, checkpoint: str | Path, cfg: Config, root: Path,
                candidates: Sequence[Candidate], info: D.DistInfo | None = None,
                rebuild: bool = False, retry_failed: bool = False, flush_every: int = 256,
                show_progress: bool = True, source: dict | None = None,
                ann_kind: str | None = None, window: dict | None = None) -> dict:
    """Index ``candidates`` (files under ``root``) into ``out`` with the checkpoint's model.
    Every rank calls it. ``ann_kind`` (see :mod:`.ann`; None keeps the index's, ``auto`` for a
    new one). ``window`` (``moments.check_windowing``): index each video as time windows; an
    index made with other settings is refused. Returns a summary (videos, windows, encoded,
    kept, removed, failed, seconds, ann)."""
    from .api import VideoTextModel
    from ..runsetup import model_from_checkpoint

    info = info or D.DistInfo()
    t0 = time.perf_counter()
    out = Path(out)
    if not candidates:
        raise UserError(f"nothing to index under {root}: the collection is empty.")
    lock = None
    try:
        refused = None
        if info.is_main:  # before loading anything: a second run is refused at once
            try:
                lock = open_for_writing(out, rebuild)
            except UserError as e:
                refused = e
        refused = D.broadcast_object(refused)
        if refused is not None:
            raise refused
        identity = D.broadcast_object(model_identity(checkpoint, cfg) if info.is_main else None)
        model = VideoTextModel(model_from_checkpoint(checkpoint, cfg, info.device), cfg,
                               str(checkpoint))
        layout = layout_of(model)
        plan = None
        if info.is_main:
            try:
                plan = _plan(out, identity, cfg, layout, root, candidates, retry_failed, source,
                             window)
            except UserError as e:
                plan = e
        plan = D.broadcast_object(plan)
        if isinstance(plan, UserError):
            raise plan
        todo = [Candidate(**c) for c in plan["todo"]]
        share = todo[info.rank::info.world_size]
        run_id = D.broadcast_object(uuid.uuid4().hex[:8])
        what = "encoding" + (f" (rank 0's share of {info.world_size})" if info.distributed else "")
        t_enc = time.perf_counter()
        encoded, parts = encode_share(model, root, out, share, identity, layout, run_id,
                                      info.rank, max(1, flush_every),
                                      show_progress and info.is_main, what, window)
        enc_seconds = time.perf_counter() - t_enc
        counts = D.all_reduce_sum([float(encoded)], info.device)
        all_parts = _gather_objects(parts)
        summary = None
        if info.is_main:
            missing = [p for p in all_parts if not (out / PARTS / p).is_file()]
            if missing:
                raise VideoIndexError(f"rank 0 cannot see parts other ranks wrote under "
                                      f"{out / PARTS} (e.g. {missing[0]}); under torchrun on "
                                      f"several machines --out must be a folder they all share.")
            summary = _merge(out, identity, layout, root, candidates, plan, window)
            from .ann_update import update_ann

            summary["ann"] = update_ann(out, ann_kind, summary.pop("added"),
                                        summary.pop("dropped"))
            summary.update(encoded=int(counts[0]), seconds=round(time.perf_counter() - t0, 2),
                           encode_seconds=round(enc_seconds, 2))
            summary["videos_per_s"] = (round(summary["encoded"] / enc_seconds, 2)
                                       if enc_seconds > 0 else 0.0)
        return D.broadcast_object(summary)
    finally:
        if lock is not None:
            lock.release()


def _gather_objects(obj) -> list:
    if not D.is_dist():
        return list(obj)
    everyone = [None] * D.get_world_size()
    torch.distributed.all_gather_object(everyone, obj)
    return [x for part in everyone for x in part]


# ------------------------------------------------------------------------------ the folder
def open_for_writing(out: Path, rebuild: bool) -> WriterLock:
    """Refuse a path that is a file or a non-empty folder that is not an index; take the
    writer lock (refused while another run holds it); convert an old-format index; with
    ``rebuild`` delete the index's own files. Returns the held lock."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder (new or empty, or an index).")
    ours = Store.exists(out) or (out / LEGACY_FILE).is_file()
    if out.is_dir() and not ours:
        others = [p.name for p in out.iterdir() if p.name != LOCK_FILE]
        if others:
            raise UserError(f"--out {out} is a folder that is not a video index and holds "
                            f"{len(others)} entr{'y' if len(others) == 1 else 'ies'} (e.g. "
                            f"{sorted(others)[0]}); nothing was changed. Pass a new or empty "
                            f"folder, or the folder of an existing index.")
    out.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(out).acquire()
    try:
        if (out / LEGACY_FILE).is_file() and not Store.exists(out):
            from .legacy import convert

            if rebuild:
                from .legacy import remove_legacy

                remove_legacy(out)
            else:
                log.info("converting %s from the old index.json format", out)
                convert(out, locked=True)
        if rebuild and Store.exists(out):
            remove_index(out)
    except BaseException:
        lock.release()
        raise
    return lock


def remove_index(out: Path) -> None:
    """Delete what the index at ``out`` wrote and recorded (the store, its vector parts, ANN
    files and thumbnails, staged parts); nothing else in the folder."""
    store = Store.open(out, writable=True)
    try:
        names = store.owned()
    finally:
        store.close()
    for n in names:
        (out / n).unlink(missing_ok=True)
    for p in staging.staged(out):
        staging.drop_staged(p)
    for n in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", CONFIG_FILE):
        (out / n).unlink(missing_ok=True)
    for d in (PARTS, VECTORS, THUMBS):
        try:
            (out / d).rmdir()  # only when empty: a user's file in it stays
        except OSError:
            pass


def _plan(out: Path, identity: dict, cfg: Config, layout: dict, root: Path,
          candidates: Sequence[Candidate], retry_failed: bool, source: dict | None,
          window: dict | None = None) -> dict:
    """What to keep and what to encode, from the store and the staged parts; creates the store
    (with its model, root and layout) when the folder has none."""
    import yaml

    if not Store.exists(out):
        Store.create(out, {"kind": "embeddings" if "frames" not in layout else "frames",
                           "root": str(root), "model": identity, "layout": layout,
                           "source": source or {"videos": str(root)},
                           **({"window": window} if window else {})}).close()
        atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    index = VideoIndex(out)
    index.check_model(identity, "this run's checkpoint")
    if index.windowing != window:
        raise VideoIndexError(f"the index {out} holds {describe_windows(index.windowing)}, but "
                              f"this run asks for {describe_windows(window)}; run it with the "
                              f"index's settings, or index into another --out folder (or pass "
                              f"--rebuild to replace it).")
    if index.root != root:
        raise VideoIndexError(f"the index {out} is of the videos under {index.root}, not "
                              f"{root}; index them into another --out folder, or pass "
                              f"--rebuild to replace it.")
    damaged = _drop_damaged(out, index)
    known = {p: v[:2] for p, v in index.store.stamps().items()}
    known_failed = {f.path: (f.size, f.mtime_ns) for f in index.failed}
    for _, records, failed, _ in staging.read_staged(out, identity, layout, rows=False,
                                                     window=window):
        known.update({r.path: (r.size, r.mtime_ns) for r in records})
        known_failed.update({f.path: (f.size, f.mtime_ns) for f in failed})
    todo, kept, kept_failed = [], 0, 0
    for c in candidates:
        r, f = known.get(c.path), known_failed.get(c.path)
        if r == (c.size, c.mtime_ns):
            kept += 1
        elif f == (c.size, c.mtime_ns) and not retry_failed:
            kept_failed += 1
        else:
            todo.append(asdict(c))
    log.info("index %s: %d video(s) in the collection, %d already indexed, %d known unreadable "
             "(kept), %d to encode with %s%s", out, len(candidates), kept, kept_failed, len(todo),
             describe(identity), f" ({damaged} from damaged vector parts)" if damaged else "")
    return {"todo": todo, "kept": kept}


def _drop_damaged(out: Path, index: VideoIndex) -> int:
    """Records whose vector part is missing or fails its checksum are dropped (so this run
    encodes them again), with the part."""
    bad = {}
    for name, info in index.store.parts().items():
        try:
            read_part(out / VECTORS / name, info, index.layout, out)
        except VideoIndexError as e:
            log.warning("%s", str(e).split(";")[0] + "; its videos are encoded again")
            bad[name] = info
    if not bad:
        return 0
    store = Store.open(out, writable=True)
    try:
        with store.transaction():
            n = store.db.execute(f"SELECT COUNT(*) FROM videos WHERE part IN "
                                 f"({','.join('?' * len(bad))})", list(bad)).fetchone()[0]
            store.db.executemany("DELETE FROM videos WHERE part=?", ((b,) for b in bad))
            store.drop_parts(bad)
    finally:
        store.close()
    for name in bad:
        (out / VECTORS / name).unlink(missing_ok=True)
    return n


def _merge(out: Path, identity: dict, layout: dict, root: Path,
           candidates: Sequence[Candidate], plan: dict, window: dict | None = None) -> dict:
    """Rank 0: the staged parts, reduced to the files of the collection as they are now,
    appended as one vector part; records added, replaced and dropped in one transaction.
    A file's records (its windows in a moment index) are staged together and replace all of
    its old ones."""
    current = {c.path: c for c in candidates}

    def fresh(x) -> bool:
        c = current.get(x.path)
        return c is not None and (c.size, c.mtime_ns) == (x.size, x.mtime_ns)

    def fresh_stamp(path: str, stamp: tuple) -> bool:
        c = current.get(path)
        return c is not None and (c.size, c.mtime_ns) == stamp[:2]

    staged = staging.read_staged(out, identity, layout, window=window)
    new: dict[str, list[tuple[VideoRecord, np.ndarray, int]]] = {}
    new_failed: dict[str, FailedVideo] = {}
    for _, records, failed, data in staged:
        mine: dict[str, list] = {}
        for i, r in enumerate(records):
            mine.setdefault(r.path, []).append((r, data, i))
        for path, rows in mine.items():  # a later part's encoding of a file replaces an earlier
            new[path] = rows
            new_failed.pop(path, None)
        for f in failed:
            new_failed[f.path] = f
            new.pop(f.path, None)
    keep_new = sorted(p for p, rows in new.items() if fresh(rows[0][0]))
    replaced = set(keep_new)
    kept_rows = [x for p in keep_new for x in new[p]]
    store = Store.open(out, writable=True)
    try:
        old = store.stamps()  # path -> (size, mtime_ns, rids, thumb)
        old_failed = {f.path: f for f in store.failed()}
        failed_now = {p: f for p, f in {**old_failed, **new_failed}.items()
                      if fresh(f) and p not in replaced
                      and not (p in old and fresh_stamp(p, old[p]))}
        dropped = [(p, v[2], v[3]) for p, v in old.items()
                   if p in new_failed or p in replaced or not fresh_stamp(p, v)]
        if not keep_new and len(old) == len(dropped):
            what = "; ".join(f"{f.path}: {f.error}" for f in list(failed_now.values())[:3])
            raise UserError(f"none of the {len(candidates)} video(s) under {root} could be "
                            f"decoded ({what}); nothing was indexed. Check the files (python -m "
                            f"clip4clip_dali.data.manifest) or transcode them.")
        part = None
        if keep_new:
            rows = np.stack([d[i] for _, d, i in kept_rows]) if "frames" not in layout \
                else np.array([d[i] for _, d, i in kept_rows], dtype=row_dtype(layout))
            (out / VECTORS).mkdir(exist_ok=True)
            number = 1 + max([int(n[5:-4]) for n in store.parts()] + [store.meta("parts_made", 0)])
            part = write_part(out / VECTORS / f"part-{number}.f16", rows)
        with store.transaction():
            store.drop_paths(p for p, _, _ in dropped)
            if part:  # numbers are never reused: a reader may still map an older part
                store.add_part(part)
                store.set_meta(parts_made=number)
                store.put_records((r for r, _, _ in kept_rows), part["name"],
                                  range(len(kept_rows)))
            store.put_members((p, current[p].member) for p in keep_new if current[p].member)
            store.set_failed(failed_now.values(), keep=set(failed_now))
            store.own({f"{THUMBS}/{new[p][0][0].thumb}" for p in keep_new if new[p][0][0].thumb})
            store.set_meta(updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        added = store.db.execute("SELECT rid FROM videos WHERE part=?",
                                 (part["name"],)).fetchall() if part else []
        _collect_garbage(out, store, dropped, store.parts() if dropped else {})
        videos, windows = store.count_files(), store.count()
    finally:
        store.close()
    for p, *_ in staged:
        staging.drop_staged(p)
    try:
        (out / PARTS).rmdir()
    except OSError:
        pass
    failed_list = sorted(failed_now.values(), key=lambda f: f.path)
    if failed_list:
        log.warning("%d unreadable video(s) left out of the index (kept in %s, table failed), "
                    "e.g. %s: %s", len(failed_list), out, failed_list[0].path,
                    failed_list[0].error)
    summary = {"videos": videos, "kept": plan["kept"], "failed": [asdict(f) for f in failed_list],
               "removed": sum(1 for p, _, _ in dropped if p not in current), "index": str(out),
               "kind": "frames" if "frames" in layout else "embeddings",
               "added": [a[0] for a in added],
               "dropped": [r for _, rids, _ in dropped for r in rids]}
    if window:
        summary["windows"] = windows
    return summary


def _collect_garbage(out: Path, store: Store, dropped: list[tuple[str, list[int], str | None]],
                     parts_before: dict[str, dict]) -> None:
    """After the commit: the thumbnails of dropped records and the vector parts no record uses
    any more (both recorded as the index's own)."""
    db = store.db
    gone = sorted({f"{THUMBS}/{t}" for _, _, t in dropped if t and db.execute(
        "SELECT 1 FROM videos WHERE thumb=? LIMIT 1", (t,)).fetchone() is None})
    empty = [n for n in parts_before if db.execute(
        "SELECT 1 FROM videos WHERE part=? LIMIT 1", (n,)).fetchone() is None]
    with store.transaction():
        store.disown(gone)
        store.drop_parts(empty)
    for n in gone + [f"{VECTORS}/{n}" for n in empty]:
        (out / n).unlink(missing_ok=True)
