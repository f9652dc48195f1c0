"""The end of the demo: index the test split with the model just trained, then search it once.

The query is the first caption of the split's first video, so the right answer is known: the
printout says whether that video comes first. The index is left in ``<output_dir>/index`` for
``clip4clip_dali.search`` and ``clip4clip_dali.serve``.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path

from . import distributed as D
from .config import Config

log = logging.getLogger("clip4clip_dali")


def index_and_search(cfg: Config, split: str, info: D.DistInfo, top_k: int = 3) -> dict | None:
    """Every rank indexes; rank 0 searches, prints and returns what it found."""
    from .data.dataset import load_split
    from .archive.indexer import build_index, split_candidates
    from .runsetup import checkpoint_config
    from .archive.searcher import Searcher

    out = Path(cfg.train.output_dir)
    checkpoint = out / "best.pt" if (out / "best.pt").is_file() else out / "latest.pt"
    model_cfg = checkpoint_config(checkpoint, cfg)
    root, candidates = split_candidates(cfg, split)
    index_dir = out / "index"
    summary = build_index(index_dir, checkpoint, model_cfg, root, candidates, info, rebuild=True,
                          show_progress=False, source={"data_path": cfg.data.data_path,
                                                       "split": split})
    if not info.is_main:
        return None
    searcher = Searcher.open(index_dir, device=info.device)
    index = searcher.index
    first = index.records[0]
    listing = load_split(cfg.data, split, probe=False)
    captions: dict[str, list[str]] = {}
    for text, v in zip(listing.captions, listing.caption_video):
        captions.setdefault(listing.video_ids[int(v)], []).append(text)
    query = captions[first.id][0]
    hits = searcher.search([query], top_k)[0]
    right = hits[0]["id"] == first.id
    # The same question for every caption of the split: how often is its video first?
    queries = [(c, r.id) for r in index.records for c in captions.get(r.id, [])]
    best = searcher.search([c for c, _ in queries], top_k)
    top1 = sum(h[0]["id"] == vid for h, (_, vid) in zip(best, queries)) / len(queries)
    topk = sum(any(x["id"] == vid for x in h) for h, (_, vid) in zip(best, queries)) / len(queries)
    print(f"\nSearch: {summary['videos']} {split} videos indexed in {summary['seconds']:.1f} s "
          f"into {index_dir}")
    print(f"  query: \"{query}\" (a caption of {first.id})")
    for h in hits:
        mark = "  <- the captioned video" if h["id"] == first.id else ""
        print(f"  {h['rank']}. {h['score']:.3f}  {h['id']}{mark}")
    print(f"  right video first: {'yes' if right else 'no'}")
    print(f"  over all {len(queries)} captions of the split: the captioned video is first for "
          f"{100 * top1:.1f}%, in the top {top_k} for {100 * topk:.1f}%")
    print(f"  try: python -m clip4clip_dali.search --index {index_dir} {shlex.quote(query)}")
    print(f"       python -m clip4clip_dali.serve --index {index_dir}", flush=True)
    return {"query": query, "video": first.id, "hits": hits, "right_first": right,
            "top1": round(top1, 4), f"top{top_k}": round(topk, 4), "index": str(index_dir),
            "index_seconds": summary["seconds"]}
