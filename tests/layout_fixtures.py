"""Datasets in the MSR-VTT and JSON Lines layouts, written by the tests (clips DALI decodes on
a CPU: VP9 and MJPEG)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from dali_fixtures import ENCODERS, smooth_clip

# id -> clip spec; two codecs, two containers, portrait and landscape.
CLIPS = {f"video{k}": spec for k, spec in enumerate([
    dict(frames=20, fps=10, codec="vp9"),
    dict(frames=15, fps=5, codec="mjpeg", width=48, height=64),
    dict(frames=30, fps=10, codec="vp9", width=80, height=48),
    dict(frames=24, fps=8, codec="mjpeg"),
    dict(frames=12, fps=6, codec="vp9", width=48, height=48),
    dict(frames=20, fps=10, codec="mjpeg"),
    dict(frames=18, fps=6, codec="vp9"),
    dict(frames=16, fps=8, codec="mjpeg", width=64, height=64),
])}


def write_clips(folder: Path, ids=None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (vid, spec) in enumerate(CLIPS.items()):
        if ids is not None and vid not in ids:
            continue
        out[vid] = smooth_clip(folder / f"{vid}{ENCODERS[spec['codec']][1]}", seed=k, **spec)
    return out


def caption(vid: str, j: int) -> str:
    return f"{vid} shows scene number {j}"


def write_msrvtt(root: Path, train_ids, test_ids, captions_per_video: int = 3,
                 train_csv: str = "MSRVTT_train.9k.csv") -> Path:
    """CLIP4Clip's msrvtt_data files for these ids: MSRVTT_data.json (every video, its
    sentences), the train CSV (``video_id``) and the 1k-A test CSV (key, vid_key, video_id,
    sentence: one row per test video, its caption 0)."""
    root.mkdir(parents=True, exist_ok=True)
    ids = list(train_ids) + list(test_ids)
    videos = [{"category": k % 20, "url": f"https://www.youtube.com/watch?v=x{k}",
               "video_id": v, "start time": 1.0, "end time": 11.0,
               "split": "train" if v in train_ids else "test", "id": k}
              for k, v in enumerate(ids)]
    sentences = [{"caption": caption(v, j), "video_id": v, "sen_id": k * captions_per_video + j}
                 for k, v in enumerate(ids) for j in range(captions_per_video)]
    (root / "MSRVTT_data.json").write_text(json.dumps(
        {"info": {"contributor": "tests", "year": "2016"}, "videos": videos,
         "sentences": sentences}))
    with open(root / train_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id"])
        w.writerows([v] for v in train_ids)
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for k, v in enumerate(test_ids):
            w.writerow([f"ret{k}", f"msr{v[5:]}", v, caption(v, 0)])
    return root


def write_lines(path: Path, records: list) -> Path:
    """A .jsonl (records as dicts, or raw text lines) or a .csv (records as dicts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        keys = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(records)
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                for r in records))
    return path


def own_clips_records(clips: dict[str, Path], root: Path, splits: dict[str, str] | None = None,
                      captions_per_video: int = 2) -> list[dict]:
    """One record per caption, paths relative to ``root``, split given where ``splits`` is."""
    recs = []
    for vid, path in clips.items():
        for j in range(captions_per_video):
            r = {"video": path.relative_to(root).as_posix(), "caption": caption(vid, j)}
            if splits and vid in splits:
                r["split"] = splits[vid]
            recs.append(r)
    return recs
