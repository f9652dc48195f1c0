"""The all-gathered loss on 2 gloo processes equals one process holding the global batch.

Each worker computes the loss on its half of the batch, backpropagates, and averages the
parameter gradients over ranks the way DDP does (all_reduce SUM / world). Because the gather's
backward sums every rank's gradient for each slice, that average equals the single-process
gradient of the global loss (see clip4clip_dali/loss.py for the scaling argument).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist

from conftest import run_ranks
from test_model import make_batch, tiny_model

WORLD = 2
BATCH = 4
CASES = [("meanP", False), ("meanP", True), ("seqTransf", False), ("tightTransf", False)]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        results = {}
        full = make_batch(BATCH)
        per = BATCH // WORLD
        local = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}
        for sim_header, local_loss in CASES:
            model = tiny_model(seed=0, sim_header=sim_header)
            model.local_loss = local_loss
            if sim_header == "tightTransf":
                model.head.dropout.p = 0.0
            loss = model(local)
            loss.backward()
            grads = _grads(model)
            for g in grads.values():  # what DDP does: average over ranks
                dist.all_reduce(g)
                g /= WORLD
            losses = [torch.zeros(()) for _ in range(WORLD)]
            dist.all_gather(losses, loss.detach())
            results[(sim_header, local_loss)] = {"losses": torch.stack(losses), "grads": grads}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def _single(sim_header: str, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = tiny_model(seed=0, sim_header=sim_header)
    if sim_header == "tightTransf":
        model.head.dropout.p = 0.0
    loss = model(batch)
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    run_ranks(_worker, lambda r: (r, str(d / "init"), str(d)), range(WORLD), 300)
    return torch.load(d / "dist.pt", weights_only=False)


@pytest.mark.parametrize("sim_header,local_loss", [c for c in CASES if c[0] != "tightTransf"])
def test_gathered_loss_and_grads_equal_single_process(dist_results, sim_header, local_loss):
    res = dist_results[(sim_header, local_loss)]
    ref_loss, ref_grads = _single(sim_header, make_batch(BATCH))
    if local_loss:  # each rank holds its rows' share; their mean is the global loss
        assert torch.allclose(res["losses"].mean(), ref_loss, atol=1e-5)
    else:  # every rank computes the same global loss
        assert torch.allclose(res["losses"], ref_loss.expand(WORLD), atol=1e-5)
    assert set(res["grads"]) == set(ref_grads)
    for name, g in ref_grads.items():
        assert torch.allclose(res["grads"][name], g, atol=1e-5, rtol=1e-4), name


def test_tight_transf_stays_per_rank(dist_results):
    res = dist_results[("tightTransf", False)]
    full = make_batch(BATCH)
    per = BATCH // WORLD
    for r in range(WORLD):
        part = {k: v[r * per:(r + 1) * per] for k, v in full.items()}
        loss, _ = _single("tightTransf", part)
        assert torch.allclose(res["losses"][r], loss, atol=1e-5)
