"""Where the DALI loader's time goes: frames/s of its graph cut after each stage.

    python benchmarks/dali_stages.py --features-path DIR [--device cpu|cuda] [--decoder nvdec|cpu]
                                     [--threads N] [--batch B] [--seconds S] [--out FILE.json]

Runs the loader's own operators on the clips in DIR (any layout; VP9/MJPEG on the CPU) with
CLIP4Clip's sampling (1 frame/s, at most --max-frames, uniform), one pipeline per stage:

    read      external source only (the encoded bytes and frame indices, no decoding)
    decode    + decoders.video(frames=indices)
    resize    + resize to short side R (cubic, antialias; always, even where sizes match)
    full      the loader's own graph (DaliLoader's): decode, resize (skipped on the CPU where
              the frames already have the target size), crop_mirror_normalize, pad

and prints frames/s per stage (the differences between stages are what each one costs). On a GPU (--device cuda) the
stages after decoding run on the GPU; --decoder cpu decodes on the CPU and moves the uint8
frames to the GPU first (DaliLoader with data.dali_decoder=cpu). Numbers, not assertions.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

STAGES = ("read", "decode", "resize", "full")


def clips(features_path: Path, max_frames: int, resolution: int, limit: int, decoder_dev):
    """[(bytes, indices, resize target, needs resize, codec)] of the videos under the path that
    DALI can decode on ``decoder_dev``."""
    from clip4clip_dali.config import DataConfig
    from clip4clip_dali.data.loaders.dali_loader import resize_size, unsupported_reason
    from clip4clip_dali.data.manifest import probe_video
    from clip4clip_dali.data.sampling import clip_frame_indices

    cfg = DataConfig(max_frames=max_frames, image_resolution=resolution)
    out = []
    for path in sorted(p for p in features_path.rglob("*") if p.is_file()
                       and not p.name.startswith(".")):
        info = probe_video(path)
        if not info.ok or info.frames <= 0 or unsupported_reason(info, decoder_dev):
            continue
        hw = resize_size(info.width, info.height, resolution)
        out.append((np.fromfile(path, dtype=np.uint8), clip_frame_indices(info, cfg).astype(np.int32),
                    np.asarray(hw, np.float32), np.array(hw != (info.height, info.width)), info.codec))
        if limit and len(out) >= limit:
            break
    return out


def build(stage: str, data: list, args, device_id):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from clip4clip_dali.data.loaders.dali_loader import _pipeline_fn

    gpu = device_id is not None
    decode_device = "mixed" if gpu and args.decoder == "nvdec" else "cpu"
    opts = dict(batch_size=args.batch, num_threads=args.threads, device_id=device_id,
                prefetch_queue_depth=2, seed=0)

    if stage == "full":  # the loader's own graph, fed as DaliLoader feeds it
        taken = itertools.count()

        def batch_source():
            picks = [data[next(taken) % len(data)] for _ in range(args.batch)]
            columns = [list(c) for c in zip(*(d[:4] for d in picks))]
            return tuple(columns[:3] if gpu else columns)

        pipe = _pipeline_fn()(batch_source, args.resolution, args.max_frames, decode_device,
                              gpu, **opts)
        pipe.build()
        return pipe

    def source(info):
        enc, idx, size, need, _ = data[info.idx_in_epoch % len(data)]
        return enc, idx, size, need

    @pipeline_def
    def graph():
        enc, idx, size, need = fn.external_source(
            source=source, num_outputs=4, batch=False,
            dtype=[types.UINT8, types.INT32, types.FLOAT, types.BOOL])
        if stage == "read":
            return enc, idx, size, need
        video = fn.decoders.video(enc, frames=idx, device=decode_device, pad_mode="none")
        if gpu and decode_device == "cpu":
            video = video.gpu()
        if stage == "decode":
            return video, size, need
        return fn.resize(video, size=size, interp_type=types.INTERP_CUBIC, antialias=True), need

    pipe = graph(**opts)
    pipe.build()
    return pipe


def measure(stage: str, data: list, args, device_id) -> dict:
    frames_per_clip = [len(d[1]) for d in data]
    pipe = build(stage, data, args, device_id)
    for _ in range(2):  # warm-up (allocations, first decoder sessions)
        pipe.run()
    n, t0 = 0, time.perf_counter()
    while True:
        pipe.run()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= args.seconds and n >= 3:
            break
    del pipe
    # external source samples come in order, so pass k covers clips (2 + k) * batch onwards
    start = 2 * args.batch
    frames = sum(frames_per_clip[(start + i) % len(data)] for i in range(n * args.batch))
    return {"stage": stage, "batches": n, "seconds": round(dt, 3),
            "frames_per_s": round(frames / dt, 1), "clips_per_s": round(n * args.batch / dt, 2)}


def to_markdown(doc: dict) -> str:
    m = doc["meta"]
    lines = [f"DALI graph stages: {m['clips']} clips under {m['features_path']} "
             f"({', '.join(m['codecs'])}; {m['mean_sampled_frames']:.1f} sampled frames a clip), "
             f"device {m['device']}, decoder {m['decode_device']}, {m['threads']} threads, "
             f"batch {m['batch']}, {m['resolution']} px; {m['cpu']}"
             + (f"; GPU {m['gpu']}" if m.get("gpu") else ""), "",
             "| stage | frames/s | clips/s | ms per frame (all threads) |", "|---|---:|---:|---:|"]
    for r in doc["stages"]:
        lines.append(f"| {r['stage']} | {r['frames_per_s']:,.1f} | {r['clips_per_s']:,.2f} | "
                     f"{1000.0 / r['frames_per_s']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features-path", required=True, help="folder of videos")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--decoder", choices=["nvdec", "cpu"], default="nvdec",
                   help="on cuda: NVDEC, or DALI's CPU decoder feeding the GPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=12)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--limit", type=int, default=0, help="use at most N videos (0: all)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per stage")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    folder = Path(args.features_path)
    if not folder.is_dir() or not any(f.is_file() for f in folder.rglob("*")):
        # before DALI and torch load (seconds): nothing here to decode
        print(f"error: no video under {folder} (not a folder, or no file in it)", file=sys.stderr)
        return 2

    from clip4clip_dali.data.loaders.dali_loader import dali_import_error

    err = dali_import_error()
    if err:
        print(f"error: NVIDIA DALI cannot be imported ({err})", file=sys.stderr)
        return 2
    import torch

    from clip4clip_dali.data.loaders.dali_loader import decoder_device

    device_id = None
    gpu = None
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda, but no CUDA device is visible", file=sys.stderr)
            return 2
        device_id, gpu = 0, torch.cuda.get_device_name(0)
    decoder_dev = decoder_device(torch.device(args.device, 0) if device_id is not None
                                 else torch.device("cpu"), args.decoder)
    data = clips(Path(args.features_path), args.max_frames, args.resolution, args.limit,
                 decoder_dev)
    if not data:
        print(f"error: no video under {args.features_path} that DALI can decode on "
              f"{'the GPU (NVDEC)' if decoder_dev.type == 'cuda' else 'the CPU (VP8, VP9, MJPEG)'}",
              file=sys.stderr)
        return 2
    from suite.common import cpu_model, usable_cores, versions

    meta = {"features_path": str(args.features_path), "clips": len(data),
            "codecs": sorted({d[4] for d in data}),
            "mean_sampled_frames": float(np.mean([len(d[1]) for d in data])),
            "device": args.device,
            "decode_device": "mixed" if device_id is not None and args.decoder == "nvdec" else "cpu",
            "threads": args.threads, "batch": args.batch, "resolution": args.resolution,
            "cpu": f"{cpu_model()} ({usable_cores()} usable cores)", "gpu": gpu,
            "versions": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    doc = {"meta": meta, "stages": [measure(s, data, args, device_id) for s in stages]}
    print(to_markdown(doc))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
