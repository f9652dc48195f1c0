"""The run set-up that train, evaluate, index and search share: logging, seeding, the model
(from a config or from a checkpoint and the config saved in it) and the data.

It sits below the trainer (``engine.py``) and the CLIs, so they import it and never each other.
"""
from __future__ import annotations

import logging
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed as D
from .config import Config, from_dict
from .errors import UserError

log = logging.getLogger("clip4clip_dali")


def setup_logging(info: D.DistInfo) -> None:
    level = logging.INFO if info.is_main else logging.WARNING
    root = logging.getLogger("clip4clip_dali")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[rank {info.rank}] " if info.world_size > 1 else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_data(cfg: Config, info: D.DistInfo) -> None:
    """Generate the synthetic dataset when the config asks for one and it is missing."""
    syn = cfg.data.synthetic
    data_path = Path(cfg.data.data_path)
    if syn.videos > 0 and not (data_path / "raw-captions.pkl").exists():
        if info.is_main:
            from .data.synthetic import generate_dataset

            log.info("generating a synthetic dataset of %d %s clips at %s", syn.videos,
                     syn.codec, data_path)
            stats = generate_dataset(data_path, syn.videos, codec=syn.codec, seed=syn.seed,
                                     min_seconds=syn.min_seconds, max_seconds=syn.max_seconds)
            log.info("synthetic dataset ready in %.1f s: %s", stats.get("seconds", 0.0),
                     {k: stats[k] for k in ("videos", "captions", "splits") if k in stats})
        D.barrier()


def output_folder(path: str | Path, key: str = "train.output_dir") -> Path:
    """``path`` as a folder (created); a UserError naming ``key`` when it is a file or cannot
    be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{key} = {path} is a file, not a folder; choose a folder for the "
                        f"run's outputs.") from None
    except OSError as e:
        raise UserError(f"{key} = {path} cannot be created ({e.strerror or e}); choose a "
                        f"folder you can write.") from None
    return path


def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    from .model import CLIP4Clip

    model = CLIP4Clip.from_config(cfg.model, max_words=cfg.data.max_words,
                                  max_frames=cfg.data.max_frames,
                                  local_loss=cfg.train.local_loss)
    return model.to(device)


def build_split_loader(cfg: Config, split, mode: str, info: D.DistInfo):
    from .data.loaders.loader import build_loader

    return build_loader(cfg, split, mode, rank=info.rank, world_size=info.world_size,
                        device=info.device)


def checkpoint_config(path: str | Path, fallback: Config | None = None) -> Config:
    """The config saved in a checkpoint (``best.pt`` and ``latest.pt`` carry the one they were
    trained with); ``fallback`` when the file has none (a bare state dict)."""
    obj = ckpt.load(path)
    saved = obj.get("config")
    if isinstance(saved, dict) and saved:
        return from_dict(saved, f"the config saved in {path}")
    if fallback is None:
        raise UserError(f"checkpoint {path} holds no config (a bare state dict); pass --config "
                        f"with the YAML config it was trained with.")
    return fallback


def offline_model_config(cfg: Config) -> Config:
    """``cfg`` with ``model.pretrained = 'none'``, for a model whose weights all come from a
    checkpoint: nothing is downloaded or read for the starting weights. What those weights
    decided about the architecture (QuickGELU for OpenAI's) is kept: from the open_clip tag's
    description (no download), or from the local file when it is still there."""
    import dataclasses

    from .model import backbone as bb

    model = cfg.model
    tag = (model.pretrained or "none").strip()
    if model.quick_gelu is None and tag.lower() not in ("none", "", "random"):
        quick = None
        if Path(tag).expanduser().is_file():
            quick = bool(bb.read_checkpoint(str(Path(tag).expanduser()))[1].get("openai"))
        elif not bb._looks_like_path(tag):
            import open_clip

            pcfg = open_clip.get_pretrained_cfg(bb.normalize_model_name(model.name), tag) or {}
            quick = bool(pcfg.get("quick_gelu", False))
        if quick is None:
            raise UserError(f"the checkpoint's config starts from model.pretrained = {tag!r}, "
                            f"which is not here; whether the model uses QuickGELU depends on "
                            f"it: pass --set model.quick_gelu=true (OpenAI's weights) or false.")
        quick_cfg = bb.resolve_model_config(model.name, model.open_clip_config)
        model = dataclasses.replace(model, quick_gelu=quick or bool(quick_cfg.get("quick_gelu")))
    return dataclasses.replace(cfg, model=dataclasses.replace(model, pretrained="none"))


def model_from_checkpoint(path: str | Path, cfg: Config, device: torch.device) -> torch.nn.Module:
    """``cfg``'s model with the checkpoint's weights, in eval mode (``fp16_weights`` runs keep
    CLIP in fp16, as they were trained). The starting weights are never fetched."""
    with warnings.catch_warnings():  # "starts from random weights": the checkpoint's follow
        warnings.filterwarnings("ignore", message="model.pretrained = 'none'")
        model = build_model(offline_model_config(cfg), device)
    ckpt.load_model_weights(model, path)
    if cfg.train.precision == "fp16_weights" and hasattr(model, "convert_clip_to_fp16"):
        model.convert_clip_to_fp16()
    return model.eval()
