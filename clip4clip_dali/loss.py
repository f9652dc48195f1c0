"""Symmetric contrastive loss over features gathered from every rank.

Gradient scaling (read this before comparing with the original):

* ``gather_with_grad`` concatenates the features of all ranks; its backward *sums* the gradient
  that every rank computed for each slice and hands each rank the sum for its own slice
  (``torch.distributed.nn.all_gather``: reduce-scatter on NCCL, all-to-all + sum on gloo), as
  open_clip's ``gather_with_grad`` does.
* Every rank computes the same global loss ``L`` (full ``Nt x Nv`` matrix), so after the
  backward rank r holds ``W * dL/dtheta_r`` (its own contribution, times the world size W);
  DDP then *averages* over ranks, giving exactly ``dL/dtheta`` -- the gradient a single
  process holding the whole global batch would get. ``tests/test_model_dist.py`` checks this.
* With ``local_loss=True`` rank r only computes the rows of its own samples (``B x W*B``
  logits, labels offset by ``r*B``); the mean over ranks of these losses is the global loss
  and, with the same summed gather and DDP's average, the gradient is again ``dL/dtheta``
  (cheaper: W times fewer logits per rank). The loss value logged on one rank is then its
  local share; average it across ranks to report the global loss.
* The original CLIP4Clip's ``AllGather`` backward only *slices* the gradient (no sum), so with
  DDP's average its effective gradient is ``dL/dtheta / W``. Adam-type optimizers are almost
  invariant to that constant, but gradient clipping at 1.0 is not; we follow open_clip (the
  true gradient, independent of the number of processes).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def dist_world() -> tuple[int, int]:
    """(rank, world_size) when torch.distributed is initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path to every slice.

    All ranks must pass the same shape (training batches are dropped-last)."""
    rank, world = dist_world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def symmetric_ce(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the row-wise and column-wise cross entropy with the diagonal as the positives
    (the original's ``CrossEn`` on ``sim`` and ``sim.T``, averaged)."""
    if labels is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def contrastive_loss(text_emb: torch.Tensor, video_emb: torch.Tensor, logit_scale: torch.Tensor,
                     local_loss: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE of ``logit_scale * t @ v^T`` over the global batch.

    ``text_emb``/``video_emb``: (B, D) L2-normalised local embeddings (row i of each is a
    positive pair); ``logit_scale``: the already exponentiated scale. Computed in float32."""
    t = text_emb.float()
    v = video_emb.float()
    scale = logit_scale.float()
    rank, world = dist_world()
    if world == 1:
        return symmetric_ce(scale * t @ v.t())
    all_t = gather_with_grad(t)
    all_v = gather_with_grad(v)
    if not local_loss:
        return symmetric_ce(scale * all_t @ all_v.t())
    b = t.shape[0]
    labels = torch.arange(b, device=t.device) + rank * b
    loss_t2v = F.cross_entropy(scale * t @ all_v.t(), labels)
    loss_v2t = F.cross_entropy(scale * v @ all_t.t(), labels)
    return 0.5 * (loss_t2v + loss_v2t)
