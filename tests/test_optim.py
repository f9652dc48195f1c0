"""BertAdam against a hand-computed step, and the warmup schedules."""
import math

import pytest
import torch

from clip4clip_dali.optim import BertAdam, LRScheduler, warmup_cosine, warmup_linear


def test_bertadam_one_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.3, 0.4])  # norm 0.5 < 1: no clipping
    opt = BertAdam([p], lr=0.1, b1=0.9, b2=0.98, e=1e-6, weight_decay=0.2, max_grad_norm=1.0)
    opt.step()
    g = torch.tensor([0.3, 0.4])
    m = 0.1 * g  # no bias correction
    v = 0.02 * g * g
    upd = m / (v.sqrt() + 1e-6) + 0.2 * torch.tensor([1.0, -2.0])
    expect = torch.tensor([1.0, -2.0]) - 0.1 * upd
    assert torch.allclose(p.detach(), expect, atol=1e-6)


def test_bertadam_second_step_and_per_tensor_clip():
    p = torch.nn.Parameter(torch.tensor([0.5]))
    opt = BertAdam([p], lr=0.01, weight_decay=0.0, max_grad_norm=1.0)
    p.grad = torch.tensor([3.0])  # clipped to norm 1 -> 1.0
    opt.step()
    p.grad = torch.tensor([-0.5])
    opt.step()
    g2 = -0.5
    g1 = 3.0 * (1.0 / (3.0 + 1e-6))
    m1, v1 = 0.1 * g1, 0.02 * g1 * g1
    x = 0.5 - 0.01 * m1 / (math.sqrt(v1) + 1e-6)
    m2, v2 = 0.9 * m1 + 0.1 * g2, 0.98 * v1 + 0.02 * g2 * g2
    x = x - 0.01 * m2 / (math.sqrt(v2) + 1e-6)
    assert p.item() == pytest.approx(x, rel=1e-5)
    assert opt.state[p]["step"] == 2


def test_schedules():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert warmup_linear(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_linear(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_linear(1.0, 0.1) == 0.0


def test_scheduler_sets_lr_per_step_like_the_original():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = BertAdam([{"params": [p], "lr": 1e-3}], lr=1e-3)
    s = LRScheduler(opt, "warmup_cosine", total_steps=10, warmup=0.1)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        s.step()
    # first step uses schedule(0) = 0, as the original's progress = state['step'] / t_total
    assert seen[0] == 0.0
    assert seen[1] == pytest.approx(1e-3 * warmup_cosine(0.1, 0.1))
    assert seen[5] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    state = s.state_dict()
    s2 = LRScheduler(opt, "warmup_cosine", total_steps=10, warmup=0.1)
    s2.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_cosine(1.0, 0.1))
