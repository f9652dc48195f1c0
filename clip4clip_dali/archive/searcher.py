"""Rank an index's videos for text queries with the index's own model.

Loose heads (meanP, seqLSTM, seqTransf): the cosine of text and video embeddings, from the
index's approximate (FAISS) index when it has one, else from every vector. tightTransf: the
approximate index (over the pooled frame features) pre-selects ``rerank`` videos and the cross
encoder ranks them; without one (or with ``exact``) the cross encoder sees every video.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from . import ann
from .moments import merge_hits
from .store import VideoIndexError, check_size
from .video_index import VideoIndex, crc32_file

log = logging.getLogger("clip4clip_dali")

SCORE_KINDS = {"embeddings": "cosine", "frames": "cross_encoder_logit"}
RERANK = 100


def pooled(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tightTransf's loose vector of a video: the masked mean of its L2-normalised frame
    features, L2-normalised (meanP without a head), the space its pre-selection ranks in."""
    from ..model.temporal import masked_mean_pool

    return masked_mean_pool(frames.float(), mask)


class Searcher:
    def __init__(self, index: VideoIndex, model, chunk: int = 256, exact: bool = False,
                 rerank: int = RERANK):
        if len(index) == 0:
            raise VideoIndexError(f"the index {index.dir} holds no videos; index a folder with "
                                  f"readable videos first.")
        if rerank < 1:
            raise UserError(f"rerank must be at least 1, got {rerank}.")
        self.index, self.model, self.chunk, self.rerank = index, model, chunk, rerank
        self.score_kind = SCORE_KINDS[index.kind]
        self.ann_meta = index.store.meta("ann")
        self.ann = None if exact else self._load_ann()
        self._rids: np.ndarray | None = None
        self._vec: dict[str, torch.Tensor] | None = None
        if index.kind == "frames" and self.ann is None:
            log.warning("%s is a cross encoder (no separable video embedding): every query runs "
                        "it over all %d indexed videos, %d at a time, which is much slower than "
                        "the dot product of meanP/seqLSTM/seqTransf", model.sim_header,
                        len(index), chunk)

    @classmethod
    def open(cls, index_dir: str | Path, checkpoint: str | Path | None = None, device=None,
             **kw) -> "Searcher":
        """The index at ``index_dir`` with its own model loaded (see ``VideoIndex.open_model``)."""
        index = VideoIndex(index_dir)
        return cls(index, index.open_model(checkpoint, device), **kw)

    @property
    def method(self) -> str:
        return self.ann_meta["kind"] if self.ann is not None else "exact"

    def _load_ann(self):
        meta = self.ann_meta
        if not meta:
            return None
        faiss = ann.faiss_module("this index's approximate index is not used; search is exact")
        if faiss is None:
            return None
        path = self.index.dir / meta["file"]
        fix = ("run the `index` command again (it rebuilds it), or search with --exact")
        check_size(path, meta["bytes"], fix)
        index = ann.load(faiss, path, mmap=True)
        ann.tune(faiss, index, meta["kind"])
        # Its checksum is checked beside the first queries (reading 1 GB takes seconds); once
        # it fails every search is refused, and a damaged score is never shown (_rank).
        self._ann_damaged: str | None = None
        self.ann_check = threading.Thread(target=self._check_ann, args=(path, meta["crc32"], fix),
                                          daemon=True)
        self.ann_check.start()
        return index

    def _check_ann(self, path: Path, crc: int, fix: str) -> None:
        if crc32_file(path) != crc:
            self._ann_damaged = f"{path} does not match its checksum (damaged); {fix}."
            log.error("%s", self._ann_damaged)

    def _vectors(self) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        if self._vec is None:
            self._rids, self._vec = self.index.load_vectors()
        return self._rids, self._vec

    @torch.no_grad()
    def _rank(self, text: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, k) scores and record ids, best first."""
        if self.ann is not None and getattr(self, "_ann_damaged", None):
            raise VideoIndexError(self._ann_damaged)
        if self.index.kind == "embeddings":
            if self.ann is not None:
                s, i = self.ann.search(text.float().cpu().numpy(), k)
                i[~np.isfinite(s)] = -1  # a damaged code never reaches a page
                return s, i
            rids, vec = self._vectors()
            emb, scores = vec["embeddings"], []
            for s in range(0, emb.shape[0], 65536):
                scores.append(text.float().cpu() @ emb[s:s + 65536].float().t())
            v, pos = torch.topk(torch.cat(scores, dim=1), min(k, emb.shape[0]), dim=1)
            return v.numpy(), rids[pos.numpy()]
        if self.ann is not None:
            t = torch.nn.functional.normalize(text.float(), dim=-1).cpu().numpy()
            _, cand = self.ann.search(t, max(k, self.rerank))
            return self._cross_rerank(text, cand, k)
        rids, vec = self._vectors()
        sim = self.model.score(text, vec["frames"], vec["frame_mask"].long(), chunk=self.chunk)
        v, pos = torch.topk(sim.float().cpu(), min(k, sim.shape[1]), dim=1)
        return v.numpy(), rids[pos.numpy()]

    def _cross_rerank(self, text: torch.Tensor, cand: np.ndarray, k: int):
        """The cross encoder over each query's candidates only (their rows read by id)."""
        out_s, out_i = [], []
        for q in range(text.shape[0]):
            found, rows = self.index.rows([r for r in cand[q].tolist() if r >= 0])
            frames = torch.from_numpy(np.ascontiguousarray(rows["frames"]))
            mask = torch.from_numpy(np.ascontiguousarray(rows["mask"])).long()
            sim = self.model.score(text[q:q + 1], frames, mask, chunk=self.chunk)[0].cpu()
            v, p = torch.topk(sim.float(), min(k, len(found)))
            out_s.append(v.numpy())
            out_i.append(np.asarray(found, dtype=np.int64)[p.numpy()])
        width = min(len(x) for x in out_s)
        return np.stack([x[:width] for x in out_s]), np.stack([x[:width] for x in out_i])

    def search(self, queries: Sequence[str], top_k: int = 10) -> list[list[dict]]:
        """Per query the ``top_k`` best videos, best first: rank, score, id, path, rid...; in a
        moment index also ``start``, ``end`` (seconds) and ``windows``: among the ``top_k`` best
        windows, those of one video that touch or overlap are one result covering them, scored
        by the best; weaker windows only add other moments (``moments.merge_hits``)."""
        queries = [q.strip() for q in queries]
        if not queries or any(not q for q in queries):
            raise UserError("a query is empty; give a few words, e.g. \"a man is slicing bread\".")
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}.")
        text = self.model.encode_text(list(queries))
        if not self.index.windowing:
            return self._hits(*self._rank(text, top_k))
        total, k = len(self.index), top_k
        while True:  # rank more windows until merging leaves top_k results (or all are ranked)
            out = [merge_hits(h, top_k) for h in self._hits(*self._rank(text, min(k, total)))]
            if k >= total or all(len(h) >= top_k for h in out):
                return out
            k *= 4

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[dict]]:
        wanted = sorted({int(r) for r in ids.ravel() if r >= 0})
        records = {r.rid: r for r in self.index.store.records(wanted)}
        out = []
        for qs, qi in zip(scores.tolist(), ids.tolist()):
            hits = []
            for score, rid in zip(qs, qi):
                rec = records.get(int(rid))
                if rec is None:  # -1 (fewer than k found) or dropped since the ANN was built
                    continue
                hit = {"rank": len(hits) + 1, "score": round(float(score), 6), "id": rec.id,
                       "path": _shown_path(self.index.root_text, rec.path), "rid": rec.rid,
                       "duration": round(rec.duration, 3)}
                if rec.start is not None:
                    hit.update(start=rec.start, end=rec.end)
                hits.append(hit)
            out.append(hits)
        return out


def _shown_path(root: str, path: str) -> str:
    """A record's path as users know it: under an ``s3://`` root joined as a URL (``Path``
    would fold ``s3://`` to ``s3:/``), else as a local path under the root."""
    if "://" in root:
        return f"{root.rstrip('/')}/{path}"
    return str(Path(root) / path)
