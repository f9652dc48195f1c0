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
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .pt file in it (e.g. "
                              f"{path}/best.pt or latest.pt).")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file "
                              f"written by clip4clip_dali.train (e.g. <output_dir>/latest.pt).")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if "Weights only load failed" in why:  # torch's advice to unpickle anything: not ours
            why = "not a PyTorch tensor file, or one holding Python objects besides tensors"
        raise CheckpointError(f"checkpoint {path} could not be loaded ({why}); the file is "
                              f"corrupt, truncated or not a clip4clip_dali checkpoint. Pass "
                              f"best.pt or latest.pt written by clip4clip_dali.train.") from None
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


def _original_format(sd: dict, target: torch.nn.Module, path) -> dict:
    """An original CLIP4Clip state dict (``pytorch_model.bin.N``) in our names, checked against
    the configured model (UserError naming the fix when it does not fit)."""
    from .model import original_names as on

    if not on.is_original(sd) or not hasattr(target, "sim_header"):
        return sd
    head = target.head
    blocks = getattr(head, "transformerClip", None) or getattr(head, "transformer", None)
    return on.from_original(sd, sim_header=target.sim_header, linear_patch=target.linear_patch,
                            max_words=target.max_words, max_frames=target.max_frames,
                            cross_layers=len(blocks.resblocks) if blocks is not None else 0,
                            source=f"checkpoint {path}")


def load_model_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights only into ``model`` (``init_model``, evaluation): our checkpoints, or a
    plain state dict in the original CLIP4Clip's names. Returns the checkpoint."""
    obj = load(path)
    _refuse_original_optimizer(obj, path, "train.init_model / --checkpoint")
    target = unwrap(model)
    sd = _original_format(model_state(obj), target, path)
    try:
        missing, unexpected = target.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({str(e)[:300]}); "
                              f"check that model.name, model.sim_header and the other model "
                              f"options match those it was trained with.") from None
    return obj


def _refuse_original_optimizer(obj: dict, path, use: str) -> None:
    if "optimizer_state_dict" in obj and "format" not in obj:
        raise CheckpointError(
            f"checkpoint {path} is an optimizer state written by the original CLIP4Clip "
            f"(pytorch_opt.bin.N); it cannot be used for {use}. Resume works within our format "
            f"(latest.pt); to continue from the original's run, start from its weights with "
            f"train.init_model=<its pytorch_model.bin.N> (a new optimizer state).")


def load_for_resume(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A full checkpoint of ours (``latest.pt``) for ``--resume``; anything else is refused
    with the fix."""
    obj = load(path, map_location=map_location)
    _refuse_original_optimizer(obj, path, "--resume")
    if not all(k in obj for k in ("model", "optimizer", "scheduler", "step")):
        raise CheckpointError(
            f"checkpoint {path} holds weights only (no optimizer or step), so a run cannot "
            f"resume from it; pass it as train.init_model to start a new run from its "
            f"weights, or resume from a latest.pt written by clip4clip_dali.train.")
    return obj


# ------------------------------------------------------------------------------ export
def _context_length(config: dict, default: int) -> int:
    model = (config or {}).get("model") or {}
    try:
        from .model.backbone import resolve_model_config

        cfg = resolve_model_config(model["name"], model.get("open_clip_config"))
        return int(cfg["text_cfg"].get("context_length", default))
    except Exception:  # noqa: BLE001 - no or unknown config: the caller's default
        return default


def export_original(src: str | Path, out: str | Path, dtype: str = "original",
                    context_length: int | None = None) -> Path:
    """Write our checkpoint ``src`` as the original CLIP4Clip's ``pytorch_model.bin``: its
    names, CLIP's conv/linear/attention weights in float16, positions padded to the CLIP text
    context (77 for OpenAI's CLIP) read from the checkpoint's config."""
    from .model import original_names as on

    obj = load(src)
    sd = model_state(obj)
    if not any(k.startswith("clip.") for k in sd) or on.is_original(sd) and any(
            k.startswith(on.HEAD_PREFIXES) for k in sd):
        raise CheckpointError(f"checkpoint {src} is not a clip4clip_dali model checkpoint "
                              f"(no clip.* weights, or already in the original's names).")
    ctx = context_length or _context_length(obj.get("config"), 77)
    orig = on.to_original(sd, context_length=ctx, dtype=dtype)
    return atomic_save(orig, out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.checkpoint",
                                description="Checkpoint tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-original", help="write CKPT in the original CLIP4Clip's names "
                       "and dtypes (load it there as pytorch_model.bin.N / --init_model)")
    e.add_argument("checkpoint", help="best.pt, latest.pt or a weights file of ours")
    e.add_argument("out", help="output file, e.g. pytorch_model.bin.0")
    e.add_argument("--dtype", choices=("original", "float32"), default="original",
                   help="original: CLIP's conv/linear/attention weights float16, as the "
                        "original saves them (default); float32: everything float32, lossless")
    e.add_argument("--context-length", type=int, default=None,
                   help="rows of the position tables (default: the CLIP text context from the "
                        "checkpoint's config, else 77)")
    args = p.parse_args(argv)
    path = export_original(args.checkpoint, args.out, args.dtype, args.context_length)
    print(f"wrote {path} (the original CLIP4Clip's names, dtype {args.dtype})")
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
