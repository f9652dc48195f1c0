"""Section ``search``: exact and approximate (FAISS) search over synthetic and real vectors,
and the index store at a million records.

Rows, per (vectors, dim, method): build seconds, bytes per vector (the ANN file; exact: the
float16 part), p50/p99 latency of one query at a time, recall@10 against exact search on held
queries (fresh points of the same clusters; on real vectors the demo's captions). Then, on a
store of ``--search-store-n`` records: opening it plus one query, and adding 1,000 videos
(staging, the merge transaction, the ANN update; no encoding).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import fmt, log, merge_section, na, short_error

NAME = "search"
DEFAULT = False
QUICK = dict(search_sizes="2000,10000", search_dims="64", search_store_n=20000,
             search_queries=50)


def add_args(p) -> None:
    g = p.add_argument_group("search section")
    g.add_argument("--search-sizes", default="10000,100000,1000000")
    g.add_argument("--search-dims", default="64,512")
    g.add_argument("--search-methods", default="exact,ivf,hnsw")
    g.add_argument("--search-hnsw-max", type=int, default=100_000,
                   help="largest set an HNSW graph is built for (its build is slow on 2 cores)")
    g.add_argument("--search-queries", type=int, default=200, help="held queries a row")
    g.add_argument("--search-exact-max-queries", type=int, default=20,
                   help="single queries timed for exact search on the largest sets")
    g.add_argument("--search-real-index", default="runs/demo/index_all",
                   help="an index of the demo model (its vectors and captions make a real row)")
    g.add_argument("--search-tight-index", default="runs/demo_tight/index_all",
                   help="an index of a tightTransf demo model with an approximate index")
    g.add_argument("--search-rerank", default="5,10,20,50",
                   help="pre-selection sizes measured for tightTransf")
    g.add_argument("--search-store-n", type=int, default=1_000_000,
                   help="records of the store for the open and add rows (0: skip)")


def clustered(n: int, d: int, seed: int, centres: np.ndarray | None = None):
    """Unit vectors around ``n // 100`` random centres (float16), and the centres."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((max(8, n // 100), d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centres[rng.integers(0, len(centres), m)] + \
            0.6 * rng.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def _latency(search_one, queries: np.ndarray, limit: int | None = None) -> dict:
    times = []
    for q in queries[:limit]:
        t = time.perf_counter()
        search_one(q[None, :])
        times.append((time.perf_counter() - t) * 1000)
    a = np.asarray(times)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "timed_queries": int(a.size)}


def _exact_one(vectors: np.ndarray, ids: np.ndarray):
    import torch

    v = torch.from_numpy(vectors)

    def one(q):
        t = torch.from_numpy(q.astype(np.float32))
        scores = torch.cat([t @ v[s:s + 65536].float().t() for s in range(0, len(v), 65536)], 1)
        return torch.topk(scores, 10, dim=1)

    return one


def measure_set(label: str, vectors: np.ndarray, queries: np.ndarray, methods, args) -> list:
    from clip4clip_dali.archive import ann

    faiss = ann.faiss_module()
    n, d = vectors.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    truth = ann.exact_top(queries, vectors, ids, 10)
    rows = []
    for method in methods:
        row = {"vectors": label, "n": n, "dim": d, "method": method}
        try:
            if method == "exact":
                row.update(status="ok", build_s=0.0, bytes_per_vector=2 * d, recall_at_10=1.0)
                limit = args.search_exact_max_queries if n >= 100_000 else None
                row.update(_latency(_exact_one(vectors, ids), queries, limit))
            elif faiss is None:
                row.update(na("faiss is not installed"))
            elif method == "hnsw" and n > args.search_hnsw_max:
                row.update(na(f"HNSW not built above --search-hnsw-max {args.search_hnsw_max}"))
            else:
                t = time.perf_counter()
                index = ann.build(faiss, method, vectors, ids)
                row["build_s"] = time.perf_counter() - t
                ann.tune(faiss, index, method)
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "x.faiss"
                    ann.save(faiss, index, path)
                    row["bytes_per_vector"] = path.stat().st_size / n
                _, got = index.search(queries.astype(np.float32), 10)
                row["recall_at_10"] = float(np.mean([len(set(a) & set(b)) / 10
                                                     for a, b in zip(truth.tolist(), got.tolist())]))
                row.update(_latency(lambda q: index.search(q.astype(np.float32), 10), queries))
                row["status"] = "ok"
                del index
        except Exception as e:  # one row fails, the section goes on
            row.update(na(short_error(e)))
        log(f"search {label} n={n} d={d} {method}: " + ", ".join(
            f"{k} {fmt(row[k], 3) if isinstance(row[k], float) else row[k]}"
            for k in ("build_s", "bytes_per_vector", "p50_ms", "p99_ms", "recall_at_10", "reason")
            if k in row) + f" (load {os.getloadavg()[0]:.1f})")
        row["load_1min"] = os.getloadavg()[0]
        rows.append(row)
    return rows


def _captions(index) -> tuple[list[str], list[str]]:
    """(captions, the id of each one's video) of every split of the index's dataset whose
    videos the index holds."""
    from clip4clip_dali.data.dataset import load_split

    held = {r.id for r in index.records}
    texts, vids = [], []
    for name in ("train", "val", "test"):
        try:
            sp = load_split(index.config().data, name, probe=False)
        except Exception:
            continue
        for t, v in zip(sp.captions, sp.caption_video):
            if sp.video_ids[int(v)] in held:
                texts.append(t)
                vids.append(sp.video_ids[int(v)])
    return texts, vids


def real_rows(args) -> list:
    """The demo model's own vectors, with its captions as queries."""
    from clip4clip_dali.archive.video_index import VideoIndex

    if not args.search_real_index:
        return []
    d = Path(args.search_real_index)
    try:
        index = VideoIndex(d)
        if index.kind != "embeddings":
            return [{"vectors": f"real ({d})", "method": "-", **na("not a loose-head index")}]
        vectors = index.vectors()["embeddings"].numpy()
        model = index.open_model(device="cpu")
        texts, _ = _captions(index)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(texts), min(len(texts), args.search_queries), replace=False)
        q = model.encode_text([texts[i] for i in pick]).cpu().numpy()
    except Exception as e:
        return [{"vectors": f"real ({d})", "method": "-", **na(short_error(e))}]
    # the demo's few hundred vectors, tiled with noise to a set an ANN index is for
    reps = max(1, 20000 // len(vectors))
    tiled = np.repeat(vectors.astype(np.float32), reps, axis=0)
    tiled += rng.standard_normal(tiled.shape).astype(np.float32) * 0.02
    tiled /= np.linalg.norm(tiled, axis=1, keepdims=True)
    return measure_set(f"demo model: {len(vectors)} real x{reps}, jittered",
                       tiled.astype(np.float16), q, ["exact", "ivf", "hnsw"], args)


def tight_rows(args) -> list:
    """tightTransf: the captioned video's rank when the approximate index (pooled vectors)
    pre-selects N videos for the cross encoder, against the cross encoder over every video."""
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    if not args.search_tight_index:
        return []
    d = Path(args.search_tight_index)
    try:
        index = VideoIndex(d)
        model = index.open_model(device="cpu")
        texts, vids = _captions(index)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(texts), min(len(texts), args.search_queries), replace=False)
        texts, vids = [texts[i] for i in pick], [vids[i] for i in pick]
        exact = Searcher(index, model, exact=True)
        if index.store.meta("ann") is None:
            return [{"vectors": f"tightTransf ({d})", "method": "-",
                     **na("the index has no approximate index (index it with --ann hnsw)")}]
    except Exception as e:
        return [{"vectors": f"tightTransf ({d})", "method": "-", **na(short_error(e))}]
    rows = []
    full = None
    for n in [0] + [int(x) for x in args.search_rerank.split(",")]:
        s = exact if n == 0 else Searcher(index, model, rerank=n)
        t = time.perf_counter()
        hits = s.search(texts, 10)
        ms = (time.perf_counter() - t) * 1000 / len(texts)
        top = [[h["id"] for h in hs] for hs in hits]
        if n == 0:
            full = top
        rows.append({"vectors": f"tightTransf demo ({len(index)} videos)", "n": len(index),
                     "method": "cross encoder over all" if n == 0 else f"{s.method} top {n}"
                     " + cross encoder", "status": "ok", "queries": len(texts),
                     "r1": float(np.mean([t[0] == v for t, v in zip(top, vids)])),
                     "r10": float(np.mean([v in t for t, v in zip(top, vids)])),
                     "overlap_at_10": float(np.mean([len(set(a) & set(b)) / len(b)
                                                     for a, b in zip(top, full)])),
                     "ms_per_query": ms, "load_1min": os.getloadavg()[0]})
        log(f"search {rows[-1]}")
    return rows


def store_rows(args) -> list:
    """A store of ``--search-store-n`` synthetic 512-d records with an IVF index: open + one
    query; adding 1,000 videos (no encoding)."""
    from clip4clip_dali.archive.ann_update import update_ann
    from clip4clip_dali.archive.collect import Candidate
    from clip4clip_dali.archive.indexer import _merge
    from clip4clip_dali.archive.staging import stage
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.store import VECTORS, Store, VideoRecord, write_part
    from clip4clip_dali.archive.video_index import VideoIndex

    n, d = args.search_store_n, 512
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="search-store-", dir=args.out))
    try:
        identity = {"sha256": "bench", "config_sha256": "bench", "checkpoint": "-",
                    "name": "synthetic", "sim_header": "meanP"}
        layout = {"dim": d}
        t = time.perf_counter()
        vectors, centres = clustered(n, d, 11)
        (tmp / VECTORS).mkdir(parents=True)
        part = write_part(tmp / VECTORS / "part-1.f16", vectors)
        store = Store.create(tmp, {"kind": "embeddings", "root": str(tmp), "model": identity,
                                   "layout": layout, "source": {}})
        recs = (VideoRecord(f"v{i}", f"v{i}.webm", 1, 1, 1.0, 1, 1.0, 1, 1, "vp9", None)
                for i in range(n))
        with store.transaction():
            store.add_part(part)
            store.put_records(recs, part["name"], range(n))
        store.close()
        del vectors
        update_ann(tmp, "ivf", [], [])
        log(f"search store: {n} records built in {time.perf_counter() - t:.0f} s")
        queries, _ = clustered(20, d, 12, centres)
        t = time.perf_counter()
        index = VideoIndex(tmp)
        searcher = Searcher(index, _NoModel())
        _, found = searcher._rank(_as_text(queries[:1]), 10)
        index.store.records(found[0].tolist())
        rows.append({"vectors": "store", "n": n, "dim": d, "method": "open + 1 query (ivf)",
                     "status": "ok", "open_query_s": time.perf_counter() - t,
                     "load_1min": os.getloadavg()[0]})
        # add 1,000 videos: stage, merge (one transaction), ANN update
        add = 1000
        new, _ = clustered(add, d, 13, centres)
        recs = [VideoRecord(f"n{i}", f"n{i}.webm", 1, 1, 1.0, 1, 1.0, 1, 1, "vp9", None)
                for i in range(add)]
        cands = [Candidate(f"v{i}", f"v{i}.webm", 1, 1) for i in range(n)] + \
                [Candidate(r.id, r.path, 1, 1) for r in recs]
        t = time.perf_counter()
        stage(tmp, "bench-r0-00000", identity, recs, [], new)
        s = _merge(tmp, identity, layout, tmp, cands, {"kept": n})
        a = update_ann(tmp, None, s.pop("added"), s.pop("dropped"))
        rows.append({"vectors": "store", "n": n, "dim": d, "method": "add 1,000 videos",
                     "status": "ok", "add_s": time.perf_counter() - t,
                     "recall_at_10": a.get("recall_at_10"), "load_1min": os.getloadavg()[0]})
        log(f"search store rows: {rows}")
    except Exception as e:
        rows.append({"vectors": "store", "n": n, "dim": d, "method": "store", **na(short_error(e))})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


class _NoModel:
    """The searcher's model stand-in for the store rows: queries come as vectors."""

    device = "cpu"
    sim_header = "meanP"


def _as_text(q: np.ndarray):
    import torch

    return torch.from_numpy(q.astype(np.float32))


def run(ctx) -> None:
    args, rep = ctx.args, ctx.rep
    sec = rep.doc.setdefault(NAME, {"config": {"queries": args.search_queries,
                                               "ivf_nprobe": 32, "hnsw_ef_search": 128,
                                               "threads": os.cpu_count()}, "rows": []})
    methods = [m.strip() for m in args.search_methods.split(",") if m.strip()]
    for d in [int(x) for x in args.search_dims.split(",") if x.strip()]:
        for n in [int(x) for x in args.search_sizes.split(",") if x.strip()]:
            vectors, centres = clustered(n, d, 1)
            queries, _ = clustered(args.search_queries, d, 2, centres)
            sec["rows"] += measure_set("synthetic clustered", vectors, queries, methods, args)
            rep.flush()
            del vectors
    sec["rows"] += real_rows(args)
    rep.flush()
    sec["rows"] += tight_rows(args)
    rep.flush()
    if args.search_store_n:
        sec["rows"] += store_rows(args)
        rep.flush()


def markdown(doc: dict) -> list[str]:
    d = doc.get(NAME)
    if not d:
        return []
    c = d["config"]
    lines = ["## Search: exact and approximate", "",
             f"One query at a time; recall@10 against exact search on {c['queries']} held "
             f"queries; ivf = IVF (~sqrt(n) lists) with float16 codes, nprobe {c['ivf_nprobe']}; "
             f"hnsw = HNSW32, efSearch {c['hnsw_ef_search']}. Load = 1-minute load average "
             f"after the row.", "",
             "| vectors | n | dim | method | build s | bytes/vector | p50 ms | p99 ms | recall@10 | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if r.get("vectors") == "store" or "r1" in r:
            continue
        if r.get("status") != "ok":
            lines.append(f"| {r.get('vectors')} | {r.get('n', '')} | {r.get('dim', '')} | "
                         f"{r.get('method', '')} | n/a: {r.get('reason', '')} | | | | | |")
            continue
        lines.append(f"| {r['vectors']} | {r['n']:,} | {r['dim']} | {r['method']} | "
                     f"{fmt(r['build_s'], 1)} | {fmt(r['bytes_per_vector'], 0)} | "
                     f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
                     f"{fmt(r['recall_at_10'], 3)} | {r['load_1min']:.1f} |")
    tight = [r for r in d["rows"] if "r1" in r]
    if tight:
        lines += ["", f"tightTransf on the demo's clips: the captioned video's R@1 / R@10 over "
                      f"{tight[0]['queries']} captions, and how much of the exact top 10 each "
                      f"way keeps.", "",
                  "| ranking | R@1 | R@10 | overlap@10 with exact | ms/query | load |",
                  "|---|---|---|---|---|---|"]
        for r in tight:
            lines.append(f"| {r['method']} | {100 * r['r1']:.1f} | {100 * r['r10']:.1f} | "
                         f"{r['overlap_at_10']:.3f} | {r['ms_per_query']:.1f} | "
                         f"{r['load_1min']:.1f} |")
    store = [r for r in d["rows"] if r.get("vectors") == "store"]
    if store:
        lines += ["", "| store | records | measured | load |", "|---|---|---|---|"]
        for r in store:
            val = r.get("open_query_s", r.get("add_s"))
            what = (f"{val:.2f} s" if val is not None else f"n/a: {r.get('reason')}") + \
                (f" (recall@10 after {r['recall_at_10']})" if r.get("recall_at_10") else "")
            lines.append(f"| {r['method']} | {r['n']:,} | {what} | {r.get('load_1min', 0):.1f} |")
    return lines + [""]


def targets(doc: dict) -> list[dict]:
    rows = doc.get(NAME, {}).get("rows", [])
    out = []
    big = [r for r in rows if r.get("status") == "ok" and r.get("n") == 1_000_000
           and r.get("dim") == 512 and r.get("method") in ("ivf", "hnsw")]
    if big:
        best = min(big, key=lambda r: r["p50_ms"])
        out.append({"target": "1M x 512: p50 <= 10 ms at recall@10 >= 0.95",
                    "measured": f"{best['method']} p50 {best['p50_ms']:.2f} ms, recall@10 "
                                f"{best['recall_at_10']:.3f}",
                    "met": "yes" if best["p50_ms"] <= 10 and best["recall_at_10"] >= 0.95 else "no"})
    for r in rows:
        if r.get("vectors") == "store" and r.get("status") == "ok" and r.get("n") == 1_000_000:
            if "open_query_s" in r:
                out.append({"target": "open a 1M store + 1 query <= 2 s",
                            "measured": f"{r['open_query_s']:.2f} s",
                            "met": "yes" if r["open_query_s"] <= 2 else "no"})
            if "add_s" in r:
                out.append({"target": "add 1,000 videos to a 1M index <= 30 s (no encoding)",
                            "measured": f"{r['add_s']:.1f} s",
                            "met": "yes" if r["add_s"] <= 30 else "no"})
    return out


def plot(doc: dict):
    return None


def merge(into: dict, sec: dict) -> None:
    merge_section(into, NAME, sec, tables=())
