"""Where DALI's CPU time goes on pre-sampled clips, with every clip's bytes already in memory
(so no reader is involved): the same external source and thread count as the loaders, graphs
cut after each stage.

    python benchmarks/dali_decode_breakdown.py --presampled DIR [--batch 8] [--threads 2]

Rows (frames/s over the clips' real frames, each pass after its first batch, median of
``--rounds`` interleaved passes):

- ``first frame only``: ``decoders.video(frames=[0])``: the per-sample cost of the container
  (a demuxer and a decoder made per sample, WebM scanned for its frame count) and one frame;
- ``decode``: every frame, uint8 out;
- ``decode + normalise + pad``: the loaders' graph (float32 FCHW, padded to max_frames);
- ``... + into torch``: as the loaders deliver a batch (``feed_ndarray`` into a new tensor).

The gap between the last row and the in-memory reader row of ``shards_readers.py --profile`` is
the reader's share; this script splits the rest.
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


def make_pipe(stage: str, clips: list, batch: int, threads: int, max_frames: int):
    import numpy as np
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from clip4clip_dali.data.loaders.reference import CLIP_MEAN, CLIP_STD

    steps = len(clips) // batch

    def source(info):
        k = info.iteration % steps
        return [clips[k * batch + j] for j in range(batch)]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    def pipe():
        enc = fn.external_source(source=source, batch=True, batch_info=True, dtype=types.UINT8,
                                 ndim=1)
        if stage == "first":
            first = fn.external_source(source=lambda: [np.zeros(1, np.int32)] * batch,
                                       batch=True, dtype=types.INT32, ndim=1)
            video = fn.decoders.video(enc, frames=first, device="cpu", pad_mode="none")
        else:
            video = fn.decoders.video(enc, device="cpu")
        if stage in ("first", "decode"):
            return video
        video = fn.crop_mirror_normalize(video, mean=[255 * m for m in CLIP_MEAN],
                                         std=[255 * s for s in CLIP_STD], dtype=types.FLOAT,
                                         output_layout="FCHW")
        return fn.pad(video, axis_names="F", shape=[max_frames], fill_value=0.0)

    p = pipe()
    p.build()
    return p, steps


def timed_pass(p, steps: int, to_torch: bool, frames_of) -> float:
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    frames, t1 = 0, None
    for k in range(steps):
        (out,) = p.run()
        if to_torch:
            tensor = out.as_tensor()
            dst = torch.empty(tuple(tensor.shape()), dtype=torch.float32)
            feed_ndarray(tensor, dst)
        if k == 0:
            t1 = time.perf_counter()
            continue
        frames += frames_of(k)
    return frames / (time.perf_counter() - t1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presampled", required=True, help="a prepare_msvd.py --presample folder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=12)
    args = ap.parse_args()
    import numpy as np

    from clip4clip_dali.data.loaders.host_memory import reuse_freed_batches
    from clip4clip_dali.data.presampled import read_presampled

    reuse_freed_batches()  # as the DALI loaders do (a fresh 58 MB batch otherwise faults in)

    pset = read_presampled(args.presampled)
    files = sorted(Path(args.presampled).glob("*.webm"))
    clips = [np.fromfile(f, dtype=np.uint8) for f in files]
    counts = [int(pset.videos[f.stem]["frames"]) for f in files]
    b = args.batch

    def real(k):
        return sum(counts[k * b:(k + 1) * b])

    rows = {"first frame only": ("first", False, lambda k: b),
            "decode": ("decode", False, real),
            "decode + normalise + pad": ("full", False, real),
            "decode + normalise + pad + into torch": ("full", True, real)}
    pipes = {k: make_pipe(stage, clips, b, args.threads, args.max_frames)
             for k, (stage, _, _) in rows.items()}
    for k, (_, to_torch, frames_of) in rows.items():  # warm-up
        timed_pass(*pipes[k], to_torch, frames_of)
    got = {k: [] for k in rows}
    for _ in range(args.rounds):
        for k, (_, to_torch, frames_of) in rows.items():
            got[k].append(timed_pass(*pipes[k], to_torch, frames_of))
    per_clip = statistics.mean(counts)
    for k, v in got.items():
        med = statistics.median(v)
        unit = 1 if k == "first frame only" else per_clip
        print(json.dumps({"stage": k, "frames_per_s": [round(x, 1) for x in v],
                          "median": round(med, 1), "ms_per_clip": round(1000 * unit / med, 2),
                          "clips": len(clips), "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
