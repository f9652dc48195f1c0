"""Which way to read tar shards: DALI's ``readers.webdataset`` or ranged reads into an external
source (what ``data.dataset=shards`` does), against per-file pre-sampled clips. Same clips, same
graph after the bytes (decode whole, normalise, pad), same threads; passes interleaved.

    python benchmarks/shards_readers.py --presampled DIR --data-path MSVD_DATA --manifest M \
        [--batch 8] [--rounds 3] [--threads 2] [--profile]

(``benchmarks/throughput.py --prepare presampled,shards`` leaves such sets in its cache.)
Every reader's batches are copied into torch tensors, as the loaders deliver them. Prints one
JSON line per reader: frames/s of each pass (the first batch left out; frames a clip really
has, padding not counted) and the median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def webdataset_pass(manifest: Path, batch: int, threads: int, resolution: int, max_frames: int):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from clip4clip_dali.data.loaders.reference import CLIP_MEAN, CLIP_STD

    doc = json.loads(manifest.read_text())
    shards = doc["splits"]["train"]["shards"]
    n = sum(len(s["samples"]) for s in shards)

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    def pipe():
        video = fn.readers.webdataset(paths=[str(manifest.parent / s["tar"]) for s in shards],
                                      index_paths=[str(manifest.parent / s["index"]) for s in shards],
                                      ext=["webm"], name="wds", pad_last_batch=False)
        video = fn.decoders.video(video, device="cpu")
        shape = video.shape()  # (frames, H, W, C): the frames this sample really has
        video = fn.crop_mirror_normalize(video, mean=[255 * m for m in CLIP_MEAN],
                                         std=[255 * s for s in CLIP_STD], dtype=types.FLOAT,
                                         output_layout="FCHW")
        return fn.pad(video, axis_names="F", shape=[max_frames], fill_value=0.0), shape

    p = pipe()
    p.build()
    steps = n // batch

    def run():
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        frames, t1 = 0, None
        for k in range(steps):
            out, shape = p.run()
            tensor = out.as_tensor()  # into torch, as the loaders deliver batches
            dst = torch.empty(tuple(tensor.shape()), dtype=torch.float32)
            feed_ndarray(tensor, dst)
            if k == 0:
                t1 = time.perf_counter()
                continue
            frames += int(sum(shape.at(i)[0] for i in range(len(shape))))
        return frames / (time.perf_counter() - t1)

    return run


def loader_pass(loader, max_frames: int):
    def run():
        frames, t1 = 0, None
        for k, b in enumerate(loader):
            if k == 0:
                t1 = time.perf_counter()
                continue
            frames += int(b["video_mask"].sum())
        return frames / (time.perf_counter() - t1)

    return run


def in_memory_loader(split, data_cfg, batch: int):
    """The per-file loader with every clip's bytes read into memory beforehand: what is left
    is DALI's work and the loader's own (the ceiling any reader can reach)."""
    import numpy as np

    from clip4clip_dali.data.loaders.dali_loader import DaliLoader

    class InMemory(DaliLoader):
        def _read_clip(self, v: int):
            return clips[v]

    clips = [np.fromfile(p, dtype=np.uint8) for p in split.video_paths]
    return InMemory(split, data_cfg, "eval", batch)


def read_only_us(read, n: int) -> float:
    """Microseconds per clip to get the bytes of clips 0..n-1 (no decoding)."""
    t0 = time.perf_counter()
    for v in range(n):
        read(v)
    return 1e6 * (time.perf_counter() - t0) / n


def timed_feed(loader) -> list:
    """Wraps ``loader._feed`` (reading a batch's bytes, on the thread that runs the pipeline);
    returns the list its seconds are appended to."""
    spent, feed = [], loader._feed

    def timed(batch):
        t0 = time.perf_counter()
        try:
            return feed(batch)
        finally:
            spent.append(time.perf_counter() - t0)

    loader._feed = timed
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presampled", required=True)
    ap.add_argument("--data-path", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-frames", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--profile", action="store_true",
                    help="also: reads alone (us per clip), DALI on bytes already in memory, and "
                         "the seconds the shard loader spends feeding bytes")
    args = ap.parse_args()
    from clip4clip_dali.config import DataConfig
    from clip4clip_dali.data.loaders.dali_loader import DaliLoader
    from clip4clip_dali.data.loaders.dali_shards import ShardLoader
    from clip4clip_dali.data.dataset import load_split

    common = dict(max_frames=args.max_frames, image_resolution=args.resolution,
                  dali_threads=args.threads, prefetch=2)
    per_file = DataConfig(data_path=args.data_path, features_path=args.presampled, **common)
    shards = DataConfig(dataset="shards", data_path=args.manifest, **common)
    runs = {"per-file pre-sampled (DaliLoader)": loader_pass(DaliLoader(
                load_split(per_file, "train"), per_file, "eval", args.batch), args.max_frames),
            "shards, ranged reads (ShardLoader)": loader_pass(ShardLoader(
                load_split(shards, "train"), shards, "eval", args.batch), args.max_frames),
            "shards, readers.webdataset": webdataset_pass(Path(args.manifest), args.batch,
                                                          args.threads, args.resolution,
                                                          args.max_frames)}
    feeds = {}
    if args.profile:  # where the time goes: the reads alone, and DALI without any read
        import numpy as np

        split = load_split(per_file, "train")
        mem = in_memory_loader(split, per_file, args.batch)
        runs["in memory: no read at all (decode, normalise, pad)"] = loader_pass(
            mem, args.max_frames)
        shard_loader = ShardLoader(load_split(shards, "train"), shards, "eval", args.batch)
        feeds = {"shards, ranged reads (ShardLoader)": timed_feed(shard_loader)}
        runs["shards, ranged reads (ShardLoader)"] = loader_pass(shard_loader, args.max_frames)
        n = split.num_videos
        for _ in range(2):  # the second pass is the one reported: page cache warm, as in training
            reads = {"per-file np.fromfile": read_only_us(
                         lambda v: np.fromfile(split.video_paths[v], dtype=np.uint8), n),
                     "shards pread": read_only_us(shard_loader._fetch, n)}
        print(json.dumps({"read_only_us_per_clip": {k: round(v, 1) for k, v in reads.items()},
                          "clips": n, "load_average": os.getloadavg()}))
    for run in runs.values():  # warm-up pass each
        run()
    for spent in feeds.values():
        spent.clear()
    got = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, run in runs.items():
            got[k].append(run())
    for k, v in got.items():
        row = {"reader": k, "frames_per_s": [round(x, 1) for x in v],
               "median": round(statistics.median(v), 1), "load_average": os.getloadavg()}
        if k in feeds:
            row["feed_seconds_per_pass"] = round(sum(feeds[k]) / args.rounds, 4)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
