"""Encoding one rank's share of an ``index`` run: probe, decode (whole videos, or each video's
time windows in a moment index), encode, stage parts (:mod:`.staging`)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .collect import Candidate
from .moments import video_windows
from .staging import stage
from .store import THUMBS, FailedVideo, VideoRecord, row_dtype
from .thumbs import make_thumbnail, thumb_name

log = logging.getLogger("clip4clip_dali")


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


def layout_of(model) -> dict:
    if model.separable:
        return {"dim": model.embed_dim}
    return {"frames": model.config.data.max_frames, "dim": model.embed_dim}


def _rows(model, layout: dict, frames: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    if "frames" not in layout:
        return model.video_embeddings(frames, mask).half().cpu().numpy()
    out = np.empty(frames.shape[0], dtype=row_dtype(layout))
    out["frames"] = frames.half().cpu().numpy()
    out["mask"] = mask.to(torch.uint8).cpu().numpy()
    return out


def _entries(infos: list, window: dict | None) -> list[tuple[int, tuple | None, tuple | None]]:
    """(share position, sampling window in whole seconds, stored (start, end)) per vector: one
    per readable video, or one per time window of it."""
    out = []
    for pos, info in enumerate(infos):
        if not info.ok:
            continue
        if window is None:
            out.append((pos, None, None))
            continue
        for start, end in video_windows(info.duration, window["window"], window["stride"]):
            out.append((pos, (start, start + window["window"]), (float(start), end)))
    return out


class _FileClips:
    """The video files of a share, probed, decoded by the model's loaders."""

    def __init__(self, model, root: Path, share: list[Candidate]):
        from .api import probe_videos

        self.model, self.paths = model, [root / c.path for c in share]
        self.infos = probe_videos(self.paths)

    def iter_frames(self, infos: list, windows: list | None):
        return self.model.iter_frames(infos, windows=windows)

    def thumbnail(self, pos: int, dest: Path, seconds: float) -> bool:
        return make_thumbnail(self.paths[pos], dest, seconds)


def encode_share(model, root: Path, out: Path, share: list[Candidate], identity: dict,
                 layout: dict, run_id: str, rank: int, flush_every: int, show: bool,
                 what: str, window: dict | None = None) -> tuple[int, list[str]]:
    """Probe, decode and encode this rank's share, staging parts. Returns (encoded, parts).
    A part holds only videos whose every window is encoded; a video with a window that fails
    to decode is listed as failed, none of its windows kept."""
    if share and share[0].member is not None:  # clips inside tar shards
        from .tar_clips import MemberClips

        clips = MemberClips(model, share)
    else:
        clips = _FileClips(model, root, share)
    (out / THUMBS).mkdir(parents=True, exist_ok=True)
    infos = clips.infos
    failed = [FailedVideo(c.path, c.size, c.mtime_ns, i.error or "no frames")
              for c, i in zip(share, infos) if not i.ok]
    for f in failed:
        log.warning("skipping unreadable video %s: %s", root / f.path, f.error)
    entries = _entries(infos, window)
    expected: dict[int, int] = {}
    for pos, _, _ in entries:
        expected[pos] = expected.get(pos, 0) + 1
    parts: list[str] = []
    pending: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    ready: list[int] = []  # share positions whose every entry is encoded, not yet staged
    done: set[int] = set()

    def flush(final: bool = False) -> None:
        nonlocal ready
        if not ready and not (final and failed):
            return
        records, feats, masks = [], [], []
        for pos in ready:
            c, info = share[pos], infos[pos]
            thumb = thumb_name(c.path, c.size, c.mtime_ns)
            ok = clips.thumbnail(pos, out / THUMBS / thumb, info.duration / 2)
            for e, f, m in sorted(pending.pop(pos), key=lambda x: x[0]):
                span = entries[e][2] or (None, None)
                records.append(VideoRecord(c.id, c.path, c.size, c.mtime_ns,
                                           round(info.duration, 3), info.frames,
                                           round(info.fps, 4), info.width, info.height,
                                           info.codec, thumb if ok else None,
                                           start=span[0], end=span[1]))
                feats.append(f)
                masks.append(m)
        rows = _rows(model, layout, torch.stack(feats), torch.stack(masks)) if feats else None
        name = f"{run_id}-r{rank}-{len(parts):05d}"
        parts.append(stage(out, name, identity, records, failed if final else [], rows, window))
        ready = []

    with _progress(show, what) as bar:
        task = bar.add_task("encode", total=len(share))
        bar.update(task, advance=len(failed))
        infos_e = [infos[pos] for pos, _, _ in entries]
        windows = None if window is None else [w for _, w, _ in entries]
        buffered = 0
        for positions, feats, masks in clips.iter_frames(infos_e, windows):
            for j, e in enumerate(positions.tolist()):
                pos = entries[e][0]
                pending.setdefault(pos, []).append((e, feats[j].cpu(), masks[j].cpu()))
                if len(pending[pos]) == expected[pos]:
                    ready.append(pos)
                    done.add(pos)
                    buffered += expected[pos]
                    bar.update(task, advance=1)
            if buffered >= flush_every:
                flush()
                buffered = 0
        lost = [i for i, info in enumerate(infos) if info.ok and i not in done]
        for i in lost:  # the loaders logged why
            failed.append(FailedVideo(share[i].path, share[i].size, share[i].mtime_ns,
                                      "failed to decode"))
            pending.pop(i, None)
        bar.update(task, advance=len(lost))
        flush(final=True)
    return len(done), parts
