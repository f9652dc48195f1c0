"""Reading an index folder (the format: :mod:`clip4clip_dali.archive.store`), and the model
that built it.

The model is identified by the SHA-256 of its checkpoint file and of the part of its config
that changes the vectors (model section, frame sampling, resolution, precision): an index is
only ever searched or extended with that model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

import numpy as np
import torch

from ..config import Config, from_dict
from .store import (CONFIG_FILE, THUMBS, VECTORS, FailedVideo, Store, VideoIndexError,
                    VideoRecord, check_size, crc32_file, row_dtype)

log = logging.getLogger("clip4clip_dali")

SAMPLING_KEYS = ("max_words", "max_frames", "feature_framerate", "slice_framepos",
                 "eval_frame_order", "image_resolution")
__all__ = ["VideoIndex", "VideoIndexError", "VideoRecord", "FailedVideo", "model_identity",
           "same_model", "describe", "config_fingerprint", "file_sha256", "read_part"]


# ------------------------------------------------------------------------------ identity
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_fingerprint(cfg: Config) -> str:
    """SHA-256 of what, besides the weights, decides the vectors of a video."""
    d = cfg.to_dict()
    key = {"model": d["model"], "data": {k: d["data"][k] for k in SAMPLING_KEYS},
           "precision": d["train"]["precision"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def model_identity(checkpoint: str | Path, cfg: Config) -> dict:
    p = Path(checkpoint).resolve()
    st = p.stat()
    return {"checkpoint": str(p), "sha256": file_sha256(p), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "config_sha256": config_fingerprint(cfg),
            "sim_header": cfg.model.sim_header, "name": cfg.model.name}


def describe(identity: dict) -> str:
    return (f"{identity.get('checkpoint')} ({identity.get('name')} {identity.get('sim_header')}, "
            f"sha256 {str(identity.get('sha256'))[:12]}, config {str(identity.get('config_sha256'))[:12]})")


def same_model(a: dict, b: dict) -> bool:
    return a.get("sha256") == b.get("sha256") and a.get("config_sha256") == b.get("config_sha256")


# ------------------------------------------------------------------------------ parts
def read_part(path: Path, part: dict, layout: dict, folder: Path) -> np.ndarray:
    """The rows of the vector part at ``path`` (of the index ``folder``), memory-mapped, after
    checking its size and CRC-32: a damaged or truncated file is refused, never ranked."""
    fix = (f"run the `index` command that built {folder} again: it drops the videos of the "
           f"damaged part and encodes them again (or rebuild with --rebuild)")
    check_size(path, part["bytes"], fix)
    if crc32_file(path) != part["crc32"]:
        raise VideoIndexError(f"{path} does not match its checksum (damaged); {fix}.")
    if part["rows"] == 0:
        return np.zeros(0, dtype=row_dtype(layout))
    return np.memmap(path, dtype=row_dtype(layout), mode="r", shape=(part["rows"],))


# ------------------------------------------------------------------------------ reading
class VideoIndex:
    """An index folder, opened for reading: the meta rows are read now; records, vectors and
    checksums when asked for."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.store = Store.open(self.dir)
        # an s3:// shard set's root went through Path, which folds "s3://" to "s3:/"
        self.root_text = re.sub(r"^s3:/(?!/)", "s3://", self.store.meta("root"))
        self.root = Path(self.root_text)
        self.identity: dict = self.store.meta("model")
        self.kind: str = self.store.meta("kind")  # "embeddings" or "frames"
        self.layout: dict = self.store.meta("layout")
        # a moment index: {"window": W, "stride": S} (seconds); None: one vector per video
        self.windowing: dict | None = self.store.meta("window")
        self._parts: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        """Records: videos, or their windows in a moment index."""
        return self.store.count()

    @property
    def num_videos(self) -> int:
        return self.store.count_files() if self.windowing else len(self)

    @property
    def records(self) -> list[VideoRecord]:
        """Every record, by record id (reads them all: use ``record``/``store.records`` on
        large indexes)."""
        return self.store.records()

    @property
    def failed(self) -> list[FailedVideo]:
        return self.store.failed()

    def record(self, rid: int) -> VideoRecord | None:
        return self.store.record(rid)

    def config(self) -> Config:
        import yaml

        path = self.dir / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise VideoIndexError(f"{path} could not be read ({e}); rebuild the index.") from None
        return from_dict(raw, str(path))

    def part(self, name: str, info: dict | None = None) -> np.ndarray:
        if name not in self._parts:
            info = info or self.store.parts().get(name)
            if info is None:
                raise VideoIndexError(f"{self.dir}: the vector part {name} is no longer in the "
                                      f"index (it changed while being read); search again.")
            self._parts[name] = read_part(self.dir / VECTORS / name, info, self.layout, self.dir)
        return self._parts[name]

    def load_vectors(self) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """(record ids, {"embeddings": (N, D)} or {"frames": (N, T, D), "frame_mask": (N, T)})
        of every record, by record id, float16/uint8 on the CPU; every part checked."""
        rid, names, part, row = self.store.locations()
        info = self.store.parts()
        arrays = [self.part(n, info.get(n)) for n in names]
        dt = row_dtype(self.layout)
        out = np.empty(len(rid), dtype=dt)
        for i, a in enumerate(arrays):
            sel = part == i
            out[sel] = a[row[sel]]
        if "frames" in self.layout:
            return rid, {"frames": torch.from_numpy(np.ascontiguousarray(out["frames"])),
                         "frame_mask": torch.from_numpy(np.ascontiguousarray(out["mask"]))}
        return rid, {"embeddings": torch.from_numpy(out)}

    def rows(self, rids) -> tuple[list[int], np.ndarray]:
        """(the ids of ``rids`` still in the index, their vector rows), in the order given,
        read from the parts (no other record's vectors are read)."""
        where = self.store.locate(rids)
        found = [int(r) for r in rids if int(r) in where]
        out = np.empty(len(found), dtype=row_dtype(self.layout))
        for i, r in enumerate(found):
            name, row = where[r]
            out[i] = self.part(name)[row]
        return found, out

    def vectors(self) -> dict[str, torch.Tensor]:
        """The vectors of ``records``, in that order (see ``load_vectors``)."""
        return self.load_vectors()[1]

    def video_file(self, rid: int) -> Path | None:
        """The real path of video ``rid`` when it is still the file that was indexed: inside
        the collection's root once links are resolved, a regular file, of the recorded size
        and modification time. None otherwise (a replaced clip, a link out of the root)."""
        rec = self.record(rid)
        if rec is None:
            return None
        path = _inside(self.root, rec.path)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            return None
        return path

    def thumb_file(self, rid: int) -> Path | None:
        rec = self.record(rid)
        if rec is None or not rec.thumb:
            return None
        path = _inside(self.dir / THUMBS, rec.thumb)
        return path if path is not None and path.is_file() else None

    def check_model(self, identity: dict, what: str) -> None:
        if not same_model(self.identity, identity):
            raise VideoIndexError(
                f"the index {self.dir} was built by {describe(self.identity)}, but {what} is "
                f"{describe(identity)}: its vectors do not compare with another model's. Search "
                f"it with its own checkpoint, or re-index the videos with this one into another "
                f"--out folder (or with --rebuild).")

    def open_model(self, checkpoint: str | Path | None = None, device=None):
        """The index's own model (``checkpoint`` when the file has moved), refused when the
        file is not the one the index was built with."""
        from .api import load_model

        path = Path(checkpoint or self.identity["checkpoint"])
        if not path.is_file():
            raise VideoIndexError(f"the checkpoint {path} the index {self.dir} was built with is "
                                  f"gone; pass --checkpoint with the path of that file.")
        st = path.stat()
        unchanged = (str(path.resolve()) == self.identity["checkpoint"]
                     and st.st_size == self.identity["size"]
                     and st.st_mtime_ns == self.identity["mtime_ns"])
        model = load_model(path, self.config(), device)
        # Moved, copied or overwritten (or another config saved in it): the bytes decide.
        if not unchanged or config_fingerprint(model.config) != self.identity["config_sha256"]:
            self.check_model(model_identity(path, model.config), f"the checkpoint {path}")
        return model


def _inside(base: Path, rel: str) -> Path | None:
    """``base/rel`` with every link resolved, when it is still under ``base`` (resolved)."""
    real_base = Path(os.path.realpath(base))
    p = Path(os.path.realpath(real_base / rel))
    return p if p.is_relative_to(real_base) and p != real_base else None
