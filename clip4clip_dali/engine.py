"""The training loop: accumulation, precision, clipping, non-finite guard, checkpoints, signals.

One optimizer step consumes one loader batch (``train.batch_size // world_size`` samples per
rank). With ``gradient_accumulation_steps = k`` the batch is cut into k micro-batches (the
original also divides its batch by k), the inner k-1 run under DDP's ``no_sync`` and the loss of
each is divided by k.

Step order: forward/backward (autocast per ``train.precision``; a GradScaler for amp_fp16) ->
unscale -> global grad-norm clip (``train.max_grad_norm``) -> non-finite / stop flags agreed by
all ranks -> optimizer step (BertAdam also clips each tensor) -> schedule -> clamp logit scale.

The loader order is a function of (seed, epoch); ``batch_in_epoch`` is saved, and a resumed run
skips that many batches of its epoch, so on CPU its losses equal an uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed as D
from .errors import UserError
from .retrieval import autocast_context, evaluate_split, print_results, write_results

log = logging.getLogger("clip4clip_dali")


class NonFiniteLossError(UserError):
    """Training met a non-finite loss with ``train.nonfinite_loss: stop``."""


@dataclass
class TrainState:
    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps attempted (applied + skipped)
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    skipped: int = 0  # steps skipped for a non-finite loss
    best_metric: float = -1.0  # best val t2v R@1
    best_epoch: int = -1
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"skipped": self.skipped, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "history": self.history}


class SignalGuard:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits. A second SIGINT
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self.signum = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        log.warning("received %s: finishing the current step, then saving latest.pt",
                    signal.Signals(signum).name)

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _split_batch(batch: dict, k: int) -> list[dict]:
    if k == 1:
        return [batch]
    n = next(iter(batch.values())).shape[0]
    if n % k:
        raise UserError(f"the per-rank batch ({n}) is not divisible by "
                        f"train.gradient_accumulation_steps ({k}); choose a batch size that is "
                        f"a multiple of world_size x gradient_accumulation_steps.")
    return [{key: v[i * (n // k):(i + 1) * (n // k)] for key, v in batch.items()}
            for i in range(k)]


class Trainer:
    def __init__(self, cfg, info: D.DistInfo, model: torch.nn.Module, train_model,
                 optimizer, scheduler, scaler, train_loader, val_split, tracker,
                 total_steps: int, state: TrainState | None = None, val_loader=None):
        self.cfg, self.info = cfg, info
        self.model = model  # the bare model (checkpoints, eval, clamp)
        self.train_model = train_model  # DDP and/or compiled wrapper used for forward
        self.ddp = train_model if isinstance(train_model, torch.nn.parallel.DistributedDataParallel) \
            else getattr(train_model, "_orig_mod", None)
        if not isinstance(self.ddp, torch.nn.parallel.DistributedDataParallel):
            self.ddp = None
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.loader, self.val_split, self.val_loader = train_loader, val_split, val_loader
        self.tracker = tracker
        self.total_steps = total_steps
        self.state = state or TrainState()
        self.out = Path(cfg.train.output_dir)
        self.config_dict = cfg.to_dict()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.losses: list[float] = []  # every step's loss on this run (tests)

    # ------------------------------------------------------------------------ checkpoints
    def save_latest(self) -> None:
        if not ckpt.all_finite(self.model):
            raise NonFiniteLossError(
                f"the weights hold non-finite values at step {self.state.step}; latest.pt was "
                f"NOT overwritten (the previous one is intact). Lower train.lr, use "
                f"train.precision amp_bf16 or fp32, or resume from the last good checkpoint.")
        if self.info.is_main:
            state = ckpt.full_state(model=self.model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, scaler=self.scaler,
                                    epoch=self.state.epoch, step=self.state.step,
                                    batch_in_epoch=self.state.batch_in_epoch,
                                    config=self.config_dict, extra=self.state.to_dict())
            ckpt.atomic_save(state, self.out / "latest.pt")
        D.barrier()

    def load_state(self, obj: dict) -> None:
        self.model.load_state_dict(ckpt.model_state(obj))
        self.optimizer.load_state_dict(obj["optimizer"])
        self.scheduler.load_state_dict(obj["scheduler"])
        if self.scaler is not None and self.scaler.is_enabled() and obj.get("scaler"):
            self.scaler.load_state_dict(obj["scaler"])
        extra = obj.get("extra") or {}
        self.state = TrainState(epoch=int(obj["epoch"]), step=int(obj["step"]),
                                batch_in_epoch=int(obj["batch_in_epoch"]),
                                skipped=int(extra.get("skipped", 0)),
                                best_metric=float(extra.get("best_metric", -1.0)),
                                best_epoch=int(extra.get("best_epoch", -1)),
                                history=list(extra.get("history", [])))
        if "rng" in obj:
            ckpt.set_rng_state(obj["rng"])

    # ------------------------------------------------------------------------ one step
    def _forward_backward(self, batch: dict) -> torch.Tensor:
        k = self.cfg.train.gradient_accumulation_steps
        micro = _split_batch(batch, k)
        total = None
        for i, mb in enumerate(micro):
            inner = self.ddp is not None and i < len(micro) - 1
            ctx = self.ddp.no_sync() if inner else contextlib.nullcontext()
            with ctx:
                with autocast_context(self.cfg.train.precision, self.info.device):
                    loss = self.train_model(mb)
                loss = loss.float() / k
                if self.scaler is not None and self.scaler.is_enabled():
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def train_step(self, batch: dict, stop_requested: bool) -> tuple[float, float | None, bool, bool]:
        """One optimizer step. Returns (loss, grad_norm, applied, stop_agreed)."""
        cfg = self.cfg.train
        loss = self._forward_backward(batch)
        fp16_scaler = self.scaler is not None and self.scaler.is_enabled()
        if fp16_scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm) if self.params else \
            torch.zeros((), device=self.info.device)
        if cfg.local_loss and self.info.world_size > 1:  # each rank holds its share
            loss_val = D.all_reduce_sum([float(loss)], self.info.device)[0] / self.info.world_size
        else:
            loss_val = float(loss)
        gn = float(grad_norm)
        bad_loss = not math.isfinite(loss_val)
        # Under amp_fp16 an inf gradient with a finite loss is the scaler's business (it skips
        # the step and lowers the scale); otherwise non-finite gradients count as non-finite.
        bad_grad = not math.isfinite(gn) and not fp16_scaler
        bad, stop = D.all_reduce_max([float(bad_loss or bad_grad), float(stop_requested)],
                                     self.info.device)
        if bad:
            self.state.skipped += 1
            what = f"loss {loss_val}" + ("" if not bad_grad else f", grad norm {gn}")
            if cfg.nonfinite_loss == "stop":
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"non-finite training values at step {self.state.step + 1} (epoch "
                    f"{self.state.epoch}, batch {self.state.batch_in_epoch}): {what}. "
                    f"Training stopped with train.nonfinite_loss=stop; nothing was saved from "
                    f"this step and {self.out / 'latest.pt'} (if any) is the last good state. "
                    f"Try a lower train.lr, train.precision amp_bf16 or fp32, or "
                    f"train.nonfinite_loss=skip.")
            log.warning("step %d: %s; skipping this step (%d skipped so far)",
                        self.state.step + 1, what, self.state.skipped)
            self.optimizer.zero_grad(set_to_none=True)
            if fp16_scaler:
                self.scaler.update()
            self.scheduler.step()
            return loss_val, gn, False, bool(stop)
        if fp16_scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if hasattr(self.model, "clamp_logit_scale"):
            self.model.clamp_logit_scale()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_val, gn, True, bool(stop)

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, tag_epoch: int, before: bool = False) -> dict | None:
        """Evaluate on val after epoch ``tag_epoch``, or with ``before`` the weights training
        starts from (the baseline: zero-shot for CLIP weights; never kept as best.pt)."""
        if self.val_split is None:
            return None
        res = evaluate_split(self.model, self.cfg, self.val_split, self.info,
                             loader=self.val_loader)
        r1 = res["plain"]["t2v"]["R1"]
        done = 0 if before else tag_epoch + 1
        self.state.history.append({"epoch": tag_epoch, "epochs_done": done,
                                   "step": self.state.step, "val_t2v_R1": r1})
        if self.info.is_main:
            name = self.val_split.name
            self.tracker.eval(step=self.state.step, epoch=tag_epoch, split=name,
                              results=res, seconds=res["seconds"], epochs_done=done)
            print_results(res, f"{name} (before training)" if before else f"{name} (epoch {tag_epoch})")
            write_results(res, self.out, f"eval_{name}_before.json" if before
                          else f"eval_{name}_epoch{tag_epoch}.json")
        if before:
            return res
        if r1 > self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = r1, tag_epoch
            if ckpt.all_finite(self.model) and self.info.is_main:
                ckpt.save_weights(self.out / "best.pt", self.model, self.config_dict,
                                  {"epoch": tag_epoch, "step": self.state.step,
                                   "val_t2v_R1": r1, "metrics": res["plain"]})
            D.barrier()
        return res

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> str:
        """Train to the end (or max_steps). Returns "done" or "stopped" (signal)."""
        cfg = self.cfg.train
        st = self.state
        guard = SignalGuard()
        if st.step == 0 and cfg.eval_every_epoch:
            self.evaluate(0, before=True)
        with guard:
            while st.epoch < cfg.epochs:
                if cfg.max_steps and st.step >= cfg.max_steps:
                    break
                self.loader.set_epoch(st.epoch)
                self.train_model.train()
                it = iter(self.loader.iter_from(st.batch_in_epoch))  # resume skips, not decodes
                n_batches = len(self.loader)
                finished_epoch = True
                while st.batch_in_epoch < n_batches:
                    t0 = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    wait = time.perf_counter() - t0
                    samples = next(iter(batch.values())).shape[0] * self.info.world_size
                    loss, gn, applied, stop = self.train_step(batch, guard.requested)
                    st.step += 1
                    st.batch_in_epoch += 1
                    self.losses.append(loss)
                    self.tracker.step(step=st.step, epoch=st.epoch, loss=loss,
                                      lr=float(self.optimizer.param_groups[0]["lr"]),
                                      step_s=time.perf_counter() - t0, wait_s=wait,
                                      samples=samples, skipped=st.skipped, grad_norm=gn,
                                      device=self.info.device)
                    if stop:
                        self.save_latest()
                        log.warning("stopped by signal at step %d (epoch %d, batch %d); "
                                    "resume with --resume auto", st.step, st.epoch,
                                    st.batch_in_epoch)
                        return "stopped"
                    if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                        self.save_latest()
                    if cfg.max_steps and st.step >= cfg.max_steps:
                        finished_epoch = st.batch_in_epoch >= n_batches
                        break
                del it
                if finished_epoch:
                    if cfg.eval_every_epoch:
                        self.evaluate(st.epoch)
                    st.epoch += 1
                    st.batch_in_epoch = 0
                    self.save_latest()
                else:  # max_steps inside an epoch: save (resumable), no evaluation
                    self.save_latest()
                    break
                if guard.requested:
                    log.warning("stopped by signal after epoch %d", st.epoch - 1)
                    return "stopped"
        return "done"
