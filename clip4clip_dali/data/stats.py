"""Per-split statistics of any dataset a config describes (MSVD, MSR-VTT, JSONL/CSV, DiDeMo,
ActivityNet, LSMDC, tar shards).

    python -m clip4clip_dali.data.stats --config configs/msrvtt_meanP.yaml [--set k=v] [--json]

Per split: videos listed, found, missing (with examples), captions, training pairs and samples
per epoch, and, from the probed videos (cached in the manifest, as training caches them):
readable and unreadable videos, total duration, codecs, resolutions and frame rates. A shard set
(``data.dataset: shards``) is described from its manifest: the sampling it was written with,
shards, bytes and frames per clip; probing checks each shard against its index (what training
would skip), never decodes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from typing import TYPE_CHECKING

from ..errors import run_cli
from .dataset import list_split, split_names
from .split import SplitListing, manifest_path

if TYPE_CHECKING:
    from ..config import DataConfig

EXAMPLES = 5


def _top(counter: Counter) -> dict[str, int]:
    return {k: n for k, n in counter.most_common()}


def split_stats(listing: SplitListing, data_cfg: "DataConfig", probe: bool = True) -> dict:
    usable = listing.usable
    pairs = sum(len(listing.captions[v]) for v in usable)
    out = {
        "videos_listed": len(listing.listed),
        "videos_found": len(listing.listed) - len(listing.no_video),
        "videos_missing": len(listing.no_video),
        "missing_examples": listing.no_video[:EXAMPLES],
        "videos_without_captions": len(listing.no_captions),
        "captions": sum(len(listing.captions.get(v, ())) for v in listing.listed),
        "pairs": pairs,
        "train_samples_per_epoch": len(usable) if listing.caption_per_epoch else pairs,
    }
    if listing.windows:  # each (video, window) is an entry of its own
        out["entries"] = sum(len(set(listing.windows.get(v) or [None])) for v in usable)
    if getattr(data_cfg, "dataset", None) == "shards":
        return {**out, **_shard_stats(data_cfg, listing.name, probe)}
    if not probe:
        return out
    from .manifest import load_manifest

    found = [v for v in listing.listed if v in listing.videos]
    infos = load_manifest({v: listing.videos[v] for v in found},
                          manifest_path(data_cfg, listing.manifest)) if found else {}
    ok = [infos[v] for v in found if infos[v].ok]
    bad = [v for v in found if not infos[v].ok]
    out.update({
        "videos_readable": len(ok),
        "videos_unreadable": len(bad),
        "unreadable_examples": [f"{listing.videos[v]}: {infos[v].error}" for v in bad[:EXAMPLES]],
        "duration_s": round(sum(i.duration for i in ok), 1),
        "codecs": _top(Counter(i.codec for i in ok)),
        "resolutions": _top(Counter(f"{i.width}x{i.height}" for i in ok)),
        "frame_rates": _top(Counter(f"{i.fps:.4g}" for i in ok)),
    })
    return out


def _shard_stats(data_cfg: "DataConfig", split: str, probe: bool) -> dict:
    """What a shard set's manifest records for ``split`` (and, probing, what its shards hold)."""
    from . import shards

    doc, store = shards.read_manifest(data_cfg)
    entry = doc["splits"][split]
    frames = [int(s["frames"]) for sh in entry["shards"] for s in sh["samples"]]
    out = {"sampling": doc["sampling"], "codec": doc.get("codec"), "crf": doc.get("crf"),
           "shards": len(entry["shards"]), "shard_bytes": sum(int(sh["bytes"])
                                                               for sh in entry["shards"]),
           "frames_per_clip": {"min": min(frames, default=0), "max": max(frames, default=0),
                               "mean": round(sum(frames) / max(1, len(frames)), 2)},
           "videos_not_written": len(doc.get("failed") or {})}
    if probe:
        skipped: list = []
        ext = shards.CLIP_EXT.get(str(doc.get("codec", "vp9")), "webm")
        usable = sum(len(shards._usable_samples(store, sh, ext, skipped))
                     for sh in entry["shards"])
        out.update({"samples_readable": usable, "samples_skipped": len(skipped),
                    "skipped_examples": skipped[:EXAMPLES]})
    return out


def dataset_stats(data_cfg: "DataConfig", probe: bool = True) -> dict:
    """{split: stats} for every split of the dataset ``data_cfg`` describes."""
    return {name: split_stats(list_split(data_cfg, name), data_cfg, probe)
            for name in split_names(data_cfg)}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_stats(stats: dict, data_cfg: "DataConfig") -> str:
    lines = [f"dataset {data_cfg.dataset}: {data_cfg.data_path}"]
    for name, s in stats.items():
        lines.append(f"{name}: {s['videos_listed']} videos listed, {s['videos_found']} found, "
                     f"{s['videos_missing']} missing; {s['captions']} captions, {s['pairs']} "
                     f"pairs")
        if s["train_samples_per_epoch"] != s["pairs"]:
            lines.append(f"  trained on: {s['train_samples_per_epoch']} samples per epoch (one "
                         f"per video, a caption drawn each epoch)")
        if "entries" in s:
            lines.append(f"  {s['entries']} (video, time window) entries: each sampled "
                         f"and retrieved on its own")
        if s["missing_examples"]:
            lines.append(f"  missing: {', '.join(s['missing_examples'])}")
        if s["videos_without_captions"]:
            lines.append(f"  {s['videos_without_captions']} listed video(s) have no caption")
        if "duration_s" in s:
            lines.append(f"  {s['videos_readable']} readable, {s['videos_unreadable']} "
                         f"unreadable; {_hours(s['duration_s'])} in all")
            for key in ("codecs", "resolutions", "frame_rates"):
                items = list(s[key].items())
                shown = ", ".join(f"{k} ({n})" for k, n in items[:8])
                more = f", {len(items) - 8} more" if len(items) > 8 else ""
                lines.append(f"  {key.replace('_', ' ')}: {shown or '-'}{more}")
            for ex in s["unreadable_examples"]:
                lines.append(f"  unreadable: {ex}")
        if "shards" in s:
            f = s["frames_per_clip"]
            lines.append(f"  {s['shards']} shard(s), {s['shard_bytes'] / 1e6:.1f} MB, "
                         f"{s['codec']}; frames per clip {f['min']}-{f['max']} "
                         f"(mean {f['mean']})")
            lines.append("  sampling: " + ", ".join(f"data.{k}={v}"
                                                    for k, v in s["sampling"].items()))
            if s["videos_not_written"]:
                lines.append(f"  {s['videos_not_written']} video(s) of the source could not be "
                             f"pre-sampled (the manifest's \"failed\")")
        if "samples_readable" in s:
            lines.append(f"  {s['samples_readable']} sample(s) readable, "
                         f"{s['samples_skipped']} skipped")
            for ex in s["skipped_examples"]:
                lines.append(f"  skipped: {ex}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..config import load_config

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.data.stats",
                                description="Per-split statistics of the dataset a config "
                                            "describes (data.dataset: msvd, msrvtt, jsonl, didemo, "
                                            "activitynet, lsmdc or shards).")
    p.add_argument("--config", required=True, help="YAML config (its data section is read)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.data_path=clips.jsonl")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-probe", action="store_true",
                   help="do not open the videos (no duration, codecs, sizes, frame "
                        "rates) or, for shards, their index files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    cfg = load_config(args.config, args.set)
    stats = dataset_stats(cfg.data, probe=not args.no_probe)
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        print()
    else:
        print(format_stats(stats, cfg.data))
    return 0


if __name__ == "__main__":
    run_cli(main)
