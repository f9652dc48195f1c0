"""Write the first N samples of a split, as a backend loads them, to an .npz file.

    python -m clip4clip_dali.data.dump --config CFG --split test --backend dali --limit 8 --out batch.npz

The file holds ``video`` (N,T,3,R,R) float32, ``video_mask`` (N,T), ``video_index`` (N,),
``video_ids`` (N,) strings, and for the train split ``text``/``text_mask`` (N,L). Dumps of two
backends with the same config compare sample for sample (same sharding seed, same order).
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from ..errors import UserError, run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.data.dump", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config (default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--backend", choices=["dali", "reference", "auto"], default="auto")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--limit", type=int, default=8, help="samples to write")
    p.add_argument("--out", required=True, help="output .npz")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from ..config import load_config
    from .loaders.loader import build_loader
    from .dataset import load_split

    cfg = load_config(args.config, args.set + [f"data.loader={args.backend}"])
    if args.limit < 1:
        raise UserError("--limit must be at least 1.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = load_split(cfg.data, getattr(cfg.data, f"{args.split}_split"))
    mode = "train" if args.split == "train" else "eval"
    loader = build_loader(cfg, split, mode, device=device)
    parts: dict[str, list[np.ndarray]] = {}
    got = 0
    for batch in loader:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v.cpu().numpy())
        got += len(batch["video_index"])
        if got >= args.limit:
            break
    if not parts:
        raise UserError(f"split {split.name} yielded no batch (fewer samples than one batch?).")
    out = {k: np.concatenate(v)[: args.limit] for k, v in parts.items()}
    out["video_ids"] = np.array([split.video_ids[i] for i in out["video_index"]])
    out["backend"] = np.array(loader.backend)
    np.savez(args.out, **out)
    print(f"wrote {len(out['video_index'])} samples ({loader.backend}, {device}) to {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
