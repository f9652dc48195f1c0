"""Retrieval metrics with CLIP4Clip's multi-sentence rules, and dual-softmax re-ranking.

``sim`` is ``(n_captions, n_videos)``; ``caption_video[i]`` is the video of caption ``i``.

* text-to-video: every caption is a query; its rank is the position of its own video among all
  videos.
* video-to-text (the original's ``tensor_video_to_text_sim`` + ``compute_metrics``): the
  captions are grouped by video and a group scores ``max`` over its captions; for each video
  query the rank is the position of its own caption group among all groups.

Ranks are 0-based; R@K = 100 * mean(rank < K), MdR = median(rank) + 1, MnR = mean(rank) + 1.
Ties are counted against the query (a rank is the number of *other* candidates scoring at least
as high), so a collapsed model whose scores are all equal gets the worst rank, not the best. The
original breaks ties by sort order (and its v2t code miscounts them); on real-valued scores
ties do not occur and the numbers are identical. MdR of t2v uses the lower middle value
(``torch.median``) and v2t the mean of the two (``np.median``), as the original does.
"""
from __future__ import annotations

import numpy as np
import torch

KEYS = ("R1", "R5", "R10", "MdR", "MnR")


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to("cpu", torch.float64)


def _ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``scores[i, target[i]]`` in row i; ties count against the target."""
    own = scores.gather(1, target[:, None])
    ge = (scores >= own).sum(1) - 1  # others scoring at least as high
    nan = torch.isnan(own[:, 0])
    ge[nan] = scores.shape[1] - 1  # a NaN score is ranked last
    return ge


def _summary(ranks: torch.Tensor, lower_median: bool) -> dict[str, float]:
    r = ranks.to(torch.float64)
    if lower_median:
        med = float(torch.median(r)) + 1.0
    else:
        med = float(np.median(r.numpy())) + 1.0
    return {
        "R1": float((r < 1).double().mean() * 100),
        "R5": float((r < 5).double().mean() * 100),
        "R10": float((r < 10).double().mean() * 100),
        "MdR": med,
        "MnR": float(r.mean()) + 1.0,
    }


def group_max(sim: torch.Tensor, caption_video: torch.Tensor, n_videos: int) -> torch.Tensor:
    """(n_videos groups, n_videos): max over each video's captions of their similarity."""
    out = torch.full((n_videos, sim.shape[1]), float("-inf"), dtype=sim.dtype)
    idx = caption_video[:, None].expand_as(sim)
    clean = torch.where(torch.isnan(sim), torch.full_like(sim, float("-inf")), sim)
    return out.scatter_reduce(0, idx, clean, reduce="amax", include_self=True)


def text_to_video_ranks(sim, caption_video) -> torch.Tensor:
    sim = _as_tensor(sim)
    cv = torch.as_tensor(np.asarray(caption_video), dtype=torch.int64)
    return _ranks(sim, cv)


def video_to_text_ranks(sim, caption_video) -> torch.Tensor:
    sim = _as_tensor(sim)
    cv = torch.as_tensor(np.asarray(caption_video), dtype=torch.int64)
    n_videos = sim.shape[1]
    groups = group_max(sim, cv, n_videos)  # [group g, video v]
    vt = groups.T.contiguous()  # [video query v, caption group g]
    has_caption = torch.zeros(n_videos, dtype=torch.bool)
    has_caption[cv] = True
    vt = vt[has_caption]
    target = torch.arange(n_videos)[has_caption]
    return _ranks(vt, target)


def retrieval_metrics(sim, caption_video) -> dict[str, dict[str, float]]:
    """``{"t2v": {R1, R5, R10, MdR, MnR}, "v2t": {...}}`` of a caption x video score matrix."""
    sim_t = _as_tensor(sim)
    if sim_t.ndim != 2:
        raise ValueError(f"sim must be 2-D (n_captions, n_videos), got shape {tuple(sim_t.shape)}")
    cv = np.asarray(caption_video)
    if cv.shape != (sim_t.shape[0],):
        raise ValueError(f"caption_video has shape {cv.shape}, expected ({sim_t.shape[0]},)")
    if sim_t.shape[0] == 0 or sim_t.shape[1] == 0:
        raise ValueError("retrieval_metrics needs at least one caption and one video")
    if cv.min() < 0 or cv.max() >= sim_t.shape[1]:
        raise ValueError("caption_video holds an index outside 0..n_videos-1")
    return {
        "t2v": _summary(text_to_video_ranks(sim_t, cv), lower_median=True),
        "v2t": _summary(video_to_text_ranks(sim_t, cv), lower_median=False),
    }


def dual_softmax(sim, temperature: float = 1.0, dim: int = 0) -> torch.Tensor:
    """Dual-softmax re-ranking (DSL, Cheng et al. 2021): ``sim * softmax(sim * temperature, dim)``.

    ``sim`` should already be logits (the model's similarity is scaled by its logit scale, so
    the default temperature is 1). ``dim=0`` normalises each video over all captions (a prior
    used for text-to-video); ``dim=1`` each caption over all videos (for video-to-text).
    """
    s = _as_tensor(sim)
    return s * torch.softmax(s * temperature, dim=dim)


def dsl_metrics(sim, caption_video, temperature: float = 1.0) -> dict[str, dict[str, float]]:
    """Retrieval metrics after dual-softmax re-ranking (reported apart from the plain ones)."""
    cv = np.asarray(caption_video)
    t2v = _summary(text_to_video_ranks(dual_softmax(sim, temperature, 0), cv), True)
    v2t = _summary(video_to_text_ranks(dual_softmax(sim, temperature, 1), cv), False)
    return {"t2v": t2v, "v2t": v2t}


def format_table(results: dict[str, dict[str, dict[str, float]]], title: str = "retrieval"):
    """A rich Table of ``{name: {"t2v": {...}, "v2t": {...}}}`` (name: "plain", "dsl")."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for k in KEYS:
        table.add_column(k, justify="right")
    for name, res in results.items():
        for direction in ("t2v", "v2t"):
            m = res[direction]
            label = direction if name == "plain" else f"{direction} ({name})"
            table.add_row(label, *(f"{m[k]:.1f}" for k in KEYS))
    return table
