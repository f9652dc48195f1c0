"""What DALI 2.4 can decode where: codecs per device, NVDEC's minimum frame sizes, import check."""
from __future__ import annotations

from typing import Optional

import torch

# Codec names as PyAV/FFmpeg report them (manifest ``VideoInfo.codec``).
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
# MJPEG is listed as "supported by both backends" in DALI's docstring, yet DALI 2.4's mixed
# decoder rejects it at run time ("Codec 7 (mjpeg) is not supported by the GPU variant of this
# operator", H200, benchmarks/results/gpu-h200-2026-11-26-dali-gpu-tests.txt): not on the GPU.
GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
# NVDEC's smallest decodable frame (width, height) per codec, as NVIDIA's decoder capability
# table gives it (cuvidGetDecoderCaps nMinWidth/nMinHeight). DALI's mixed decoder asserts
# ``width >= caps.nMinWidth && height >= caps.nMinHeight`` ("Video is too small in at least one
# dimension", frames_decoder_gpu.cc). Confirmed for VP9 on an H200: 64x48, 48x64 and 96x64
# VP9 clips all failed, 298x224 decoded, while H.264/MPEG-4 decoded at 64x48 and 48x64.
GPU_MIN_SIZE = {"h264": (48, 16), "mpeg4": (48, 16), "vp8": (48, 16), "vp9": (128, 128),
                "av1": (128, 128), "hevc": (144, 144)}
_CODEC_ALIASES = {
    "libvpx": "vp8", "libvpx-vp8": "vp8", "libvpx-vp9": "vp9", "h265": "hevc", "avc": "h264",
    "avc1": "h264", "libdav1d": "av1", "libaom-av1": "av1", "av1_cuvid": "av1",
    "h264_cuvid": "h264", "hevc_cuvid": "hevc", "jpeg": "mjpeg", "mp4v": "mpeg4",
}


def normalize_codec(name: str) -> str:
    name = (name or "").strip().lower()
    return _CODEC_ALIASES.get(name, name)


def decoder_device(device: torch.device | str, dali_decoder: str = "nvdec") -> torch.device:
    """Where DALI decodes for a loader whose batches go to ``device``: its GPU (NVDEC) unless
    ``data.dali_decoder`` is "cpu"; on the CPU always the CPU. Codec and frame-size limits are
    those of this device."""
    device = torch.device(device)
    return device if device.type == "cuda" and dali_decoder == "nvdec" else torch.device("cpu")


def supported_codecs(device: torch.device) -> frozenset:
    return GPU_CODECS if torch.device(device).type == "cuda" else CPU_CODECS


def unsupported_reason(info, device: torch.device) -> Optional[str]:
    """Why DALI cannot decode the video described by ``info`` (a manifest ``VideoInfo``) on
    ``device``, or None when it can: a codec its decoder lacks there, or (GPU) a frame smaller
    than NVDEC's minimum for that codec."""
    codec = normalize_codec(getattr(info, "codec", "") if info is not None else "")
    if codec not in supported_codecs(device):
        return codec or "unknown"
    if torch.device(device).type == "cuda" and codec in GPU_MIN_SIZE:
        mw, mh = GPU_MIN_SIZE[codec]
        w, h = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
        if w > 0 and h > 0 and (w < mw or h < mh):
            return f"{codec} smaller than {mw}x{mh}"
    return None


def dali_import_error() -> Optional[str]:
    """None when DALI can be imported, else why not."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA library
        return f"{type(e).__name__}: {e}"
    return None
