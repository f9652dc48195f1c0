"""Retrieval evaluation of a checkpoint, the command line.

    python -m clip4clip_dali.evaluate --checkpoint RUN/best.pt [--config CFG] [--split test]
        [--set k=v] [--out DIR_OR_FILE]
    torchrun --nproc_per_node=N -m clip4clip_dali.evaluate ...

The model, its frame sampling, resolution and precision come from the config saved in the
checkpoint (as for ``index``; ``--config`` gives them only for a bare state dict); ``--config``
and ``--set`` choose where and how the data is read (dataset, paths, loader, splits, evaluation
options). No pretrained weights are fetched: the checkpoint holds them all.

Every video is decoded and encoded once, every caption once, on all ranks (see
:mod:`clip4clip_dali.retrieval`). Every rank holds the same metrics; rank 0 prints them as a
table and writes ``eval_<split>.json`` beside the checkpoint (or into ``--out``: a folder, or a
``.json`` file name).
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
from pathlib import Path

from . import distributed as D
from .config import Config, ConfigError, from_dict, load_config, parse_override
from .errors import UserError
from .retrieval import evaluate_split, print_results, write_results  # noqa: F401 (re-exported)

log = logging.getLogger("clip4clip_dali")


# What the model sees, and so what the checkpoint decides: never taken from --config or --set.
MODEL_KEYS = ("model", "data.max_words", "data.max_frames", "data.feature_framerate",
              "data.slice_framepos", "data.image_resolution", "data.eval_frame_order",
              "train.precision", "train.local_loss")


def _is_model_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MODEL_KEYS)


def eval_config(checkpoint: str, config: str | None, overrides: list[str]) -> Config:
    """The checkpoint's config, with where and how data is read taken from ``config`` (when
    given) and ``overrides``; an override that changes what the model sees is refused. A bare
    state dict (no saved config) takes everything from ``config`` and ``overrides``."""
    from . import checkpoint as ckpt

    saved = ckpt.load(checkpoint).get("config")
    if not (isinstance(saved, dict) and saved):
        if not config:
            raise UserError(f"checkpoint {checkpoint} holds no config (a bare state dict); pass "
                            f"--config with the YAML config it was trained with.")
        return load_config(config, overrides)
    saved = from_dict(saved, f"the config saved in {checkpoint}").to_dict()
    raw = load_config(config).to_dict() if config else saved
    for key in MODEL_KEYS:
        section, _, name = key.partition(".")
        if name:
            raw[section][name] = saved[section][name]
        else:
            raw[section] = saved[section]
    for text in overrides:
        keys, value = parse_override(text)
        key = ".".join(keys)
        node, now = raw, saved
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set {text}: unknown key {key!r}.")
            node, now = node[k], now.get(k) or {}
        # (model.quick_gelu may be stated when the checkpoint left it to weights not here)
        settles = key == "model.quick_gelu" and now.get("quick_gelu") is None
        if _is_model_key(key) and now.get(keys[-1]) != value and not settles:
            raise ConfigError(f"--set {text}: the model, its frame sampling and resolution come "
                              f"from the checkpoint ({checkpoint}: {key} = "
                              f"{now.get(keys[-1])!r}) and cannot change when evaluating; "
                              f"--set may change where and how data is read.")
        node[keys[-1]] = value
    return from_dict(raw, f"the config of {checkpoint} with --config/--set")


def results_path(out: str | None, checkpoint: str, split: str) -> tuple[Path, str]:
    """(folder, file name) of the results: ``--out`` (a folder, or a file ending in .json),
    else beside the checkpoint."""
    if out is None:
        return Path(checkpoint).resolve().parent, f"eval_{split}.json"
    path = Path(out)
    if path.suffix == ".json":
        if path.is_dir():
            raise UserError(f"--out {out} is a folder; give a folder or a new .json file name.")
        return path.parent, path.name
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a folder (eval_{split}.json "
                        f"is written into it) or a file name ending in .json.")
    return path, f"eval_{split}.json"


def main(argv: list[str] | None = None) -> int:
    from .runsetup import model_from_checkpoint, prepare_data, setup_logging

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.evaluate",
                                description="Text-video retrieval metrics of a checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="best.pt or latest.pt written by clip4clip_dali.train (or a weights file "
                        "with --config)")
    p.add_argument("--config", default=None,
                   help="YAML config: where the data is read (dataset, paths, loader, eval "
                        "options); the model and its sampling only for a bare state dict")
    p.add_argument("--split", default=None, help="split to evaluate (default: eval.split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data or eval key, e.g. --set eval.dsl=true")
    p.add_argument("--out", default=None,
                   help="folder (or .json file) for the results (default: beside the checkpoint)")
    args = p.parse_args(argv)
    cfg = eval_config(args.checkpoint, args.config, args.set)
    split_name = args.split or cfg.eval.split
    out_dir, out_name = results_path(args.out, args.checkpoint, split_name)
    info = D.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    setup_logging(info)
    try:
        prepare_data(cfg, info)
        from .data.dataset import load_split

        split = load_split(cfg.data, split_name)  # raises when nothing usable is left
        model = model_from_checkpoint(args.checkpoint, cfg, info.device)
        results = evaluate_split(model, cfg, split, info)
        results["checkpoint"] = str(args.checkpoint)
        results["split"] = split_name
        if info.is_main:
            print_results(results, split_name)
            path = write_results(results, out_dir, out_name)
            log.info("wrote %s", path)
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
