"""A bounded load test of ``python -m clip4clip_dali.serve`` on loopback.

    python benchmarks/load_test.py --index runs/demo/index [--clients 20] [--seconds 30]
                                   [--store-n 1000000] [--out benchmarks/results --name NAME]

For the index given and, with ``--store-n``, for a store of that many vectors made from it
(its real records and vectors first, then synthetic ones of the same model and dimension, with
an IVF index), it starts ``serve`` on a free 127.0.0.1 port, and ``--clients`` threads (one
keep-alive connection each) send for ``--seconds`` a mix of searches (half; captions of the
index's split as queries, k=12), thumbnails (three in ten) and clip range requests (two in ten,
64 KiB at a random offset). Reports requests/s, p50/p99 latency per kind, errors (any status
but 200/206, any failed connection) and the server's resident memory before and after. Only
loopback addresses are used. The clients run in this process (Python threads): on a 2-core
machine they share the cores with the server.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

MIX = (("search", 0.5), ("thumb", 0.3), ("clip", 0.2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def captions_of(index) -> list[str]:
    from clip4clip_dali.data.dataset import load_split

    src = index.store.meta("source") or {}
    split = load_split(index.config().data, src.get("split", "test"), probe=False)
    return list(split.captions)


def big_store(index_dir: Path, n: int, tmp: Path) -> Path:
    """A store of ``n`` vectors: the index's own records and vectors, then synthetic ones."""
    from clip4clip_dali.archive.ann_update import update_ann
    from clip4clip_dali.archive.store import THUMBS, VECTORS, Store, VideoRecord, write_part
    from clip4clip_dali.archive.video_index import VideoIndex

    src = VideoIndex(index_dir)
    real = src.records
    vec = src.vectors()["embeddings"].numpy()
    d = vec.shape[1]
    rng = np.random.default_rng(0)
    extra = n - len(real)
    centres = vec.astype(np.float32)
    out = tmp / "store"
    (out / VECTORS).mkdir(parents=True)
    shutil.copytree(index_dir / THUMBS, out / THUMBS)
    shutil.copy(index_dir / "config.yaml", out / "config.yaml")
    rows = np.empty((n, d), dtype=np.float16)
    rows[:len(real)] = vec
    for s in range(0, extra, 65536):
        m = min(65536, extra - s)
        x = centres[rng.integers(0, len(centres), m)] + 0.3 * rng.standard_normal((m, d))
        rows[len(real) + s:len(real) + s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    part = write_part(out / VECTORS / "part-1.f16", rows)
    store = Store.create(out, {"kind": "embeddings", "root": str(src.root), "model": src.identity,
                               "layout": {"dim": d}, "source": src.store.meta("source")})
    fake = (VideoRecord(f"x{i}", f"synthetic/x{i}.webm", 1, 1, 1.0, 1, 1.0, 1, 1, "vp9", None)
            for i in range(extra))
    with store.transaction():
        store.add_part(part)
        store.put_records(real, part["name"], range(len(real)))
        store.put_records(fake, part["name"], range(len(real), n))
    store.close()
    update_ann(out, "ivf", [], [])
    return out


def run_one(label: str, index_dir: Path, queries: list[str], args) -> dict:
    from clip4clip_dali.archive.video_index import VideoIndex

    index = VideoIndex(index_dir)
    real = [r for r in index.store.records(list(range(1, 201))) if r.thumb]
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The server's log goes to a file: a pipe nobody reads fills up and stalls every thread
    # that logs (waitress warns about its queue depth under this load).
    log_file = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "clip4clip_dali.serve", "--index",
                               str(index_dir), "--port", str(port), "--host", "127.0.0.1"],
                              cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", "/")
                c.getresponse().read()
                c.close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"serve did not start: {Path(log_file.name).read_text()[-2000:]}")
                time.sleep(0.5)
        rss_before = rss_mib(server.pid)
        results: list[tuple[str, float, int]] = []
        lock = threading.Lock()
        stop = time.time() + args.seconds

        def client(seed: int) -> None:
            rnd = random.Random(seed)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine = []
            while time.time() < stop:
                kind = rnd.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                rec = rnd.choice(real)
                headers = {}
                if kind == "search":
                    path = "/api/search?" + urllib.parse.urlencode({"q": rnd.choice(queries),
                                                                    "k": 12})
                elif kind == "thumb":
                    path = f"/thumb/{rec.rid}"
                else:
                    path = f"/video/{rec.rid}"
                    start = rnd.randrange(max(1, rec.size - 65536))
                    headers["Range"] = f"bytes={start}-{start + 65535}"
                t = time.perf_counter()
                try:
                    conn.request("GET", path, headers=headers)
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                except (OSError, http.client.HTTPException):
                    status = -1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                mine.append((kind, (time.perf_counter() - t) * 1000, status))
            conn.close()
            with lock:
                results.extend(mine)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_after = rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log_file.close()
        os.unlink(log_file.name)
    row = {"target": label, "videos": len(index), "clients": args.clients,
           "seconds": round(wall, 1), "requests": len(results),
           "requests_per_s": round(len(results) / wall, 1),
           "errors": sum(1 for _, _, s in results if s not in (200, 206)),
           "error_kinds": sorted({f"{k} {s}" for k, _, s in results if s not in (200, 206)}),
           "rss_mib_before": round(rss_before, 1), "rss_mib_after": round(rss_after, 1),
           "load_1min_after": os.getloadavg()[0], "kinds": {}}
    for kind, _ in MIX:
        ms = np.asarray([m for k, m, _ in results if k == kind])
        if ms.size:
            row["kinds"][kind] = {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                                  "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    print(json.dumps(row), flush=True)
    return row


def markdown(doc: dict) -> str:
    m = doc["meta"]
    lines = [f"# serve load test: {m['name']}", "",
             f"- date {m['created']}; {m['cores']} cores; load average at start "
             f"{'/'.join(f'{x:.1f}' for x in m['load_at_start'])} (other jobs shared the "
             f"machine); command `{m['command']}`",
             f"- {m['clients']} clients (threads in the load-test process, one keep-alive "
             f"connection each) for {m['seconds']} s on 127.0.0.1; mix: half searches (k=12), "
             f"3/10 thumbnails, 2/10 clip range requests of 64 KiB", "",
             "| target | videos | requests/s | errors | search p50/p99 ms | thumb p50/p99 ms | "
             "clip p50/p99 ms | server RSS MiB before/after | load after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        k = r["kinds"]
        cell = lambda n: f"{k[n]['p50_ms']} / {k[n]['p99_ms']}" if n in k else "n/a"  # noqa: E731
        lines.append(f"| {r['target']} | {r['videos']:,} | {r['requests_per_s']} | {r['errors']} "
                     f"| {cell('search')} | {cell('thumb')} | {cell('clip')} | "
                     f"{r['rss_mib_before']} / {r['rss_mib_after']} | {r['load_1min_after']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--store-n", type=int, default=0, help="also a store of this many vectors")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default=f"cpu-{len(os.sched_getaffinity(0))}core-"
                                     f"{time.strftime('%Y-%m-%d')}-serve-load")
    args = p.parse_args()
    from clip4clip_dali.archive.video_index import VideoIndex

    index_dir = Path(args.index).resolve()  # the server runs in another folder
    Path(args.out).mkdir(parents=True, exist_ok=True)
    queries = captions_of(VideoIndex(index_dir))
    doc = {"meta": {"name": args.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "cores": len(os.sched_getaffinity(0)), "load_at_start": list(os.getloadavg()),
                    "clients": args.clients, "seconds": args.seconds,
                    "command": " ".join(["python"] + sys.argv)}, "rows": []}
    doc["rows"].append(run_one(f"{index_dir}", index_dir, queries, args))
    if args.store_n:
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            t = time.perf_counter()
            store = big_store(index_dir, args.store_n, Path(tmp))
            print(f"store of {args.store_n} vectors made in {time.perf_counter() - t:.0f} s",
                  flush=True)
            doc["rows"].append(run_one(f"{args.store_n:,}-vector store (ivf)", store, queries, args))
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{args.name}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
