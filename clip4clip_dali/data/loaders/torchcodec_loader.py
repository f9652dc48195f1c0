"""The torchcodec loader: PyTorch's FFmpeg decoder (CPU, or NVDEC with a CUDA device), seeking
to the frames CLIP4Clip samples instead of decoding every frame up to the last one.

Frame numbering. CLIP4Clip's frame n is the n-th frame the decoder outputs (OpenCV, as the
original uses it, and PyAV agree). torchcodec finds frame n through a table of timestamps: it
seeks to the key frame before entry n and decodes until a frame's timestamp reaches it. Its own
table (``seek_mode="exact"``) is built from every packet's pts, and on MSVD's AVIs that goes
wrong: the empty packet at the end of each file has no pts and sorts first, and the decoder
labels frames either with the packets' pts or with their dts (one tick lower in AVI), depending
on the file. So from the first seek on, torchcodec's frame n can be the original's n-1
(measured on 778mkceE0UQ_40_46.avi and j2Dhf-xFUxU_13_20.avi).

We therefore give torchcodec our own table (``custom_frame_mappings``), built from the packets
PyAV demuxes (no decoding): one entry per non-empty packet, in the timestamp convention the
decoder uses for this file. Frame 0 tells which: decoded through the dts table (whose first
entry is never later than the pts table's), its label is the first dts or the first pts. Every
returned frame's label must then equal its table entry; a clip where it does not, or that
torchcodec cannot decode (e.g. the last frame of some AVIs), is decoded by PyAV, the reference
loader's decoder, instead. Tested equal to PyAV's frames on the 12 real MSVD clips and the
other real clips (tests/test_torchcodec_loader.py).

Transform: on the CPU the frames go through the reference loader's own ``clip_transform``
(PIL bicubic short side, centre crop, CLIP mean/std), so batches equal the reference loader's.
On a GPU, frames decoded by NVDEC are resized in torch on the device (bicubic, antialiased,
rounded to uint8 as PIL does), cropped and normalised there.

A pre-sampled set (``presampled.py``: every frame of a file is a sample, already R x R) has
nothing to seek past; its clips are decoded by PyAV with the reference loader's own colour
conversion (bilinear chroma, as DALI), so batches equal the reference loader's there too
(torchcodec's FFmpeg conversion differs from it by ~1.8/255 on small drawn clips).

Batches, masks, frame order, shards, resume and broken files: as the DALI loader
(``EpochPlan``, ``finish_batch``): a video neither decoder can read is logged, remembered and
replaced by the next samples of the rank's order. Clips are decoded by ``data.torchcodec_threads``
threads (torchcodec and PIL release the GIL); each thread binds the loader's GPU first.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .dali_loader import finish_batch, resize_size
from ..presampled import split_frames
from .reference import (CLIP_MEAN, CLIP_STD, DecodeError, clip_transform, decode_frames,
                        normalize_image, yuv420_to_image)
from .sharding import EpochShard

if TYPE_CHECKING:
    from ...config import DataConfig
    from ..msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")


def torchcodec_import_error() -> Optional[str]:
    """None when torchcodec and the FFmpeg libraries it loads are usable, else why not."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as e:  # ImportError, or RuntimeError when no FFmpeg library loads
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {first[:200]}"
    return None


class FrameTable:
    """The decoder-order frames of a file's video stream, from its packets (no decoding)."""

    def __init__(self, path: str | Path):
        import av

        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                self.time_base = Fraction(stream.time_base)
                packets = [(p.pts, p.dts, int(p.duration or 0), bool(p.is_keyframe))
                           for p in container.demux(stream) if p.size]
        except (av.error.FFmpegError, IndexError, OSError) as e:
            raise DecodeError(f"{path}: {e}") from None
        if not packets:
            raise DecodeError(f"{path}: no video packets")
        self._entries = {}
        for name, col in (("pts", 0), ("dts", 1)):
            if all(p[col] is not None for p in packets):
                rows = sorted((int(p[col]), p[2], int(p[3])) for p in packets)
                self._entries[name] = rows

    def conventions(self) -> list[str]:
        return list(self._entries)

    def first(self, convention: str) -> int:
        return self._entries[convention][0][0]

    def stamps(self, convention: str, shift: int = 0) -> np.ndarray:
        return np.array([r[0] + shift for r in self._entries[convention]], dtype=np.int64)

    def mappings(self, convention: str, shift: int = 0) -> str:
        """``custom_frame_mappings`` JSON for torchcodec: the ``convention`` timestamps of the
        packets, moved by ``shift`` ticks."""
        return json.dumps({"frames": [{"pts": t + shift, "duration": d, "key_frame": k}
                                      for t, d, k in self._entries[convention]]})

    def labelling(self, label0: int) -> Optional[tuple[str, int]]:
        """(convention, shift) of a decoder that labels frame 0 ``label0``: the packets' pts,
        or their dts, or (a decoder holding frames back to reorder them, in AVI) the dts of
        the packet that made it output the frame, a fixed number of ticks later."""
        for conv in ("pts", "dts"):
            if conv in self._entries and self.first(conv) == label0:
                return conv, 0
        if "dts" in self._entries and label0 > self.first("dts"):
            return "dts", label0 - self.first("dts")
        return None


class _Mismatch(Exception):
    pass


def _ticks(seconds: torch.Tensor, time_base: Fraction) -> np.ndarray:
    return np.rint(seconds.double().cpu().numpy() / float(time_base)).astype(np.int64)


def torchcodec_frames(path: str | Path, indices: np.ndarray,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The frames at ``indices`` (sorted, counted in decoder output order, as PyAV counts
    them) decoded by torchcodec: uint8 (n, 3, H, W) on ``device``. Raises DecodeError when
    torchcodec cannot deliver exactly those frames."""
    from torchcodec.decoders import VideoDecoder

    device = torch.device(device)
    idx = [int(i) for i in indices]
    if not idx:
        raise DecodeError(f"{path}: no frame to decode")
    table = FrameTable(path)

    def open_with(labelling: tuple[str, int]):
        return VideoDecoder(str(path), device=str(device), num_ffmpeg_threads=1,
                            custom_frame_mappings=table.mappings(*labelling))

    try:
        # Which timestamps label the decoded frames: frame 0 through the earliest table.
        conventions = table.conventions()
        probe = ("dts" if "dts" in conventions else conventions[0], 0)
        decoder = open_with(probe)
        first = decoder.get_frames_at([0])
        label0 = int(_ticks(first.pts_seconds, table.time_base)[0])
        labelling = table.labelling(label0)
        if labelling is None:
            raise _Mismatch(f"frame 0 is labelled {label0}, which starts no table")
        stamps = table.stamps(*labelling)
        if idx[-1] >= len(stamps):
            raise _Mismatch(f"frame {idx[-1]} is past the {len(stamps)} packets")
        if labelling != probe:
            decoder, first = open_with(labelling), None
        if first is not None and idx[0] == 0:  # frame 0 is decoded already
            rest = decoder.get_frames_at(idx[1:]) if len(idx) > 1 else None
            parts = [first] + ([rest] if rest is not None else [])
            data = torch.cat([p.data for p in parts])
            seconds = torch.cat([p.pts_seconds for p in parts])
        else:
            batch = decoder.get_frames_at(idx)
            data, seconds = batch.data, batch.pts_seconds
        if not np.array_equal(_ticks(seconds, table.time_base), stamps[idx]):
            raise _Mismatch("decoded frames carry other timestamps than requested")
        return data
    except Exception as e:  # torchcodec's RuntimeErrors, our mismatches
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DecodeError(f"{path}: torchcodec: {msg}") from None


def images_to_clip(images: list, resolution: int, presampled: bool = False) -> torch.Tensor:
    """PIL images -> float32 (n, 3, R, R): the reference loader's transform (a pre-sampled
    set's frames are R x R already: normalised only)."""
    if presampled:
        return torch.stack([normalize_image(im) for im in images])
    return torch.stack([clip_transform(im, resolution) for im in images])


def pil_frames_to_clip(frames: torch.Tensor, resolution: int,
                       presampled: bool = False) -> torch.Tensor:
    """uint8 (n, 3, H, W) CPU frames -> float32 (n, 3, R, R) through the reference loader's
    PIL transform."""
    from PIL import Image

    hwc = frames.permute(0, 2, 3, 1).contiguous().numpy()
    return images_to_clip([Image.fromarray(f) for f in hwc], resolution, presampled)


_MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def tensor_frames_to_clip(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (n, 3, H, W) frames -> float32 (n, 3, R, R) on their device: torchvision's resize
    size rule (short side R), bicubic with antialias, rounded to uint8 as PIL does, centre
    crop, CLIP mean/std. Close to the PIL transform, not bit-equal (tests give the bound)."""
    n, _, h, w = frames.shape
    out_h, out_w = resize_size(w, h, resolution)
    x = frames.float()
    if (out_h, out_w) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bicubic",
                                            align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    top, left = int(round((out_h - resolution) / 2.0)), int(round((out_w - resolution) / 2.0))
    x = x[:, :, top:top + resolution, left:left + resolution]
    mean, std = _MEAN.to(x.device), _STD.to(x.device)
    return (x / 255.0 - mean) / std


class TorchcodecLoader(EpochShard):
    """Batches of one rank's shard decoded by torchcodec; ``len`` = batches per epoch."""

    backend = "torchcodec"

    def __init__(self, split: "MSVDSplit", data_cfg: "DataConfig", mode: str, batch_size: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 seed: int = 0, threads: int | None = None):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, got {mode!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.split, self.mode, self.batch_size = split, mode, batch_size
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.threads = data_cfg.torchcodec_threads if threads is None else threads
        self.prefetch = data_cfg.prefetch
        self.resolution, self.max_frames = data_cfg.image_resolution, data_cfg.max_frames
        self.frame_order = data_cfg.train_frame_order if mode == "train" else data_cfg.eval_frame_order
        # (a pre-sampled set, presampled.py, is decoded whole and only normalised)
        self._indices, self.presampled = split_frames(split, data_cfg)
        self.bad_videos: set[int] = set()
        for v, idx in enumerate(self._indices):
            if len(idx) == 0:
                if not self.presampled:  # (split_frames named those already)
                    log.warning("skipping video with no frames to sample: %s",
                                split.video_paths[v])
                self.bad_videos.add(v)
        self.pyav_fallbacks: set[int] = set()  # videos torchcodec could not read exactly
        self._lock = threading.Lock()
        if mode == "train":
            from ..text import Tokenizer

            self.text, self.text_mask = Tokenizer(data_cfg.max_words)(split.captions)
        if self.device.type == "cuda":
            from torchcodec.decoders import get_nvdec_cache_capacity, set_nvdec_cache_capacity

            # Decoders are cached per coded size: room for every size of the split.
            sizes = {(i.width, i.height) for i in split.video_info}
            set_nvdec_cache_capacity(max(get_nvdec_cache_capacity(), len(sizes)))

    def _bind_thread(self) -> None:
        if self.device.type == "cuda":  # torchcodec's CUDA calls need it in every thread
            torch.cuda.set_device(self.device)

    def _decode(self, v: int) -> Optional[torch.Tensor]:
        """Video ``v``'s sampled frames, transformed: float32 (n, 3, R, R) on the device, or
        None (logged, remembered) when neither torchcodec nor PyAV can read it."""
        path, idx = self.split.video_paths[v], self._indices[v]
        try:
            if self.presampled:  # nothing to seek past: PyAV and the reference's conversion
                raise DecodeError("pre-sampled")
            frames = torchcodec_frames(path, idx, self.device)
        except DecodeError as e:
            if not self.presampled:
                log.debug("%s; decoding it with PyAV", e)
                with self._lock:
                    self.pyav_fallbacks.add(v)
            try:
                images = decode_frames(path, idx, yuv420_to_image if self.presampled else None)
                if len(images) < len(idx):
                    raise DecodeError(f"{path}: {len(images)} of {len(idx)} sampled frames")
            except DecodeError as e2:
                log.warning("skipping video that failed to decode: %s", e2)
                with self._lock:
                    self.bad_videos.add(v)
                return None
            return images_to_clip(images, self.resolution, self.presampled).to(self.device)
        if frames.device.type == "cuda":
            return tensor_frames_to_clip(frames, self.resolution)
        return pil_frames_to_clip(frames, self.resolution, self.presampled).to(self.device)

    def _stack(self, clips: list[torch.Tensor]) -> torch.Tensor:
        r = self.resolution
        video = torch.zeros((len(clips), self.max_frames, 3, r, r), dtype=torch.float32,
                            device=self.device)
        for b, clip in enumerate(clips):
            video[b, :len(clip)] = clip
        return video

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0):
        """This epoch's batches from batch ``start_batch`` on (exact mid-epoch resume): the
        skipped batches are planned, never decoded."""
        plan = self.plan(lambda i: self._video_of(i) not in self.bad_videos, start_batch)
        if plan is None:
            return
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(max(1, self.threads), initializer=self._bind_thread) as pool:
            def top_up():
                while len(pending) <= self.prefetch:
                    batch = plan.next_batch()
                    if batch is None:
                        return
                    pending.append((batch, [pool.submit(self._decode, self._video_of(i))
                                            for i in batch]))

            try:
                top_up()
                while pending:
                    batch, futures = pending.popleft()
                    clips = [f.result() for f in futures]
                    if any(c is None for c in clips):
                        # A video failed: plan this batch and those in flight again without it.
                        for _, later in pending:
                            for f in later:
                                f.cancel()
                        plan.put_back([batch] + [b for b, _ in pending])
                        pending.clear()
                    else:
                        yield finish_batch(self, batch, self._stack(clips))
                    top_up()
            finally:
                for _, later in pending:
                    for f in later:
                        f.cancel()
