"""The end of an ``index`` run: build or update the index's approximate (FAISS) index, measure
its recall@10 against exact search and record both in the store."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import ann
from .store import Store
from .video_index import VideoIndex

log = logging.getLogger("clip4clip_dali")


def loose_vectors(index: VideoIndex) -> tuple[np.ndarray, np.ndarray]:
    """(record ids, (N, D) float16 vectors the ANN ranks: the embeddings, or tightTransf's
    pooled frame features)."""
    rids, vec = index.load_vectors()
    if "embeddings" in vec:
        return rids, vec["embeddings"].numpy()
    from .searcher import pooled

    out = [pooled(vec["frames"][s:s + 4096], vec["frame_mask"][s:s + 4096].long()).half()
           for s in range(0, len(rids), 4096)]
    return rids, np.concatenate([o.numpy() for o in out]) if out else np.zeros((0, 1), np.float16)


def _loose_rows(index: VideoIndex, rids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, loose vectors) of the records ``rids`` only."""
    found, rows = index.rows(rids)
    ids = np.asarray(found, dtype=np.int64)
    if "frames" not in index.layout:
        return ids, rows
    import torch

    from .searcher import pooled

    v = pooled(torch.from_numpy(np.ascontiguousarray(rows["frames"])),
               torch.from_numpy(np.ascontiguousarray(rows["mask"])).long())
    return ids, v.half().numpy()


def update_ann(out: Path, requested: str | None, added: list[int], dropped: list[int]) -> dict:
    """Returns what the index searches with: {"kind", "requested", "recall_at_10", ...}."""
    store = Store.open(out, writable=True)
    try:
        old = store.meta("ann")
        requested = requested or store.meta("ann_requested") or "auto"
        kind = ann.choose(requested, store.count())
        faiss = ann.faiss_module("the index keeps exact search only") if kind != "exact" else None
        if kind == "exact" or faiss is None:
            _replace(out, store, old, None, requested)
            return {"kind": "exact", "requested": requested,
                    **({"why": f"faiss is not installed ({ann.EXTRA})"} if kind != "exact" else {})}
        t0 = time.perf_counter()
        index = VideoIndex(out)
        n = len(index)
        fa = None
        if old and old["kind"] == kind == "ivf" and n <= 4 * old["trained_n"] \
                and (out / old["file"]).is_file():
            fa = ann.load_checked(faiss, out / old["file"], old["crc32"])  # None: damaged
        if fa is not None:
            ann.remove(faiss, fa, dropped)
            new_ids, new_vectors = _loose_rows(index, added)
            ann.add(fa, new_vectors, new_ids)
            trained_n, how = old["trained_n"], "updated"
        else:
            rids, vectors = loose_vectors(index)
            fa = ann.build(faiss, kind, vectors, rids)
            trained_n, how = len(rids), "built"
        ann.tune(faiss, fa, kind)
        # Recall is measured when the index is built and again when the collection has grown
        # or shrunk by a tenth since (it needs exact search over every vector).
        measured = old.get("recall_n", 0) if old else 0
        if how == "built" or abs(n - measured) > 0.1 * max(1, measured):
            if how == "updated":
                rids, vectors = loose_vectors(index)
            recall = ann.recall_at(fa, ann.held_queries(vectors), vectors, rids, 10)
            recall_n = n
        else:
            recall, recall_n = old["recall_at_10"], old["recall_n"]
        number = 1 + (old["number"] if old else 0)
        name = f"ann-{number}.faiss"
        size, crc = ann.save(faiss, fa, out / name)
        meta = {"kind": kind, "file": name, "number": number, "bytes": size,
                "crc32": crc, "vectors": int(fa.ntotal),
                "trained_n": trained_n, "recall_at_10": round(recall, 4), "recall_n": recall_n,
                "recall_queries": min(ann.RECALL_QUERIES, recall_n),
                "seconds": round(time.perf_counter() - t0, 2),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _replace(out, store, old, meta, requested)
        log.info("approximate index %s (%s, %d vectors) %s in %.1f s; recall@10 against exact "
                 "search on %d held queries (measured at %d vectors): %.3f", name, kind,
                 fa.ntotal, how, meta["seconds"], meta["recall_queries"], recall_n, recall)
        return {"kind": kind, "requested": requested, "recall_at_10": meta["recall_at_10"],
                "file": name, how: True}
    finally:
        store.close()


def _replace(out: Path, store: Store, old: dict | None, new: dict | None, requested: str) -> None:
    with store.transaction():
        store.set_meta(ann=new, ann_requested=requested)
        if new:
            store.own([new["file"]])
        if old and (not new or old["file"] != new["file"]):
            store.disown([old["file"]])
    if old and (not new or old["file"] != new["file"]):
        (out / old["file"]).unlink(missing_ok=True)
