"""Retrieval evaluation, the functions: every video decoded and encoded once, every caption once.

Each rank encodes its shard of the unique videos (the eval loader) and its contiguous share of
the captions; video features are gathered to every rank (padded to the largest count, gathered,
trimmed, so unequal shards cannot deadlock), each rank scores its captions against all videos
in chunks of ``eval.sim_chunk`` captions, and the score rows are gathered too. Every rank then
holds the same (n_captions, n_videos) matrix and the same metrics.

The trainer (``engine.py``), the evaluate CLI and the search tools use these; it imports
nothing above it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from .checkpoint import unwrap
from .metrics import dsl_metrics, format_table, retrieval_metrics

log = logging.getLogger("clip4clip_dali")


def autocast_context(precision: str, device: torch.device):
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp_fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_videos(model, loader, device, precision) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (video_index (n,), features (n, T, D), video_mask (n, T))."""
    idx, feats, masks = [], [], []
    for batch in loader:
        with autocast_context(precision, device):
            f = model.encode_video(batch["video"], batch["video_mask"])
        idx.append(batch["video_index"].to(device))
        feats.append(f.float())
        masks.append(batch["video_mask"].to(device))
    if feats:
        return torch.cat(idx), torch.cat(feats), torch.cat(masks)
    return None, None, None


def _gather_videos(idx, feats, masks, n_videos, max_frames, device, dim_hint):
    """All ranks' video features placed by video index; returns (present (n,), feats, masks)."""
    if D.get_world_size() > 1:
        # Every rank needs the feature shape even if it encoded nothing.
        dim = torch.tensor([feats.shape[-1] if feats is not None else 0], device=device)
        dim = int(D.all_reduce_max([float(dim.item())], device)[0])
        if feats is None:
            idx = torch.zeros(0, dtype=torch.int64, device=device)
            feats = torch.zeros(0, max_frames, dim, device=device)
            masks = torch.zeros(0, max_frames, dtype=torch.int64, device=device)
        idx = D.all_gather_varlen(idx.contiguous())
        feats = D.all_gather_varlen(feats.contiguous())
        masks = D.all_gather_varlen(masks.contiguous())
    if feats is None or feats.shape[0] == 0:
        return None, None, None
    if len(torch.unique(idx)) != len(idx):
        raise RuntimeError("evaluation loader yielded a video more than once across ranks")
    order = torch.argsort(idx)
    return idx[order], feats[order], masks[order]


def window_counts(split, present) -> dict:
    """For a split with time windows, {"moments": windowed entries, "video_files": files}
    among the evaluated entries ``present`` ("videos" counts the entries, the retrieval
    targets); {} otherwise."""
    windows = getattr(split, "video_window", None)
    if windows is None:
        return {}
    return {"moments": int(sum(windows[int(v)] is not None for v in present)),
            "video_files": len({split.video_paths[int(v)] for v in present})}


@torch.no_grad()
def evaluate_split(model, cfg, split, dist_info: D.DistInfo, loader=None,
                   tokenizer=None) -> dict:
    """Metrics of ``model`` on ``split`` (an MSVDSplit): {"plain": {...}, "dsl": {...}?, ...}."""
    from .data.loaders.loader import build_loader
    from .data.text import Tokenizer

    t0 = time.perf_counter()
    device = dist_info.device
    precision = cfg.train.precision
    m = unwrap(model)
    was_training = m.training
    m.eval()
    if loader is None:
        loader = build_loader(cfg, split, "eval", rank=dist_info.rank,
                              world_size=dist_info.world_size, device=device,
                              frame_cache=False)  # read once: nothing to cache
    idx, feats, masks = encode_videos(m, loader, device, precision)
    idx, feats, masks = _gather_videos(idx, feats, masks, split.num_videos, cfg.data.max_frames,
                                       device, None)
    if idx is None:
        raise RuntimeError(f"split {split.name}: no video could be decoded for evaluation")
    present = idx.cpu().numpy()
    # Keep the captions whose video was decoded; re-index videos to 0..n-1.
    remap = -np.ones(split.num_videos, dtype=np.int64)
    remap[present] = np.arange(len(present))
    cap_video = remap[np.asarray(split.caption_video)]
    keep = np.nonzero(cap_video >= 0)[0]
    if len(keep) < len(split.caption_video):
        log.warning("split %s: %d video(s) could not be decoded; their %d caption(s) are left "
                    "out of the metrics", split.name, split.num_videos - len(present),
                    len(split.caption_video) - len(keep))
    cap_video = cap_video[keep]
    captions = [split.captions[i] for i in keep]

    # This rank's contiguous share of the captions.
    shares = np.array_split(np.arange(len(captions)), dist_info.world_size)
    mine = shares[dist_info.rank]
    tok = tokenizer or Tokenizer(cfg.data.max_words)
    rows = []
    chunk = cfg.eval.sim_chunk
    loose = getattr(m, "loose_type", False) and hasattr(m, "video_embedding")
    if loose:  # video embeddings once; then each chunk is one matrix product
        with autocast_context(precision, device):
            v_emb = m.video_embedding(feats, masks).float()
        scale = m.logit_scale.exp().float()
    for s in range(0, len(mine), chunk):
        sel = mine[s:s + chunk]
        ids, mask = tok([captions[i] for i in sel])
        ids, mask = ids.to(device), mask.to(device)
        with autocast_context(precision, device):
            t = m.encode_text(ids, mask)
            if loose:
                sim = scale * m.text_embedding(t).float() @ v_emb.t()
            else:  # cross encoder over every (caption, video) pair, a few captions at a time
                sim = m.similarity(t, feats, masks, chunk=max(1, 16384 // max(1, len(present))))
        rows.append(sim.float())
    sim_local = torch.cat(rows) if rows else torch.zeros(0, len(present), device=device)
    sim = D.all_gather_varlen(sim_local.contiguous()).cpu()
    if was_training:
        m.train()
    results = {"plain": retrieval_metrics(sim, cap_video)}
    if cfg.eval.dsl:
        results["dsl"] = dsl_metrics(sim, cap_video)
    results["videos"] = int(len(present))
    results["captions"] = int(len(captions))
    results.update(window_counts(split, present))
    results["seconds"] = round(time.perf_counter() - t0, 3)
    return results


def print_results(results: dict, split: str, console=None) -> None:
    from rich.console import Console

    table = format_table({k: v for k, v in results.items() if k in ("plain", "dsl")},
                         title=split)
    targets = f"{results['videos']} videos"
    if "moments" in results:
        targets = (f"{results['videos']} entries ({results['moments']} time windows) from "
                   f"{results['video_files']} video files")
    table.caption = f"{results['captions']} captions, {targets}, {results['seconds']:.1f} s"
    (console or Console()).print(table)


def write_results(results: dict, output_dir: str | Path, name: str) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    return path
