"""A video index on disk, and searching it by text.

    INDEX_DIR/index.json                  format, the model it came from, the collection root,
                                          one record per video (id, path, size, mtime,
                                          duration, frames, fps, size, codec, thumbnail), the
                                          unreadable files and why
    INDEX_DIR/config.yaml                 the config of the model (sampling, resolution, heads)
    INDEX_DIR/vectors-<gen>.safetensors   loose heads: ``embeddings`` (N, D) float16,
                                          L2-normalised; tightTransf: ``frames`` (N, T, D) float16
                                          and ``frame_mask`` (N, T) uint8, what its cross
                                          encoder needs
    INDEX_DIR/thumbs/<key>.jpg            a small thumbnail per video
    INDEX_DIR/parts/                      chunks of an unfinished run (resume), merged at its end

``index.json`` is replaced last and names its vectors file, so a reader always sees a matching
pair. The model is identified by the SHA-256 of its checkpoint file and of the part of its
config that changes the vectors (model section, frame sampling, resolution, precision): an index
is only ever searched or extended with that model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import Config, from_dict
from ..errors import UserError

log = logging.getLogger("clip4clip_dali")

FORMAT = 1
INDEX_FILE = "index.json"
CONFIG_FILE = "config.yaml"
THUMBS = "thumbs"
PARTS = "parts"
SAMPLING_KEYS = ("max_words", "max_frames", "feature_framerate", "slice_framepos",
                 "eval_frame_order", "image_resolution")


class VideoIndexError(UserError):
    """An index that cannot be used as asked; the message names the folder and the fix."""


@dataclass
class VideoRecord:
    id: str
    path: str  # relative to the index's root, POSIX separators
    size: int
    mtime_ns: int
    duration: float
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    thumb: str | None  # file name under thumbs/, None when no frame could be drawn


@dataclass
class FailedVideo:
    path: str
    size: int
    mtime_ns: int
    error: str


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


# ------------------------------------------------------------------------------ files
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # missing, truncated
        raise VideoIndexError(f"{path} could not be read ({type(e).__name__}: {e}); the index is "
                              f"damaged: rebuild it with clip4clip_dali.index --rebuild.") from None


def read_meta(index_dir: str | Path) -> dict:
    """``index.json`` of an index folder, checked."""
    d = Path(index_dir)
    path = d / INDEX_FILE
    if not path.is_file():
        hint = ("it holds no index.json" if d.is_dir() else "no such folder")
        raise VideoIndexError(f"{d} is not a video index ({hint}); build one with "
                              f"`python -m clip4clip_dali.index --checkpoint CKPT --videos DIR "
                              f"--out {d}`.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VideoIndexError(f"{path} could not be read ({e}); rebuild the index.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "videos" not in meta:
        raise VideoIndexError(f"{path} is not a clip4clip_dali video index of format {FORMAT}; "
                              f"rebuild it with this version.")
    return meta


def write_index(index_dir: Path, meta: dict, records: Sequence[VideoRecord],
                failed: Sequence[FailedVideo], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a new generation of vectors, then ``index.json`` naming it; drop the old one."""
    old = meta.get("vectors")
    gen = int(meta.get("generation", 0)) + 1
    name = f"vectors-{gen}.safetensors"
    save_tensors(tensors, index_dir / name)
    meta = dict(meta, generation=gen, vectors=name, updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
                videos=[asdict(r) for r in records], failed=[asdict(f) for f in failed])
    atomic_write_text(index_dir / INDEX_FILE, json.dumps(meta, indent=1))
    if old and old != name:
        (index_dir / old).unlink(missing_ok=True)
    return index_dir / INDEX_FILE


# ------------------------------------------------------------------------------ reading
class VideoIndex:
    """An index folder, read: its records, its model's identity and config, its files."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.meta = read_meta(self.dir)
        self.root = Path(self.meta["root"])
        self.records = [VideoRecord(**r) for r in self.meta["videos"]]
        self.failed = [FailedVideo(**f) for f in self.meta.get("failed", [])]
        self.identity: dict = self.meta["model"]
        self.kind: str = self.meta["kind"]  # "embeddings" or "frames"
        self._vectors: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def config(self) -> Config:
        import yaml

        path = self.dir / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise VideoIndexError(f"{path} could not be read ({e}); rebuild the index.") from None
        return from_dict(raw, str(path))

    def vectors(self) -> dict[str, torch.Tensor]:
        if self._vectors is None:
            self._vectors = load_tensors(self.dir / self.meta["vectors"])
            n = next(iter(self._vectors.values())).shape[0] if self._vectors else 0
            if n != len(self.records):
                raise VideoIndexError(f"{self.dir}: {self.meta['vectors']} holds {n} rows for "
                                      f"{len(self.records)} videos; rebuild the index.")
        return self._vectors

    def video_file(self, row: int) -> Path | None:
        """The absolute path of video ``row``, or None when ``row`` is not one of the index or
        its path would leave the collection's root."""
        if not 0 <= row < len(self.records):
            return None
        return _inside(self.root, self.records[row].path)

    def thumb_file(self, row: int) -> Path | None:
        if not 0 <= row < len(self.records) or not self.records[row].thumb:
            return None
        return _inside(self.dir / THUMBS, self.records[row].thumb)

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
    base = Path(os.path.abspath(base))
    p = Path(os.path.abspath(base / rel))
    return p if p.is_relative_to(base) and p != base else None


# ------------------------------------------------------------------------------ search
SCORE_KINDS = {"embeddings": "cosine", "frames": "cross_encoder_logit"}


class Searcher:
    """Rank an index's videos for text queries with the index's own model."""

    def __init__(self, index: VideoIndex, model, chunk: int = 256):
        if len(index) == 0:
            raise VideoIndexError(f"the index {index.dir} holds no videos; index a folder with "
                                  f"readable videos first.")
        self.index, self.model, self.chunk = index, model, chunk
        vec = index.vectors()
        dev = model.device
        if index.kind == "embeddings":
            self.embeddings = vec["embeddings"].to(dev).float()
        else:
            self.frames, self.mask = vec["frames"], vec["frame_mask"].long()
            log.warning("%s is a cross encoder (no separable video embedding): every query runs "
                        "it over all %d indexed videos, %d at a time, which is much slower than "
                        "the dot product of meanP/seqLSTM/seqTransf", model.sim_header,
                        len(index), chunk)
        self.score_kind = SCORE_KINDS[index.kind]

    @classmethod
    def open(cls, index_dir: str | Path, checkpoint: str | Path | None = None,
             device=None) -> "Searcher":
        """The index at ``index_dir`` with its own model loaded (see ``VideoIndex.open_model``)."""
        index = VideoIndex(index_dir)
        return cls(index, index.open_model(checkpoint, device))

    @torch.no_grad()
    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        text = self.model.encode_text(list(queries))
        if self.index.kind == "embeddings":
            return (text @ self.embeddings.t()).float().cpu()
        return self.model.score(text, self.frames, self.mask, chunk=self.chunk).cpu()

    def search(self, queries: Sequence[str], top_k: int = 10) -> list[list[dict]]:
        """Per query the ``top_k`` best videos, best first: rank, score, id, path, row..."""
        queries = [q.strip() for q in queries]
        bad = [q for q in queries if not q]
        if bad or not queries:
            raise UserError("a query is empty; give a few words, e.g. \"a man is slicing bread\".")
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}.")
        sim = self.scores(queries)
        k = min(top_k, sim.shape[1])
        values, rows = torch.topk(sim, k, dim=1)  # sorted, best first
        out = []
        for qv, qr in zip(values.tolist(), rows.tolist()):
            hits = []
            for rank, (score, row) in enumerate(zip(qv, qr), start=1):
                rec = self.index.records[row]
                hits.append({"rank": rank, "score": round(float(score), 6), "id": rec.id,
                             "path": str(self.index.root / rec.path), "row": row,
                             "duration": round(rec.duration, 3)})
            out.append(hits)
        return out
