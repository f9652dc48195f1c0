"""DiDeMo, ActivityNet Captions and LSMDC in their exact original formats (the file names, keys
and time units CLIP4Clip's dataloader_{didemo,activitynet,lsmdc}_retrieval.py read), over
clips DALI decodes on a CPU."""
from __future__ import annotations

import json
from pathlib import Path

from dali_fixtures import ENCODERS, smooth_clip
from layout_fixtures import CLIPS, caption

# DiDeMo's names keep their extension in the lists: 'video0.webm'.
DIDEMO_SPLITS = {"train": ["video0", "video1", "video2", "video3", "video4"],
                 "val": ["video5", "video6"], "test": ["video5", "video6", "video7"]}


def clip_files(folder: Path, ids, prefix: str = "") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (vid, spec) in enumerate(CLIPS.items()):
        if vid in ids:
            out[vid] = smooth_clip(folder / f"{prefix}{vid}{ENCODERS[spec['codec']][1]}",
                                   seed=k, **spec)
    return out


def write_didemo(root: Path) -> tuple[Path, Path]:
    """(data_path, features_path): {split}_list.txt of file names, {split}_data.json of
    {"video", "description", "times" (5-s chunks, one pair per annotator), ...}."""
    videos = root / "DiDeMo_Videos"
    files = clip_files(videos / "sub", set(sum(DIDEMO_SPLITS.values(), [])))
    for split, ids in DIDEMO_SPLITS.items():
        (root / f"{split}_list.txt").write_text("".join(f"{files[v].name}\n" for v in ids))
        items = [{"annotation_id": 100 * k + j, "description": caption(v, j),
                  "video": files[v].name, "times": [[j, j], [j, j + 1], [0, j], [j, j]],
                  "dl_link": "https://example.org/x", "train_times": [[j, j]],
                  "num_segments": 6}
                 for k, v in enumerate(ids) for j in range(3)]
        (root / f"{split}_data.json").write_text(json.dumps(items))
    return root, videos


def write_activitynet(root: Path, train=("video0", "video1", "video2", "video3", "video4"),
                      val=("video5", "video6", "video7")) -> tuple[Path, Path]:
    """train_ids.json / val_ids.json ("v_<id>"), train.json / val_1.json ({"v_<id>":
    {"duration", "timestamps", "sentences"}}); files named <id> without v_."""
    videos = root / "Activity_Videos"
    clip_files(videos, set(train) | set(val))
    for ids_name, json_name, ids in (("train_ids.json", "train.json", train),
                                     ("val_ids.json", "val_1.json", val)):
        (root / ids_name).write_text(json.dumps([f"v_{v}" for v in ids]))
        doc = {f"v_{v}": {"duration": CLIPS[v]["frames"] / CLIPS[v]["fps"] - 0.4,
                          "timestamps": [[0.2, 1.1], [0.9, 2.3]],
                          "sentences": [caption(v, 0), " " + caption(v, 1)]}
               for v in ids}
        (root / json_name).write_text(json.dumps(doc))
    return root, videos


LSMDC_FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}


def write_lsmdc(root: Path, train=("video0", "video1", "video2", "video3", "video4"),
                val=("video5", "video6"), test=("video5", "video6", "video7")
                ) -> tuple[Path, Path]:
    """Tab-separated, no header: clip id, 4 times, sentence; a clip twice in train; the clips
    in a folder per movie."""
    videos = root / "LSMDC_Videos"
    clip_files(videos / "0001_Movie", set(train) | set(val) | set(test))
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", train), ("val", val), ("test", test)):
        reps = 2 if split == "train" else 1
        lines = [f"{v}\t00.00.01.000\t00.00.03.500\t00.00.01.000\t00.00.03.500\t"
                 f"{caption(v, j)} \"quoted\"\n" for v in ids for j in range(reps)]
        (root / LSMDC_FILES[split]).write_text("".join(lines))
    return root, videos
