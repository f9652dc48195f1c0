"""Index a video collection with a trained model, for ``search`` and ``serve``.

    python -m clip4clip_dali.index --checkpoint runs/demo/best.pt --videos DIR --out INDEX_DIR
    python -m clip4clip_dali.index --checkpoint CKPT [--config CFG] --split test --out INDEX_DIR
    python -m clip4clip_dali.index --checkpoint CKPT --videos DIR --out DIR --window 10 --stride 5
    python -m clip4clip_dali.index --convert INDEX_DIR        # an index.json index, once
    torchrun --nproc_per_node=N -m clip4clip_dali.index ...

The model, its frame sampling and resolution come from the config saved in the checkpoint
(``--config`` for a bare state dict, and for the data paths of ``--split``). Re-running encodes
only new and changed files; unreadable files are listed and skipped. A split of a tar shard set
(``data.dataset: shards``) is read out of its shards (:mod:`.tar_clips`). ``--ann`` picks the
approximate index built at the end (see :mod:`.ann`). ``--window``/``--stride`` index each video
as overlapping time windows, one vector each, for moment search (:mod:`.moments`). See
:mod:`.indexer` and :mod:`.store`.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from .. import distributed as D
from ..config import Config, ConfigError, from_dict, load_config, parse_override
from ..errors import UserError, run_cli

log = logging.getLogger("clip4clip_dali")

# How the videos are read may change; what the model sees (sampling, resolution) may not.
LOADING_KEYS = ("data.loader", "data.num_workers", "data.dali_threads", "data.dali_decoder",
                "data.prefetch", "train.eval_batch_size")


def apply_loading_overrides(cfg: Config, overrides: list[str]) -> Config:
    raw = cfg.to_dict()
    for text in overrides:
        keys, value = parse_override(text)
        key = ".".join(keys)
        if key not in LOADING_KEYS:
            raise ConfigError(f"--set {text}: only how videos are read may change when indexing "
                              f"({', '.join(LOADING_KEYS)}); the frame sampling, resolution and "
                              f"model come from the checkpoint's config.")
        raw[keys[0]][keys[1]] = value
    return from_dict(raw, "the checkpoint's config (with --set overrides)")


def run_config(checkpoint: str, config: str | None, overrides: list[str]) -> tuple[Config, Config | None]:
    """(the model's config: the checkpoint's, else --config; the --config file, if any)."""
    from ..runsetup import checkpoint_config

    given = load_config(config) if config else None
    cfg = checkpoint_config(checkpoint, given)
    return apply_loading_overrides(cfg, overrides), given


def main(argv: list[str] | None = None) -> int:
    from .ann import KINDS
    from .indexer import build_index, folder_candidates, split_candidates
    from .moments import check_windowing, whole_seconds
    from ..runsetup import setup_logging

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.index",
                                description="Encode every video of a folder (or of a split) once "
                                            "with a trained model, for search and serve.")
    p.add_argument("--checkpoint", help="best.pt or latest.pt written by clip4clip_dali.train "
                                        "(default with --config: <train.output_dir>/best.pt)")
    p.add_argument("--videos", help="folder of videos (any container, any sub-folder)")
    p.add_argument("--config", help="YAML config: the data paths of --split, and the model of "
                                    "a checkpoint that holds no config")
    p.add_argument("--split", help="index this split of the config's dataset (data.data_path / "
                                   "data.features_path; a tar shard set's clips are served "
                                   "out of its shards)")
    p.add_argument("--out", help="index folder (created; extended when it exists)")
    p.add_argument("--convert", metavar="INDEX_DIR",
                   help="convert an index of the old format (index.json) to the store, and stop")
    p.add_argument("--ann", choices=KINDS, default=None,
                   help="approximate search: auto (exact below 20,000 videos, ivf above; the "
                        "default for a new index), exact, ivf, hnsw (needs the [search] extra)")
    p.add_argument("--window", type=whole_seconds("--window"), metavar="SECONDS",
                   help="moment search: index each video as windows of SECONDS (whole seconds; "
                        "the last one clipped to the video, a shorter video is one window), "
                        "one vector each, so that search answers which video and when")
    p.add_argument("--stride", type=whole_seconds("--stride"), metavar="SECONDS",
                   help="with --window: seconds from one window's start to the next (at most "
                        "the window; default half of it, rounded up)")
    p.add_argument("--rebuild", action="store_true", help="start the index afresh")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again the files that failed before even if they did not change")
    p.add_argument("--flush-every", type=int, default=256, metavar="N",
                   help="write a resumable part every N videos (default 256)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"how to read the videos: {', '.join(LOADING_KEYS)}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    if args.convert:
        from .legacy import convert

        print(f"converted {args.convert}: {convert(Path(args.convert))} videos")
        return 0
    if not args.out:
        raise UserError("--out INDEX_DIR is required: the folder of the index to build or "
                        "extend.")
    window = check_windowing(args.window, args.stride)
    if args.flush_every < 1:
        raise UserError(f"--flush-every must be at least 1, got {args.flush_every}.")
    if bool(args.videos) == bool(args.split):
        raise UserError("give exactly one of --videos DIR (a folder of videos) and --split NAME "
                        "(a split of the config's dataset).")
    checkpoint = args.checkpoint
    if checkpoint is None:
        if not args.config:
            raise UserError("--checkpoint is required (or --config, whose "
                            "<train.output_dir>/best.pt is then used).")
        checkpoint = os.path.join(load_config(args.config).train.output_dir, "best.pt")
    cfg, given = run_config(checkpoint, args.config, args.set)
    info = D.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    setup_logging(info)
    try:
        if args.videos:
            root, candidates = folder_candidates(args.videos)
            source = {"videos": str(root)}
        else:
            data = (given or cfg).data
            if data.dataset == "shards":
                from .tar_clips import NO_WINDOWS, with_model_sampling

                if window:
                    raise UserError(NO_WINDOWS)
                data = with_model_sampling(data, cfg)
            data_cfg = dataclasses.replace(cfg, data=data)
            root, candidates = split_candidates(data_cfg, args.split)
            source = {"data_path": str(data_cfg.data.data_path), "split": args.split}
        summary = build_index(args.out, checkpoint, cfg, root, candidates, info,
                              rebuild=args.rebuild, retry_failed=args.retry_failed,
                              flush_every=args.flush_every,
                              show_progress=not args.no_progress, source=source,
                              ann_kind=args.ann, window=window)
        if info.is_main:
            if args.json:
                print(json.dumps(summary, indent=1))
            else:
                windows = (f" as {summary['windows']} windows of {window['window']} s every "
                           f"{window['stride']} s" if window else "")
                print(f"index {summary['index']}: {summary['videos']} videos{windows} "
                      f"({summary['encoded']} "
                      f"encoded now at {summary['videos_per_s']} videos/s, {summary['kept']} "
                      f"kept, {summary['removed']} removed), {len(summary['failed'])} unreadable")
                a = summary["ann"]
                print(f"  search: {a['kind']}" + (f" (recall@10 against exact search "
                      f"{a['recall_at_10']:.3f})" if "recall_at_10" in a else "")
                      + (f"; {a['why']}" if "why" in a else ""))
                for f in summary["failed"]:
                    print(f"  unreadable: {f['path']}: {f['error']}")
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)
