"""Approximate nearest neighbours over an index's vectors, with FAISS (the ``[search]`` extra).

Kinds: ``exact`` (no ANN file: every vector scored), ``ivf`` (IVF, ~sqrt(n) lists, float16 scalar
quantisation: fast to build from a training sample, updated in place when videos are added or
dropped), ``hnsw`` (a graph, 32 links; rebuilt whole on every update), ``auto`` (exact below
``AUTO_MIN`` vectors, ivf above). The FAISS ids are the store's record ids. Without faiss
everything is exact, with one log line naming the extra.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger("clip4clip_dali")

KINDS = ("auto", "exact", "hnsw", "ivf")
EXTRA = "pip install 'clip4clip-dali[search]' (faiss-cpu)"
# Exact search scores every vector, float16 converted chunk by chunk: measured on 2 shared
# cores (benchmarks/results/cpu-2core-2026-12-06-search.md) p50 ~20 ms a query at 10k x 512,
# ~540 ms at 100k x 512, while IVF answers in ~1 ms at recall@10 1.0. Above ~20k vectors exact
# search costs more than encoding the query; below, an ANN index buys nothing.
AUTO_MIN = 20_000
IVF_NPROBE = 32
HNSW_EF_SEARCH = 128
RECALL_QUERIES = 200
_warned = False


def faiss_module(why: str = "search is exact"):
    """``faiss``, or None (logged once) when the extra is not installed."""
    global _warned
    try:
        import faiss
    except ImportError:
        if not _warned:
            log.warning("faiss is not installed: %s; for approximate search on large indexes: "
                        "%s", why, EXTRA)
            _warned = True
        return None
    faiss.omp_set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    return faiss


def choose(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"ANN kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "auto":
        return "exact" if n < AUTO_MIN else "ivf"
    return kind


def ivf_lists(n: int) -> int:
    """~sqrt(n) lists (a power of two), at least 39 vectors a list to train on (FAISS's
    k-means minimum). More lists train and add more slowly on a CPU (k-means and assignment
    cost grow with them), fewer make every probe scan more."""
    want = 2 ** round(math.log2(math.sqrt(max(n, 1))))
    return int(max(1, min(65536, want, n // 39)))


def build(faiss, kind: str, vectors: np.ndarray, ids: np.ndarray, seed: int = 0):
    """A FAISS index of ``kind`` over float32 ``vectors`` (n, d) with ``ids``; IVF trained on
    a sample of at most 64 vectors a list."""
    n, d = vectors.shape
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 64
        index = faiss.IndexIDMap2(inner)
    elif kind == "ivf":
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    else:
        raise ValueError(kind)
    add(index, vectors, ids)
    return index


def add(index, vectors: np.ndarray, ids: np.ndarray, chunk: int = 65536) -> None:
    for s in range(0, len(ids), chunk):
        index.add_with_ids(np.ascontiguousarray(vectors[s:s + chunk], dtype=np.float32),
                           np.ascontiguousarray(ids[s:s + chunk], dtype=np.int64))


def remove(faiss, index, ids) -> None:
    if len(ids):
        index.remove_ids(faiss.IDSelectorBatch(np.asarray(list(ids), dtype=np.int64)))


def tune(faiss, index, kind: str, nprobe: int | None = None, ef: int | None = None) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = nprobe or IVF_NPROBE
    elif kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = ef or HNSW_EF_SEARCH


def exact_top(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int,
              chunk: int = 131072) -> np.ndarray:
    """(nq, k) ids of the exact top ``k`` by inner product (vectors may be float16)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    q = queries.astype(np.float32)
    for s in range(0, len(vectors), chunk):
        sc = q @ vectors[s:s + chunk].astype(np.float32).T
        cs = np.concatenate([best_s, sc], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(ids[s:s + chunk], sc.shape)], axis=1)
        kk = min(k, cs.shape[1])
        top = np.argpartition(-cs, kk - 1, axis=1)[:, :kk]
        best_s = np.take_along_axis(cs, top, 1)
        best_i = np.take_along_axis(ci, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def recall_at(index, queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
              k: int = 10) -> float:
    """Mean share of the exact top ``k`` that the ANN index returns in its top ``k``."""
    want = exact_top(queries, vectors, ids, k)
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(want, got))
    return hits / max(1, want.size)


def held_queries(vectors: np.ndarray, n: int = RECALL_QUERIES, seed: int = 1) -> np.ndarray:
    """Queries for the recall check: stored vectors with noise as large as their spread,
    re-normalised (a stored vector as it is would trivially find itself)."""
    rng = np.random.default_rng(seed)
    pick = vectors[np.sort(rng.choice(len(vectors), min(n, len(vectors)), replace=False))]
    q = pick.astype(np.float32)
    q += rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def save(faiss, index, path: Path) -> tuple[int, int]:
    """Write ``index`` to ``path`` (synced); (bytes, CRC-32), computed from memory."""
    data = faiss.serialize_index(index)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(memoryview(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return int(data.nbytes), zlib.crc32(memoryview(data))


def load_checked(faiss, path: Path, crc: int):
    """The index at ``path`` read once, or None when it does not match ``crc``."""
    data = np.fromfile(path, dtype=np.uint8)
    if zlib.crc32(memoryview(data)) != crc:
        return None
    return faiss.deserialize_index(data)


def load(faiss, path: Path, mmap: bool = False):
    """The index at ``path``; with ``mmap`` (for searching) IVF lists stay in the file, paged
    in as queries touch them: opening a 1 GB index reads almost nothing."""
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    try:
        return faiss.read_index(str(path), flag)
    except RuntimeError:
        if not flag:
            raise
        return faiss.read_index(str(path))
