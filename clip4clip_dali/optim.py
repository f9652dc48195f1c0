"""Optimizers and learning-rate schedules.

``BertAdam`` behaves as the original CLIP4Clip's (``modules/optimization.py``, from
pytorch-pretrained-bert): Adam moments with no bias correction, each parameter's gradient first
clipped to norm ``max_grad_norm`` on its own, weight decay added to the update (decoupled, scaled
by the learning rate), ``p -= lr * (m / (sqrt(v) + eps) + wd * p)``.

The original folds the schedule into the optimizer (``lr * schedule(step / t_total)`` with the
step counted before it is incremented, so the first update uses the schedule at 0). Here a
separate ``LRScheduler`` writes ``group["lr"]`` before every step with the same function of the
same step count, which is identical while every parameter gets a gradient every step and also
drives the fused AdamW alternative.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim import Optimizer


# ---------------------------------------------------------------------------------- schedules
def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    if x < warmup:
        return x / warmup
    return max((x - 1.0) / (warmup - 1.0), 0.0)


def warmup_constant(x: float, warmup: float = 0.002) -> float:
    if x < warmup:
        return x / warmup
    return 1.0


def constant(x: float, warmup: float = 0.0) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_cosine": warmup_cosine,
    "warmup_linear": warmup_linear,
    "warmup_constant": warmup_constant,
    "constant": constant,
}


class LRScheduler:
    """``group["lr"] = base_lr * schedule(step / total, warmup)``, set before each step.

    ``step`` is the number of optimizer steps already taken; ``state_dict`` holds plain numbers
    so a checkpoint loads with ``weights_only=True``.
    """

    def __init__(self, optimizer: Optimizer, schedule: str, total_steps: int, warmup: float):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.fn = SCHEDULES[schedule]
        self.total_steps = max(int(total_steps), 1)
        self.warmup = float(warmup)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int | None = None) -> float:
        step = self.step_count if step is None else step
        return self.fn(step / self.total_steps, self.warmup)

    def _apply(self) -> None:
        f = self.factor()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs),
                "total_steps": self.total_steps, "warmup": self.warmup,
                "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()


# ---------------------------------------------------------------------------------- BertAdam
class BertAdam(Optimizer):
    """Adam as in BERT / CLIP4Clip: no bias correction, per-tensor clipping, decoupled decay."""

    def __init__(self, params, lr: float = 1e-4, b1: float = 0.9, b2: float = 0.98,
                 e: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
            raise ValueError(f"invalid betas ({b1}, {b2})")
        if e < 0.0:
            raise ValueError(f"invalid epsilon {e}")
        defaults = dict(lr=lr, b1=b1, b2=b2, e=e, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, b1, b2, eps = group["lr"], group["b1"], group["b2"], group["e"]
            wd, clip = group["weight_decay"], group["max_grad_norm"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                if clip > 0:  # per-tensor clipping, in place, as the original
                    norm = torch.linalg.vector_norm(grad.float())
                    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                    grad.mul_(coef.to(grad.dtype))
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                update = m / (v.sqrt() + eps)
                if wd > 0.0:
                    update.add_(p, alpha=wd)
                p.add_(update, alpha=-lr)
                state["step"] += 1
        return loss


# ---------------------------------------------------------------------------------- building
def _split_groups(model: torch.nn.Module, lr: float, coef_lr: float, weight_decay: float):
    """Fallback when the model has no ``param_groups``: decay everything but biases/norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bias" in name or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def param_groups(model: torch.nn.Module, lr: float, coef_lr: float, weight_decay: float):
    if hasattr(model, "param_groups"):
        groups = model.param_groups(lr, coef_lr, weight_decay)
    else:
        groups = _split_groups(model, lr, coef_lr, weight_decay)
    return [g for g in groups if len(list(g["params"])) > 0]


def build_optimizer(train_cfg, model: torch.nn.Module, total_steps: int,
                    device: torch.device | None = None):
    """(optimizer, LRScheduler) from ``cfg.train``."""
    groups = param_groups(model, train_cfg.lr, train_cfg.coef_lr, train_cfg.weight_decay)
    if train_cfg.optimizer == "bertadam":
        # The original passes max_grad_norm=1.0 to BertAdam for its per-tensor clip; the
        # config's max_grad_norm is the global clip applied before it (also 1.0 there).
        opt = BertAdam(groups, lr=train_cfg.lr, b1=0.9, b2=0.98, e=1e-6,
                       weight_decay=train_cfg.weight_decay, max_grad_norm=1.0)
    elif train_cfg.optimizer == "adamw":
        fused = device is not None and device.type == "cuda"
        opt = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                                weight_decay=train_cfg.weight_decay, fused=fused or None)
    else:  # config validation should have caught it
        raise ValueError(f"unknown optimizer {train_cfg.optimizer!r}")
    sched = LRScheduler(opt, train_cfg.schedule, total_steps, train_cfg.warmup_proportion)
    return opt, sched
