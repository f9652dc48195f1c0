"""Pre-sampled clip sets: folders of clips that hold only the frames CLIP4Clip samples.

``pipelines/prepare_msvd.py --presample`` writes, per video, a clip of exactly the frames
``sampling.frame_indices`` picks (natural order), each already resized (short side R, bicubic)
and centre-cropped to R x R, and records what it sampled with in a sidecar beside the clips
(``<features_path>/.clip4clip_presampled.json``)::

    {"version": 1, "sampling": {"feature_framerate": 1, "max_frames": 12,
     "slice_framepos": 2, "image_resolution": 224}, "codec": "vp9", "crf": ...,
     "videos": {"<id>": {"frames": 12, "source_frames": 210, "source_fps": 29.97, ...}}}

The loaders (DALI, reference, frame cache) read such a set whole: every frame of the file is a
sample, no resize, no crop, only normalisation and padding. A config whose sampling or
resolution differs from the recorded one is refused (``check_sampling``) before anything is
decoded: its frames would silently be other frames than the config asks for.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import UserError
from .sampling import frame_indices, window_frame_indices

if TYPE_CHECKING:
    from ..config import DataConfig
    from .msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")

SIDECAR = ".clip4clip_presampled.json"
VERSION = 1


@dataclass(frozen=True)
class Sampling:
    """The data keys that decide which frames a clip contributes and at what size."""

    feature_framerate: int = 1
    max_frames: int = 12
    slice_framepos: int = 2
    image_resolution: int = 224

    @classmethod
    def from_config(cls, data_cfg: "DataConfig") -> "Sampling":
        return cls(**{f.name: int(getattr(data_cfg, f.name)) for f in dataclasses.fields(cls)})

    @classmethod
    def from_json(cls, d: dict) -> "Sampling":
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls)})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def indices(self, frames: int, fps: float) -> np.ndarray:
        return frame_indices(frames, fps, self.feature_framerate, self.max_frames,
                             self.slice_framepos)

    def describe(self) -> str:
        return ", ".join(f"data.{k}={v}" for k, v in self.to_json().items())


@dataclass
class PresampledSet:
    root: Path
    sampling: Sampling
    codec: str
    videos: dict  # id -> {"frames": n, ...}
    extra: dict  # everything else the sidecar records (crf, tool, ...)


def sidecar_path(features_path: str | os.PathLike) -> Path:
    return Path(features_path) / SIDECAR


_CACHE: dict = {}


def read_presampled(features_path: str | os.PathLike) -> Optional[PresampledSet]:
    """The record of the pre-sampled set at ``features_path``, or None for ordinary clips."""
    path = sidecar_path(features_path)
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
        sampling = Sampling.from_json(doc["sampling"])
        videos = {str(k): dict(v) for k, v in doc["videos"].items()}
        for vid, rec in videos.items():
            rec["frames"] = int(rec["frames"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a readable pre-sampled set record ({type(e).__name__}: "
                        f"{e}); prepare the clips again with `python pipelines/prepare_msvd.py "
                        f"--presample --src <raw videos> --out {Path(features_path)}`.") from None
    extra = {k: v for k, v in doc.items() if k not in ("version", "sampling", "videos", "codec")}
    out = PresampledSet(Path(features_path), sampling, str(doc.get("codec", "")), videos, extra)
    _CACHE.clear()
    _CACHE[key] = out
    return out


def write_presampled(features_path: str | os.PathLike, sampling: Sampling, codec: str,
                     videos: dict, **extra) -> Path:
    """Write the record atomically (temp file + rename)."""
    path = sidecar_path(features_path)
    doc = {"version": VERSION, "sampling": sampling.to_json(), "codec": codec, **extra,
           "videos": {k: videos[k] for k in sorted(videos)}}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sampling_mismatch(recorded: Sampling, wanted: Sampling) -> list[str]:
    """``key: recorded -> wanted`` for each key that differs."""
    return [f"data.{k} is {v} there but {getattr(wanted, k)} in the config"
            for k, v in recorded.to_json().items() if getattr(wanted, k) != v]


def set_root(data_cfg: "DataConfig") -> Path:
    """Where a dataset's pre-sampled record would be: beside the dataset file for JSON Lines
    and CSV (``prepare_msvd.py`` writes the set's file into the set's folder), else
    ``data.features_path``."""
    if data_cfg.dataset == "jsonl":
        return Path(data_cfg.data_path).parent
    return Path(data_cfg.features_path)


def check_sampling(data_cfg: "DataConfig") -> Optional[PresampledSet]:
    """The pre-sampled set the dataset reads (None for ordinary clips); a UserError naming both
    values and the fix when the config samples differently."""
    root = set_root(data_cfg)
    pset = read_presampled(root)
    if pset is None:
        return None
    wanted = Sampling.from_config(data_cfg)
    diff = sampling_mismatch(pset.sampling, wanted)
    if diff:
        where = ("data.features_path" if data_cfg.dataset != "jsonl"
                 else "data.data_path (the set's own .jsonl)")
        raise UserError(
            f"{root} holds clips pre-sampled with {pset.sampling.describe()}; "
            f"{'; '.join(diff)}. Set those keys to the recorded values, or prepare the clips "
            f"again for this config (`python pipelines/prepare_msvd.py --presample --config "
            f"<your config> --src <raw videos> --out <new folder>`) and point "
            f"{where} there (or at the raw clips).")
    return pset


def _record_key(path, root: Path) -> str:
    """A clip's name in its set's record: its path under the set's folder, no extension (the
    video id for MSVD and MSR-VTT; the prepared name, folders included, for JSON Lines)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return Path(path).stem
    return rel.with_suffix("").as_posix()


def _window_frames(split: "MSVDSplit", data_cfg: "DataConfig") -> list[np.ndarray]:
    out = []
    for v, info in enumerate(split.video_info):
        idx, note = window_frame_indices(info.frames, info.fps, data_cfg.feature_framerate,
                                         data_cfg.max_frames, data_cfg.slice_framepos,
                                         split.window_of(v))
        if note is not None:
            log.warning("%s (%s): %s", split.video_ids[v], split.video_paths[v], note)
        out.append(idx)
    return out


def split_frames(split: "MSVDSplit", data_cfg: "DataConfig") -> tuple[list[np.ndarray], bool]:
    """(indices of the frames each video of ``split`` contributes, whether the set is
    pre-sampled). For a pre-sampled set that is every frame of the file; a file that does not
    hold what its record says (other frame count or size, no record) gets no frames, with a
    warning naming it, and the loaders then leave it out as they leave out broken files."""
    if getattr(data_cfg, "dataset", "") == "shards":  # pre-sampled clips in tars (shards.py)
        return [np.arange(info.frames, dtype=np.int64) for info in split.video_info], True
    pset = check_sampling(data_cfg)
    if pset is None:
        return _window_frames(split, data_cfg), False
    r = pset.sampling.image_resolution
    out, cut = [], []
    for v, (vid, path, info) in enumerate(zip(split.video_ids, split.video_paths,
                                              split.video_info)):
        rec = pset.videos.get(_record_key(path, pset.root), pset.videos.get(vid))
        if rec is not None and not _window_is_whole(pset.sampling, rec, split.window_of(v)):
            cut.append(v)
        why = None
        if rec is None:
            why = f"not in the pre-sampled record {sidecar_path(pset.root)}"
        elif info.frames != rec["frames"]:
            why = f"it holds {info.frames} frames, the record says {rec['frames']}"
        elif (info.width, info.height) != (r, r):
            why = f"its frames are {info.width}x{info.height}, the record says {r}x{r}"
        if why is not None:
            log.warning("skipping pre-sampled clip %s: %s (prepare it again)", path, why)
            out.append(np.zeros(0, dtype=np.int64))
        else:
            out.append(np.arange(info.frames, dtype=np.int64))
    if cut:
        v, (start, end) = cut[0], split.window_of(cut[0])
        raise UserError(
            f"split {split.name}: {len(cut)} of its {split.num_videos} entries sample a time "
            f"window that is not the whole video (e.g. {split.video_ids[v]}: {start}-{end} s), "
            f"but {pset.root} holds clips pre-sampled from whole videos, so other frames. Point "
            f"data.features_path (JSON Lines: data.data_path) at the raw or prepared (not "
            f"--presample) clips.")
    return out, True


def _window_is_whole(sampling: Sampling, rec: dict, window) -> bool:
    """Whether ``window`` samples the same frames of the record's source video as the whole
    video does (a paragraph set's 0-31 s on a shorter video): then its pre-sampled clip is
    those frames."""
    if window is None:
        return True
    try:
        frames, fps = int(rec["source_frames"]), float(rec["source_fps"])
        whole = sampling.indices(frames, fps)
    except (KeyError, TypeError, ValueError):
        return False
    inside, _ = window_frame_indices(frames, fps, sampling.feature_framerate,
                                     sampling.max_frames, sampling.slice_framepos, window)
    return np.array_equal(inside, whole)
