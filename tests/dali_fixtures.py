"""Small MSVD-format datasets for the DALI loader tests (smooth clips, several codecs)."""
from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from clip4clip_dali.data.loaders.reference import CLIP_STD

# Five clips DALI decodes on the CPU: two codecs, landscape, portrait, square, several rates.
CPU_SPECS = [dict(frames=40, fps=10, codec="vp9"),
             dict(frames=25, fps=5, codec="mjpeg", width=48, height=64),  # portrait
             dict(frames=75, fps=25, codec="vp9", width=80, height=48),
             dict(frames=33, fps=10, codec="mjpeg"),
             dict(frames=12, fps=6, codec="vp9", width=48, height=48)]


def data_config(dataset: tuple[Path, Path], **kw):
    """A DataConfig for ``make_dataset``'s output: 6 frames at 32 px, one DALI thread."""
    from clip4clip_dali.config import DataConfig

    data, videos = dataset
    return DataConfig(**{**dict(data_path=str(data), features_path=str(videos), max_frames=6,
                                image_resolution=32, dali_threads=1, prefetch=2), **kw})


ENCODERS = {"vp9": ("libvpx-vp9", ".webm", "yuv420p"), "mjpeg": ("mjpeg", ".avi", "yuvj420p"),
            "h264": ("libx264", ".mp4", "yuv420p"), "mpeg4": ("mpeg4", ".avi", "yuv420p"),
            "h264avi": ("libx264", ".avi", "yuv420p")}


def smooth_clip(path: Path, frames: int, fps=10, width=64, height=48, codec="vp9", seed=0) -> Path:
    """Moving smooth colour gradients: natural-video-like chroma, every frame distinct.

    (Sharp saturated colour edges are avoided on purpose: PyAV's RGB conversion upsamples
    chroma by nearest neighbour, DALI bilinearly, and they differ by up to ~90/255 there.)
    """
    import av

    encoder, _ext, pix = ENCODERS[codec]
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, size=3)
    freq = rng.uniform(0.3, 1.0, size=(3, 2))
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix
        if codec == "mjpeg":
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 3
        for i in range(frames):
            t = i / 4.0
            img = np.stack([127 + 100 * np.sin(freq[c, 0] * 3 * xx + freq[c, 1] * 3 * yy
                                               + phase[c] + t) for c in range(3)], -1)
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_dataset(root: Path, specs: list[dict], captions_per_video: int = 2) -> tuple[Path, Path]:
    """specs: dicts of smooth_clip kwargs (+ id). Returns (data_path, features_path); all ids
    are in every split list."""
    data, videos = root / "msvd_data", root / "videos"
    data.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    ids = []
    for k, spec in enumerate(specs):
        spec = dict(spec)
        vid = spec.pop("id", f"video{k}")
        codec = spec.get("codec", "vp9")
        smooth_clip(videos / f"{vid}{ENCODERS[codec][1]}", seed=k, **spec)
        ids.append(vid)
    caps = {v: [["a", "clip", "number", str(k), "caption", str(j)] for j in range(captions_per_video)]
            for k, v in enumerate(ids)}
    with open(data / "raw-captions.pkl", "wb") as f:
        pickle.dump(caps, f)
    for s in ("train", "val", "test"):
        (data / f"{s}_list.txt").write_text("\n".join(ids))
    return data, videos


def pixel_mae(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two normalised (..., 3, H, W) batches, in 0..255 pixel units."""
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return float(((a.float().cpu() - b.float().cpu()) * std).abs().mean() * 255)
