"""Search an index by text with the model that built it.

    python -m clip4clip_dali.search --index INDEX_DIR "a man is slicing bread" [--top-k 10] [--json]
    python -m clip4clip_dali.search --index INDEX_DIR "query one" "query two"
    python -m clip4clip_dali.search --index INDEX_DIR --queries FILE      # one query a line

Prints, per query, the ranked videos: rank, score, id, path. The score is the cosine similarity
of text and video embeddings (meanP, seqLSTM, seqTransf) or the cross encoder's logit
(tightTransf, which runs over every indexed video for every query: slower). ``--json`` prints
``{"index", "model", "score", "results": [{"query", "hits": [{"rank", "score", "id", "path",
"rid", "duration"}]}]}`` (``rid``: the video's record id in the index, stable across
updates). An index made with ``index --window`` answers which video and when: each hit also
has ``start`` and ``end`` (seconds; the table prints them as ``from-to s``) and ``windows``, the
number of neighbouring windows of the video merged into it. ``--exact`` scores every vector even when the index has an approximate one;
tightTransf re-ranks the approximate index's best ``--rerank`` videos with its cross encoder.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import UserError, run_cli

log = logging.getLogger("clip4clip_dali")


def read_queries(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise UserError(f"--queries {path}: {e.strerror or e}; pass a text file with one query "
                        f"a line.") from None
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"--queries {path}: line {line} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
    queries = [q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#")]
    if not queries:
        raise UserError(f"--queries {path} holds no query (one a line; # starts a comment).")
    return queries


def check_device(device: str | None) -> str | None:
    """``--device`` as given, refused in one line when torch cannot use it."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
        if dev.type == "cuda" and (not torch.cuda.is_available()
                                   or (dev.index or 0) >= torch.cuda.device_count()):
            raise ValueError("no such CUDA device here")
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {device}: {e}; use cpu, or cuda / cuda:N for a GPU this "
                        f"machine has.") from None
    return device


def results_json(searcher, queries: list[str], hits: list[list[dict]]) -> dict:
    ident = searcher.index.identity
    return {"index": str(searcher.index.dir),
            "model": {"checkpoint": ident["checkpoint"], "sim_header": ident["sim_header"]},
            "score": searcher.score_kind, "method": searcher.method,
            "results": [{"query": q, "hits": h} for q, h in zip(queries, hits)]}


def print_results(queries: list[str], hits: list[list[dict]], score_kind: str, out=None) -> None:
    out = out or sys.stdout  # looked up when called, so a redirected stdout is followed
    for q, hs in zip(queries, hits):
        timed = any("start" in h for h in hs)
        print(f"query: {q}", file=out)
        print(f"  {'rank':>4}  {score_kind:>8}  " + (f"{'time':>13}  " if timed else "")
              + "id  path", file=out)
        for h in hs:
            when = f"{time_range(h):>13}  " if timed else ""
            print(f"  {h['rank']:>4}  {h['score']:8.4f}  {when}{h['id']}  {h['path']}", file=out)


def time_range(hit: dict) -> str:
    """``12.0-27.5 s`` for a moment, empty for a whole video."""
    return f"{hit['start']:.1f}-{hit['end']:.1f} s" if "start" in hit else ""


def main(argv: list[str] | None = None) -> int:
    from .. import distributed as D
    from ..runsetup import setup_logging
    from .searcher import RERANK, Searcher

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.search",
                                description="Rank the videos of an index for text queries.")
    p.add_argument("queries", nargs="*", help="one or more queries (quote each)")
    p.add_argument("--index", required=True, help="index folder written by clip4clip_dali.index")
    p.add_argument("--queries", dest="queries_file", metavar="FILE",
                   help="read queries from FILE, one a line")
    p.add_argument("--top-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it has moved since (it must "
                                        "be the same file)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--exact", action="store_true",
                   help="score every video, not the index's approximate search")
    p.add_argument("--rerank", type=int, default=RERANK, metavar="N",
                   help=f"tightTransf with an approximate index: the cross encoder ranks its "
                        f"best N (default {RERANK})")
    args = p.parse_args(argv)
    setup_logging(D.DistInfo())
    queries = list(args.queries) + (read_queries(args.queries_file) if args.queries_file else [])
    if not queries:
        raise UserError("no query: give one or more in quotes, e.g. \"a man is slicing bread\", "
                        "or --queries FILE.")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.rerank < 1:
        raise UserError(f"--rerank must be at least 1, got {args.rerank}.")
    searcher = Searcher.open(args.index, args.checkpoint, check_device(args.device),
                             exact=args.exact, rerank=args.rerank)
    hits = searcher.search(queries, args.top_k)
    if args.json:
        print(json.dumps(results_json(searcher, queries, hits), indent=1))
    else:
        print_results(queries, hits, searcher.score_kind)
    return 0


if __name__ == "__main__":
    run_cli(main)
