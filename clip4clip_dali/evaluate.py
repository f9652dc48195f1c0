"""Retrieval evaluation of a checkpoint, the command line.

    python -m clip4clip_dali.evaluate --config CFG --checkpoint PATH [--split test] [--set k=v]
    torchrun --nproc_per_node=N -m clip4clip_dali.evaluate ...

Every video is decoded and encoded once, every caption once, on all ranks (see
:mod:`clip4clip_dali.retrieval`). Every rank holds the same metrics; rank 0 prints them as a
table and writes ``<output_dir>/eval_<split>[_<tag>].json``.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging

from . import distributed as D
from .retrieval import evaluate_split, print_results, write_results  # noqa: F401 (re-exported)

log = logging.getLogger("clip4clip_dali")


def main(argv: list[str] | None = None) -> int:
    from .config import load_config
    from .runsetup import model_from_checkpoint, prepare_data, setup_logging

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.evaluate",
                                description="Text-video retrieval metrics of a checkpoint.")
    p.add_argument("--config", required=True, help="YAML config the model was trained with")
    p.add_argument("--checkpoint", required=True, help="best.pt, latest.pt or a weights file")
    p.add_argument("--split", default=None, help="split to evaluate (default: eval.split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set eval.dsl=true")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    info = D.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    setup_logging(info)
    try:
        split_name = args.split or cfg.eval.split
        prepare_data(cfg, info)
        from .data.dataset import load_split

        split = load_split(cfg.data, split_name)  # raises when nothing usable is left
        model = model_from_checkpoint(args.checkpoint, cfg, info.device)
        results = evaluate_split(model, cfg, split, info)
        results["checkpoint"] = str(args.checkpoint)
        results["split"] = split_name
        if info.is_main:
            print_results(results, split_name)
            path = write_results(results, cfg.train.output_dir, f"eval_{split_name}.json")
            log.info("wrote %s", path)
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
