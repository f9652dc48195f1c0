"""Pre-sampled clips: per video, a clip holding exactly the frames CLIP4Clip samples.

``presample_video(src, dst, sampling)`` decodes the source as the reference loader does (PyAV,
every frame counted in decode order), keeps the frames ``sampling.indices`` picks (natural
order), gives each the reference transform's geometry (short side R bicubic, centre crop R x R:
``reference.resize_crop``, so the pixels equal the reference's before normalisation) and
encodes them at a constant frame rate (``feature_framerate`` frames/s):

- ``vp9`` (WebM; DALI decodes it on the CPU and on the GPU), quality ``crf`` (default
  ``DEFAULT_CRF["vp9"]``),
- ``h264`` (MP4, no B-frames, High profile 4:2:0 that NVDEC decodes; GPU only: DALI's CPU
  decoder has no H.264).

Why the default quality (measured on the 12 real MSVD clips at 224 px, 12 frames, against the
reference loader's own pixels from the source clips; DALI 2.4 CPU decoder, 2 shared cores):

    VP9 crf      0 (lossless)  4     6     8     10    16    24
    mean abs error /255  0.67  1.05  1.19  1.33  1.46  1.81  2.21   (worst clip at 6: 1.48)
    kB per clip          224   120   103   87    77    56    41
    DALI CPU frames/s    ~580  ~800  ~890  ~970  ~1000

Even lossless VP9 is not exact (RGB -> 4:2:0 -> RGB). CRF 6 is the lowest-cost setting that
keeps every clip within 1.5/255 on the DALI path (the reference loader converts pre-sampled
frames as DALI does: the same error). Through PyAV's own conversion (nearest-neighbour chroma,
~0.5/255 more), H.264 CRF 16 gives the same error as VP9 CRF 6 (1.64 against 1.70).

The output is written to a temporary file, verified (decodes to the expected number of R x R
frames of the codec) and renamed into place, so an interrupted run is resumed by running it
again (``verify_presampled`` on an existing output is how it skips finished work).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from clip4clip_dali.data.presampled import Sampling

# --codec -> (encoder, extension, codec name as probed)
CODECS = {"vp9": ("libvpx-vp9", ".webm", "vp9"), "h264": ("libx264", ".mp4", "h264")}
DEFAULT_CRF = {"vp9": 6, "h264": 16}


def presample_video(src: str | os.PathLike, dst: str | os.PathLike, sampling: Sampling,
                    codec: str = "vp9", crf: int | None = None, info=None) -> dict:
    """Write the pre-sampled clip of ``src`` to ``dst`` (atomically, verified). ``info`` is the
    source's manifest ``VideoInfo`` (probed when None). Returns the record the set's sidecar
    keeps for this video. Raises ValueError for an unreadable source or a failed check."""
    from clip4clip_dali.data.manifest import probe_video

    src, dst = Path(src), Path(dst)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    crf = DEFAULT_CRF[codec] if crf is None else int(crf)
    info = info if info is not None else probe_video(src)
    if not info.ok:
        raise ValueError(f"unreadable source: {info.error}")
    indices = sampling.indices(info.frames, info.fps)
    images = _sampled_images(src, indices, sampling.image_resolution)
    if len(images) != len(indices):
        raise ValueError(f"the source decoded to {len(images)} of its {len(indices)} sampled "
                         f"frames (damaged file?)")
    tmp = dst.with_name(f"{dst.stem}.part{dst.suffix}")
    try:
        _encode(images, tmp, codec, crf, sampling.feature_framerate)
        why = verify_presampled(tmp, len(indices), sampling.image_resolution, codec)
        if why is not None:
            raise ValueError(f"output failed verification: {why}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return _record(src, info, sampling)


def _sampled_images(src: Path, indices: np.ndarray, resolution: int) -> list:
    from clip4clip_dali.data.loaders.reference import decode_frames, resize_crop

    return [np.asarray(resize_crop(im, resolution)) for im in decode_frames(src, indices)]


def _encode(images: list, dst: Path, codec: str, crf: int, fps: int) -> None:
    import av

    encoder = CODECS[codec][0]
    h, w = images[0].shape[:2]
    rate = Fraction(fps)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1) / rate
        ctx = stream.codec_context
        ctx.time_base = stream.time_base
        ctx.gop_size = max(1, len(images))  # decoded whole: one keyframe is enough
        ctx.thread_count = 1
        if codec == "vp9":
            stream.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "2",
                              "auto-alt-ref": "0", "lag-in-frames": "0",
                              **({"lossless": "1"} if crf == 0 else {})}
        else:  # no B-frames, 4:2:0 High profile (qp 0 would need High 4:4:4, which NVDEC lacks)
            stream.options = {"crf": str(max(1, crf)), "preset": "medium", "bf": "0",
                              "profile": "high", "sc_threshold": "0"}
        for k, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame = frame.reformat(format="yuv420p")  # BT.601 limited range, as decoders assume
            frame.pts, frame.time_base = k, stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def verify_presampled(path: str | os.PathLike, frames: int, resolution: int,
                      codec: str) -> str | None:
    """None when ``path`` decodes completely to ``frames`` R x R frames of ``codec``."""
    from clip4clip_dali.data.manifest import probe_video

    info = probe_video(path, count="decode")
    if not info.ok:
        return info.error or "no frames"
    if info.codec != CODECS[codec][2]:
        return f"codec {info.codec}, expected {CODECS[codec][2]}"
    if info.frames != frames:
        return f"{info.frames} frames, expected {frames}"
    if (info.width, info.height) != (resolution, resolution):
        return f"{info.width}x{info.height}, expected {resolution}x{resolution}"
    return None


def presample_one(vid: str, src: str, out_dir: str, sampling: Sampling, codec: str,
                  crf: int | None, force: bool = False) -> tuple:
    """One video of a set (the pool's job). Returns (id, status, output path, detail, record):
    status presampled, skipped (a verified output is there) or failed (record None)."""
    from clip4clip_dali.data.manifest import probe_video

    dst = Path(out_dir) / f"{vid}{CODECS[codec][1]}"
    info = probe_video(src)
    if not info.ok:
        return vid, "failed", "", f"unreadable source {src}: {info.error}", None
    n = len(sampling.indices(info.frames, info.fps))
    if dst.exists() and not force and verify_presampled(
            dst, n, sampling.image_resolution, codec) is None:
        return vid, "skipped", str(dst), "", _record(src, info, sampling)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)  # ids of JSONL datasets may hold folders
        record = presample_video(src, dst, sampling, codec, crf, info=info)
    except Exception as e:  # any decoder/encoder failure: reported, the video left out
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return vid, "failed", "", f"{type(e).__name__}: {msg} ({src} -> {dst})", None
    return vid, "presampled", str(dst), f"{info.frames}@{info.fps:.4g} -> {n} frames", record


def _record(src, info, sampling: Sampling) -> dict:
    indices = sampling.indices(info.frames, info.fps)
    return {"frames": len(indices), "indices": [int(i) for i in indices],
            "source": Path(src).name, "source_frames": info.frames, "source_fps": info.fps,
            "source_size": [info.width, info.height]}
