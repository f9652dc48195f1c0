"""Build or extend a video index (the format: :mod:`clip4clip_dali.video_index`).

Each video is decoded with the loaders and the frame sampling of the model's config and encoded
once. A re-run encodes only the files that are new or whose size or modification time changed,
drops the records of files that are gone, and does not retry files that failed before unless
they changed (``retry_failed``). Under torchrun every rank encodes its share of the work and
writes it in parts (``INDEX_DIR/parts``, every ``flush_every`` videos); rank 0 then checks that
it sees every rank's parts (the folder must be shared) and merges them. A run that is killed
keeps its parts: the next run with the same model takes them and encodes only the rest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import distributed as D
from ..config import Config
from ..errors import UserError
from .video_index import (CONFIG_FILE, FORMAT, INDEX_FILE, PARTS, THUMBS, FailedVideo,
                          VideoIndex, VideoIndexError, VideoRecord, atomic_write_text,
                          describe, load_tensors, model_identity, save_tensors, write_index)

log = logging.getLogger("clip4clip_dali")

THUMB_SIZE = 192  # longest side, pixels


@dataclass
class Candidate:
    """A file of the collection: its id, its path relative to the root, size and mtime."""

    id: str
    path: str
    size: int
    mtime_ns: int


# ------------------------------------------------------------------------------ collections
def folder_candidates(videos: str | Path) -> tuple[Path, list[Candidate]]:
    """Every video file under ``videos`` (any container FFmpeg knows by its extension, any
    sub-folder). The id is the path without its extension (with it when two files differ only
    by extension)."""
    from ..data.msvd import VIDEO_EXTENSIONS

    root = Path(videos).resolve()
    if not root.is_dir():
        raise UserError(f"--videos {videos}: no such folder; pass the folder that holds the "
                        f"videos to index.")
    rels = []
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                rels.append((Path(dirpath) / name).relative_to(root).as_posix())
    stem = {r: r.rsplit(".", 1)[0] for r in rels}
    clashes = Counter(stem.values())
    out = [_candidate(root, r, stem[r] if clashes[stem[r]] == 1 else r) for r in sorted(rels)]
    if not out:
        raise UserError(f"no video files under {root} (looked for "
                        f"{', '.join(sorted(VIDEO_EXTENSIONS))}); nothing to index.")
    return root, [c for c in out if c is not None]


def split_candidates(cfg: Config, split: str) -> tuple[Path, list[Candidate]]:
    """The videos of a split of the config's dataset (any layout), relative to the deepest
    folder that holds them all (a JSONL file's videos need not lie under data.features_path)."""
    from ..data.dataset import load_split

    s = load_split(cfg.data, split, probe=False)
    paths = [Path(p).resolve() for p in s.video_paths]
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else \
        Path(cfg.data.features_path).resolve()
    out = [_candidate(root, p.relative_to(root).as_posix(), vid)
           for vid, p in zip(s.video_ids, paths)]
    return root, [c for c in out if c is not None]


def _candidate(root: Path, rel: str, vid: str) -> Candidate | None:
    try:
        st = (root / rel).stat()
    except OSError as e:
        log.warning("skipping %s: %s", root / rel, e.strerror)
        return None
    return Candidate(vid, rel, st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------------ thumbnails
def thumb_name(rel: str) -> str:
    return hashlib.sha1(rel.encode()).hexdigest()[:16] + ".jpg"


def make_thumbnail(src: Path, dest: Path, seconds: float) -> bool:
    """A JPEG of the frame at ``seconds`` (the nearest keyframe before it, then decoded up to
    it), at most THUMB_SIZE pixels on its long side. False when no frame could be read."""
    import av

    try:
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            image = None
            if seconds > 0 and stream.time_base:
                try:
                    container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
                except av.error.FFmpegError:
                    container.seek(0)
            for frame in container.decode(stream):
                image = frame.to_image()
                if frame.time is None or frame.time >= seconds:
                    break
        if image is None:
            return False
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
        image.convert("RGB").save(tmp, "JPEG", quality=82)
        os.replace(tmp, dest)
        return True
    except Exception as e:  # a thumbnail is a nicety: never fail the index for it
        log.warning("no thumbnail for %s (%s)", src, e)
        return False


# ------------------------------------------------------------------------------ parts
def _part_files(out: Path) -> list[Path]:
    d = out / PARTS
    return sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) if d.is_dir() else []


def _write_part(out: Path, name: str, identity: dict, records: list[VideoRecord],
                failed: list[FailedVideo], tensors: dict[str, torch.Tensor]) -> Path:
    d = out / PARTS
    d.mkdir(parents=True, exist_ok=True)
    if records:
        save_tensors(tensors, d / f"{name}.safetensors")
    doc = {"model_sha256": identity["sha256"], "config_sha256": identity["config_sha256"],
           "records": [asdict(r) for r in records], "failed": [asdict(f) for f in failed]}
    atomic_write_text(d / f"{name}.json", json.dumps(doc))  # last: the part is complete
    return d / f"{name}.json"


def _read_parts(out: Path, identity: dict, tensors: bool = True
                ) -> list[tuple[list[VideoRecord], list[FailedVideo], dict[str, torch.Tensor]]]:
    """Complete parts written with this model, oldest first (their vectors unless not
    ``tensors``); parts of another model are removed."""
    parts = []
    for p in _part_files(out):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            mine = (doc["model_sha256"] == identity["sha256"]
                    and doc["config_sha256"] == identity["config_sha256"])
        except (OSError, ValueError, KeyError):
            mine = False
        if not mine:
            log.warning("discarding %s (another model's, or unreadable)", p)
            p.unlink(missing_ok=True)
            p.with_suffix(".safetensors").unlink(missing_ok=True)
            continue
        records = [VideoRecord(**r) for r in doc["records"]]
        vectors = load_tensors(p.with_suffix(".safetensors")) if records and tensors else {}
        parts.append((records, [FailedVideo(**f) for f in doc["failed"]], vectors))
    return parts


# ------------------------------------------------------------------------------ encoding
def _progress(enabled: bool, what: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0.0:.1f} videos/s")

    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                    console=Console(stderr=True))


def _encode_share(model, root: Path, out: Path, share: list[Candidate], identity: dict,
                  run_id: str, rank: int, flush_every: int, show: bool, what: str) -> tuple[int, list[str]]:
    """Probe, decode and encode this rank's share, writing parts. Returns (encoded, parts)."""
    from .api import probe_videos

    (out / THUMBS).mkdir(parents=True, exist_ok=True)
    infos = probe_videos([root / c.path for c in share])
    failed = [FailedVideo(c.path, c.size, c.mtime_ns, i.error or "no frames")
              for c, i in zip(share, infos) if not i.ok]
    for f in failed:
        log.warning("skipping unreadable video %s: %s", root / f.path, f.error)
    parts: list[str] = []
    buf: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    done: set[int] = set()

    def flush(final: bool = False) -> None:
        nonlocal buf
        if not buf and not (final and failed):
            return
        records, rows = [], []
        for pos, f, m in buf:
            c, info = share[pos], infos[pos]
            thumb = thumb_name(c.path)
            ok = make_thumbnail(root / c.path, out / THUMBS / thumb, info.duration / 2)
            records.append(VideoRecord(c.id, c.path, c.size, c.mtime_ns, round(info.duration, 3),
                                       info.frames, round(info.fps, 4), info.width, info.height,
                                       info.codec, thumb if ok else None))
            rows.append((f, m))
        tensors = {}
        if rows:
            frames = torch.stack([f for f, _ in rows])
            mask = torch.stack([m for _, m in rows])
            if model.separable:
                tensors["embeddings"] = model.video_embeddings(frames, mask).half()
            else:
                tensors["frames"] = frames.half()
                tensors["frame_mask"] = mask.to(torch.uint8)
        name = f"{run_id}-r{rank}-{len(parts):05d}"
        parts.append(_write_part(out, name, identity, records,
                                 failed if final else [], tensors).name)
        buf = []

    with _progress(show, what) as bar:
        task = bar.add_task("encode", total=len(share))
        bar.update(task, advance=len(failed))
        for positions, feats, masks in model.iter_frames(infos):
            for j, pos in enumerate(positions.tolist()):
                buf.append((pos, feats[j].cpu(), masks[j].cpu()))
                done.add(pos)
            bar.update(task, advance=len(positions))
            if len(buf) >= flush_every:
                flush()
        lost = [i for i, info in enumerate(infos) if info.ok and i not in done]
        for i in lost:  # the loaders logged why
            failed.append(FailedVideo(share[i].path, share[i].size, share[i].mtime_ns,
                                      "failed to decode"))
        bar.update(task, advance=len(lost))
        flush(final=True)
    return len(done), parts


# ------------------------------------------------------------------------------ the run
def build_index(out: str | Path, checkpoint: str | Path, cfg: Config, root: Path,
                candidates: Sequence[Candidate], info: D.DistInfo | None = None,
                rebuild: bool = False, retry_failed: bool = False, flush_every: int = 256,
                show_progress: bool = True, source: dict | None = None) -> dict:
    """Index ``candidates`` (files under ``root``) into ``out`` with the checkpoint's model.
    Every rank calls it. Returns a summary (videos, encoded, kept, removed, failed, seconds)."""
    from .api import VideoTextModel
    from ..runsetup import model_from_checkpoint

    info = info or D.DistInfo()
    t0 = time.perf_counter()
    out = Path(out)
    if not candidates:
        raise UserError(f"nothing to index under {root}: the collection is empty.")
    identity = D.broadcast_object(model_identity(checkpoint, cfg) if info.is_main else None)
    model = VideoTextModel(model_from_checkpoint(checkpoint, cfg, info.device), cfg,
                           str(checkpoint))
    plan = None
    if info.is_main:
        try:
            plan = _plan(out, identity, root, candidates, rebuild, retry_failed)
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
    encoded, parts = _encode_share(model, root, out, share, identity, run_id, info.rank,
                                   max(1, flush_every), show_progress and info.is_main, what)
    enc_seconds = time.perf_counter() - t_enc
    counts = D.all_reduce_sum([float(encoded)], info.device)
    all_parts = _gather_objects(parts)
    summary = None
    if info.is_main:
        missing = [p for p in all_parts if not (out / PARTS / p).is_file()]
        if missing:
            raise VideoIndexError(f"rank 0 cannot see parts other ranks wrote under {out / PARTS} "
                                  f"(e.g. {missing[0]}); under torchrun on several machines "
                                  f"--out must be a folder they all share.")
        summary = _merge(out, identity, cfg, root, candidates, plan, source)
        summary.update(encoded=int(counts[0]), seconds=round(time.perf_counter() - t0, 2),
                       encode_seconds=round(enc_seconds, 2))
        summary["videos_per_s"] = round(summary["encoded"] / enc_seconds, 2) if enc_seconds > 0 else 0.0
    summary = D.broadcast_object(summary)
    return summary


def _gather_objects(obj) -> list:
    if not D.is_dist():
        return list(obj)
    everyone = [None] * D.get_world_size()
    torch.distributed.all_gather_object(everyone, obj)
    return [x for part in everyone for x in part]


def _plan(out: Path, identity: dict, root: Path, candidates: Sequence[Candidate],
          rebuild: bool, retry_failed: bool) -> dict:
    """What to keep and what to encode, from the index and the parts already there."""
    known: dict[str, VideoRecord] = {}
    known_failed: dict[str, FailedVideo] = {}
    if (out / INDEX_FILE).exists() and not rebuild:
        index = VideoIndex(out)
        index.check_model(identity, "this run's checkpoint")
        if index.root != root:
            raise VideoIndexError(f"the index {out} is of the videos under {index.root}, not "
                                  f"{root}; index them into another --out folder, or pass "
                                  f"--rebuild to replace it.")
        known = {r.path: r for r in index.records}
        known_failed = {f.path: f for f in index.failed}
    elif rebuild and out.exists():
        for name in (INDEX_FILE, PARTS, THUMBS):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in out.glob("vectors-*.safetensors"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for records, failed, _ in _read_parts(out, identity, tensors=False):
        known.update({r.path: r for r in records})
        known_failed.update({f.path: f for f in failed})
    todo, kept, kept_failed = [], 0, 0
    for c in candidates:
        r, f = known.get(c.path), known_failed.get(c.path)
        if r is not None and (r.size, r.mtime_ns) == (c.size, c.mtime_ns):
            kept += 1
        elif f is not None and (f.size, f.mtime_ns) == (c.size, c.mtime_ns) and not retry_failed:
            kept_failed += 1
        else:
            todo.append(asdict(c))
    log.info("index %s: %d video(s) in the collection, %d already indexed, %d known unreadable "
             "(kept), %d to encode with %s", out, len(candidates), kept, kept_failed, len(todo),
             describe(identity))
    return {"todo": todo, "kept": kept}


def _merge(out: Path, identity: dict, cfg: Config, root: Path, candidates: Sequence[Candidate],
           plan: dict, source: dict | None) -> dict:
    """Rank 0: the index's records and every part, reduced to the files of the collection as
    they are now, written as a new generation."""
    import yaml

    current = {c.path: c for c in candidates}
    rows: dict[str, tuple[VideoRecord, dict[str, torch.Tensor]]] = {}
    failed: dict[str, FailedVideo] = {}
    old_meta = {}
    if (out / INDEX_FILE).exists():
        index = VideoIndex(out)
        old_meta = index.meta
        vec = index.vectors() if len(index) else {}
        for i, r in enumerate(index.records):
            rows[r.path] = (r, {k: v[i] for k, v in vec.items()})
        failed = {f.path: f for f in index.failed}
    for records, part_failed, tensors in _read_parts(out, identity):
        for i, r in enumerate(records):
            rows[r.path] = (r, {k: v[i] for k, v in tensors.items()})
            failed.pop(r.path, None)
        for f in part_failed:
            failed[f.path] = f
            rows.pop(f.path, None)

    def fresh(x) -> bool:
        c = current.get(x.path)
        return c is not None and (c.size, c.mtime_ns) == (x.size, x.mtime_ns)

    before = {r.path for r in (VideoRecord(**v) for v in old_meta.get("videos", []))}
    keep = sorted((p for p, (r, _) in rows.items() if fresh(r)))
    failed_now = sorted((f for f in failed.values() if fresh(f) and f.path not in keep),
                        key=lambda f: f.path)
    if not keep:
        what = "; ".join(f"{f.path}: {f.error}" for f in failed_now[:3])
        raise UserError(f"none of the {len(candidates)} video(s) under {root} could be decoded "
                        f"({what}); nothing was indexed. Check the files (python -m "
                        f"clip4clip_dali.data.manifest) or transcode them.")
    records = [rows[p][0] for p in keep]
    names = rows[keep[0]][1].keys()
    tensors = {k: torch.stack([rows[p][1][k] for p in keep]) for k in names}
    kind = "embeddings" if "embeddings" in tensors else "frames"
    meta = {k: v for k, v in old_meta.items() if k not in ("videos", "failed")}
    meta.update(format=FORMAT, kind=kind, root=str(root), model=identity,
                source=source or meta.get("source") or {"videos": str(root)},
                created=meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_index(out, meta, records, failed_now, tensors)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    used = {r.thumb for r in records if r.thumb}
    for t in (out / THUMBS).glob("*.jpg"):
        if t.name not in used:
            t.unlink(missing_ok=True)
    if failed_now:
        log.warning("%d unreadable video(s) left out of the index (listed in %s under \"failed\"), "
                    "e.g. %s: %s", len(failed_now), out / INDEX_FILE, failed_now[0].path,
                    failed_now[0].error)
    return {"videos": len(records), "kept": plan["kept"], "failed": [asdict(f) for f in failed_now],
            "removed": len(before - set(current)), "index": str(out), "kind": kind}

