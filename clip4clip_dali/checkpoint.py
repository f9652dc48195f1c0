"""Atomic checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file next to its destination, flushed, fsynced and
renamed over it with ``os.replace`` (then the directory is fsynced), so a crash or a SIGKILL in
the middle leaves the previous file intact. Everything stored is a tensor, a number, a string or
a list/dict of those: the config as a plain dict, RNG states as tensors and lists.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under torch.compile's and DDP's wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


# ------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------ writing
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (tmp file, fsync, os.replace, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp.*"):  # left by a killed writer
        try:
            pid = int(stale.name.rsplit(".", 1)[1])
            if pid != os.getpid():
                os.kill(pid, 0)  # still alive: leave it alone
                continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        stale.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); a bad file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file "
                              f"written by clip4clip_dali.train (e.g. <output_dir>/latest.pt).")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); the file is "
                              f"corrupt, truncated or not a clip4clip_dali checkpoint. Use "
                              f"another checkpoint or start without --resume.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict.")
    return obj


def model_state(obj: dict) -> dict:
    """The model state dict of a full checkpoint, a weights-only file, or a bare state dict."""
    if "model" in obj and isinstance(obj["model"], dict):
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
    else:
        sd = obj
    # strip wrappers' prefixes
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def all_finite(model: torch.nn.Module) -> bool:
    ps = [p.detach() for p in model.parameters() if p.is_floating_point()]
    if not ps:
        return True
    norms = torch._foreach_norm(ps)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def full_state(*, model, optimizer, scheduler, scaler, epoch: int, step: int,
               batch_in_epoch: int, config: dict, extra: dict | None = None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "step": int(step),
        "batch_in_epoch": int(batch_in_epoch),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }


def save_weights(path: str | Path, model, config: dict, extra: dict | None = None) -> Path:
    return atomic_save({"format": FORMAT_VERSION, "model": unwrap(model).state_dict(),
                        "config": config, "extra": extra or {}}, path)


def load_model_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights only into ``model`` (``init_model``, evaluation). Returns the checkpoint."""
    obj = load(path)
    sd = model_state(obj)
    target = unwrap(model)
    try:
        missing, unexpected = target.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({str(e)[:300]}); "
                              f"check that model.name, model.sim_header and the other model "
                              f"options match those it was trained with.") from None
    return obj
