"""The DALI loader: one pipeline graph that decodes, resizes, crops, normalises and pads clips.

The graph (``video_pipeline``) is the same on both devices: with ``device_id`` set (the rank's
GPU) the decoder is ``mixed`` (NVDEC) and every later operator runs on the GPU; with
``device_id=None`` the whole graph runs on the CPU (VP8, VP9 and MJPEG only there).

Per sample, an external source feeds the encoded file bytes, the frame indices CLIP4Clip samples
(``sampling.frame_indices``, sorted), the resize target and whether it differs from the frame
size. The graph then does

    decoders.video(frames=indices, pad_mode="none")     # exactly those frames, or an error
    resize(size=(R, int(R*W/H)) short side R, cubic, antialias)   # torchvision's size rule
                                                        # (on the CPU: skipped where the frames
                                                        # already have that size, as in PIL)
    crop_mirror_normalize(crop R x R centre, CLIP mean/std, float, FCHW)
    pad(axis F to max_frames, fill 0)                   # zeros *after* normalisation

so its output equals the reference loader's (PyAV + PIL) within a small interpolation and
colour-conversion error. ``pad_mode="none"`` matters: with the default the decoder pads a
missing frame (past the real end of a truncated file) with black, which would silently enter
the loss; with "none" it fails instead and the sample is dropped (see below).

The frame-order permutation (reverse / shuffle, ``data.*_frame_order``) is applied on the torch
side after decoding, with the same per-sample generator as the reference loader; decoding in
sorted order keeps the CPU decoder from restarting (it never seeks). Captions are tokenised
once and joined to the batch on the torch side.

Sharding: ``sharding.shard_order`` gives each rank its part of the epoch (shared seed,
reshuffled each epoch, DistributedSampler semantics). Training yields ``len(self)`` full batches
on every rank (the global tail is dropped), evaluation yields every sample of the shard once,
the last batch partial.

Broken videos: DALI reports a decode failure as one exception for the whole batch, without
naming the sample. On such an error the loader rebuilds the pipeline, decodes every sample
still in flight alone to find the culprit(s), logs a warning naming each file, remembers them
(skipped in later epochs too) and replays the good samples. In training a batch keeps its size:
the hole is filled with the next samples of the rank's order (wrapping around at the end), so
every rank still runs the same number of equal batches. In evaluation the video is missing from
the output (its ``video_index`` never appears).
"""
from __future__ import annotations

import collections
import itertools
import os
import logging
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .dali_support import (CPU_CODECS, GPU_CODECS, GPU_MIN_SIZE,  # noqa: F401 (re-exported)
                           dali_import_error, decoder_device, normalize_codec,
                           supported_codecs, unsupported_reason)
from .host_memory import reuse_freed_batches
from ..presampled import split_frames
from .reference import CLIP_MEAN, CLIP_STD
from ..sampling import frame_order_permutation
from .sharding import EpochShard

if TYPE_CHECKING:
    from ...config import DataConfig
    from ..msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")


def default_dali_threads(pipelines: int = 1) -> int:
    """Threads per DALI pipeline when ``data.dali_threads`` is 0: the cores this process may
    use (its CPU affinity) shared by the processes of this machine (``LOCAL_WORLD_SIZE``, set
    by torchrun) and by its ``pipelines``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // local // max(1, pipelines))


def resize_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(out_h, out_w) of torchvision's ``resize(img, R)``: short side R, long int(R*long/short)."""
    if width <= height:
        return int(resolution * height / width), resolution
    return resolution, int(resolution * width / height)


def _pipeline_fn():
    """The ``@pipeline_def`` graph (built lazily so importing this module needs no DALI)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    mean = [255.0 * m for m in CLIP_MEAN]
    std = [255.0 * s for s in CLIP_STD]

    @pipeline_def(enable_conditionals=True)
    def video_pipeline(source, resolution: int, max_frames: int, decode_device: str,
                       transform_on_gpu: bool, presampled: bool = False):
        if presampled:  # every frame of the file, already R x R: decode, normalise, pad
            (encoded,) = fn.external_source(source=source, num_outputs=1, batch=True,
                                            dtype=[types.UINT8], ndim=[1])
            video = fn.decoders.video(encoded, device=decode_device)
            if transform_on_gpu and decode_device == "cpu":
                video = video.gpu()
            video = fn.crop_mirror_normalize(video, mean=mean, std=std, dtype=types.FLOAT,
                                             output_layout="FCHW")
            return fn.pad(video, axis_names="F", shape=[max_frames], fill_value=0.0)
        n = 3 if transform_on_gpu else 4  # resize flags only where the resize may be skipped
        inputs = fn.external_source(
            source=source, num_outputs=n, batch=True,
            dtype=[types.UINT8, types.INT32, types.FLOAT, types.BOOL][:n], ndim=[1, 1, 1, 0][:n])
        encoded, frames, size = inputs[:3]
        video = fn.decoders.video(encoded, frames=frames, device=decode_device, pad_mode="none")
        if transform_on_gpu:
            if decode_device == "cpu":  # CPU decoding feeding a GPU: uint8 frames go over
                video = video.gpu()
            video = fn.resize(video, size=size, interp_type=types.INTERP_CUBIC, antialias=True)
        elif inputs[3]:
            # Clips already at the target size (prepare_msvd.py's output) skip the resize, as
            # PIL does; on the CPU it is three quarters of the work.
            video = fn.resize(video, size=size, interp_type=types.INTERP_CUBIC, antialias=True)
        video = fn.crop_mirror_normalize(video, crop=(resolution, resolution), mean=mean,
                                         std=std, dtype=types.FLOAT, output_layout="FCHW")
        return fn.pad(video, axis_names="F", shape=[max_frames], fill_value=0.0)

    return video_pipeline


class _Dispatch:
    """Deals the plan's batches to K pipelines in turn: batch j (of this pass) to pipeline
    j % K, whichever pipeline asks first; the loader reads outputs in the same turn, so the
    batches come out in plan order for any K."""

    def __init__(self, plan, k: int):
        self.plan, self.k = plan, k
        self.made = 0  # batches taken from the plan
        self.waiting: dict[int, list[int]] = {}  # number -> batch its pipeline has not asked for

    def get(self, number: int):
        while self.made <= number:
            batch = self.plan.next_batch()
            if batch is None:
                break
            self.waiting[self.made] = batch
            self.made += 1
        return self.waiting.pop(number, None)


class _Source:
    """One pipeline's external source: takes its turns' batches, reads their files, and keeps
    what is in flight as (number, batch)."""

    def __init__(self, loader: "DaliLoader", dispatch: _Dispatch, index: int):
        self.loader, self.index = loader, index
        self.in_flight: collections.deque = collections.deque()
        self.restart(dispatch)

    def restart(self, dispatch: _Dispatch) -> None:
        self.dispatch, self.number = dispatch, self.index
        self.in_flight.clear()

    def __call__(self):
        batch = self.dispatch.get(self.number)
        if batch is None:
            raise StopIteration
        self.in_flight.append((self.number, batch))
        self.number += self.dispatch.k
        return self.loader._feed(batch)


class _ListPlan:
    def __init__(self, batches: list[list[int]]):
        self.batches = collections.deque(batches)

    def next_batch(self):
        return self.batches.popleft() if self.batches else None


class DaliLoader(EpochShard):
    """Batches of one rank's shard decoded by DALI; ``len`` = batches this rank yields per epoch."""

    backend = "dali"

    def __init__(self, split: "MSVDSplit", data_cfg: "DataConfig", mode: str, batch_size: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 seed: int = 0):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, got {mode!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.split, self.cfg, self.mode = split, data_cfg, mode
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.device_id = self.device.index if self.device.type == "cuda" else None
        if self.device_id is None:  # batches made in host memory, one fresh block each
            reuse_freed_batches()
        self.decoder_device = decoder_device(self.device, data_cfg.dali_decoder)
        on_nvdec = self.decoder_device.type == "cuda"
        self.decode_device = "mixed" if on_nvdec else "cpu"
        self.transform_on_gpu = self.device_id is not None
        self.pipelines = data_cfg.dali_pipelines
        self.threads = data_cfg.dali_threads or default_dali_threads(self.pipelines)
        self.prefetch = data_cfg.prefetch
        self.resolution, self.max_frames = data_cfg.image_resolution, data_cfg.max_frames
        self.frame_order = data_cfg.train_frame_order if mode == "train" else data_cfg.eval_frame_order
        self.epoch = 0
        self.bad_videos: set[int] = set()
        # Per video: sampled indices and resize target, computed once. A pre-sampled set
        # (presampled.py) is decoded whole: every frame of a file is a sample, no resize.
        sampled, self.presampled = split_frames(split, data_cfg)
        self._indices: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._resize: list[np.ndarray] = []  # False where the frames already have that size
        for v, info in enumerate(split.video_info):
            idx = sampled[v]
            self._indices.append(idx.astype(np.int32))
            if len(idx) == 0 or info.width <= 0 or info.height <= 0:
                if not self.presampled:  # (split_frames named those already)
                    log.warning("skipping video with no frames to sample: %s",
                                split.video_paths[v])
                self.bad_videos.add(v)
                self._sizes.append(np.zeros(2, np.float32))
                self._resize.append(np.array(True))
            else:
                out_hw = resize_size(info.width, info.height, self.resolution)
                self._sizes.append(np.asarray(out_hw, np.float32))
                self._resize.append(np.array(out_hw != (info.height, info.width)))
                why = unsupported_reason(info, self.decoder_device) if on_nvdec else None
                if why is not None:  # (build_loader routes such splits elsewhere first)
                    log.warning("skipping video DALI cannot decode on the GPU (%s): %s", why,
                                split.video_paths[v])
                    self.bad_videos.add(v)
        if mode == "train":
            from ..text import Tokenizer

            self.text, self.text_mask = Tokenizer(data_cfg.max_words)(split.captions)
        # (pipelines, sources) left by the last pass that ran to its end, reused by the next
        # one: building a pipeline (on a GPU: CUDA streams, NVDEC sessions, buffers) costs
        # about a second, once a pass otherwise.
        self._idle = None

    # ---- sample bookkeeping ------------------------------------------------------------
    def _read_clip(self, v: int) -> np.ndarray:
        """The encoded bytes of video ``v``."""
        return np.fromfile(self.split.video_paths[v], dtype=np.uint8)

    # ---- DALI -------------------------------------------------------------------------
    def _feed(self, batch: list[int]):
        enc, frames, sizes, resize = [], [], [], []
        for i in batch:
            v = self._video_of(i)
            enc.append(self._read_clip(v))
            if self.presampled:
                continue
            frames.append(self._indices[v])
            sizes.append(self._sizes[v])
            resize.append(self._resize[v])
        if self.presampled:
            return (enc,)
        # (the graph takes resize flags only where it may skip the resize: CPU transforms)
        return (enc, frames, sizes) if self.transform_on_gpu else (enc, frames, sizes, resize)

    def _build(self, source, batch_size: int, prefetch: int):
        pipe = _pipeline_fn()(
            source, self.resolution, self.max_frames, self.decode_device, self.transform_on_gpu,
            self.presampled, batch_size=batch_size, num_threads=self.threads,
            device_id=self.device_id, prefetch_queue_depth=prefetch, seed=self.seed)
        pipe.build()
        return pipe

    def _to_torch(self, out) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = out.as_tensor()
        dst = torch.empty(tuple(tensor.shape()), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, dst, cuda_stream=stream)
        return dst

    def _find_broken(self, samples: list[int]) -> list[int]:
        """Decode each video of ``samples`` alone; warn about and remember those that fail."""
        videos = [v for v in dict.fromkeys(self._video_of(i) for i in samples)
                  if v not in self.bad_videos]
        first = {}
        for i in samples:
            first.setdefault(self._video_of(i), i)
        broken: list[int] = []
        for v in videos:
            pipe = self._build(_Source(self, _Dispatch(_ListPlan([[first[v]]]), 1), 0), 1, 1)
            try:
                pipe.run()
            except StopIteration:
                pass
            except Exception as e:  # DALI reports a decode failure as a RuntimeError
                log.warning("skipping video that DALI failed to decode: %s (%s)",
                            self.split.video_paths[v], _reason(e))
                broken.append(v)
                self.bad_videos.add(v)
            finally:
                del pipe
        return broken

    def _assemble(self, batch: list[int], video: torch.Tensor) -> dict:
        return finish_batch(self, batch, video)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0):
        """This epoch's batches from batch ``start_batch`` on (exact mid-epoch resume): the
        first ``start_batch`` batches are planned (same samples, same refills for videos
        already known to be broken) but never read or decoded."""
        plan = self.plan(lambda i: self._video_of(i) not in self.bad_videos, start_batch)
        if plan is None:
            return
        while True:
            dispatch = _Dispatch(plan, self.pipelines)
            if self._idle is not None:
                pipes, sources = self._idle
                self._idle = None
                for source in sources:
                    source.restart(dispatch)
            else:
                sources = [_Source(self, dispatch, k) for k in range(self.pipelines)]
                pipes = [self._build(source, self.batch_size, self.prefetch)
                         for source in sources]
            error = None
            for number in itertools.count():
                k = number % self.pipelines
                try:
                    (out,) = pipes[k].run()
                except StopIteration:
                    self._keep_idle(pipes, sources, k)
                    return
                except RuntimeError as e:
                    error = e
                    break
                _number, batch = sources[k].in_flight.popleft()
                yield self._assemble(batch, self._to_torch(out))
            # Made but not delivered, in plan order: in flight on any pipeline, or waiting.
            made = sorted([b for src in sources for b in src.in_flight]
                          + list(dispatch.waiting.items()))
            failed = [batch for _number, batch in made]
            del pipes
            # Errors come back in order, so the oldest batch in flight failed; look at the
            # others too if it alone holds no culprit.
            if not failed or (not self._find_broken(failed[0]) and not self._find_broken(
                    [i for b in failed[1:] for i in b])):
                raise RuntimeError(f"the DALI pipeline failed, yet every video of the "
                                   f"failing batch decodes alone: {_reason(error)}") from error
            plan.put_back(failed)

    def _keep_idle(self, pipes: list, sources: list, stopped: int) -> None:
        """Keep the pass's pipelines for the next one when every one of them has run out."""
        try:
            for k, pipe in enumerate(pipes):
                if k != stopped:  # its source has already said stop; collect that
                    try:
                        pipe.run()
                        return  # an output nobody asked for: not reusable
                    except StopIteration:
                        pass
            for pipe in pipes:
                pipe.reset()
            self._idle = (pipes, sources)
        except Exception:  # not reusable: the next pass builds new ones
            pass


def finish_batch(loader, batch: list[int], video: torch.Tensor) -> dict:
    """The batch dict for samples ``batch`` whose decoded, normalised, zero-padded frames (in
    decode order) are ``video``: frame order applied per sample (the reference loader's
    generator), masks, video indices and, in training, caption tokens. ``loader`` provides
    ``mode``, ``seed``, ``epoch``, ``frame_order``, ``max_frames``, ``device``, ``_video_of``,
    ``_indices`` and (training) ``_captions_of``, ``text`` / ``text_mask``."""
    n = len(batch)
    videos = [loader._video_of(i) for i in batch]
    counts = [len(loader._indices[v]) for v in videos]
    mask = torch.zeros((n, loader.max_frames), dtype=torch.int64)
    for b, c in enumerate(counts):
        mask[b, :c] = 1
    if loader.frame_order != 0:
        for b, (i, c) in enumerate(zip(batch, counts)):
            rng = np.random.default_rng([loader.seed, loader.epoch, i])
            perm = torch.from_numpy(frame_order_permutation(c, loader.frame_order, rng))
            video[b, :c] = video[b, perm.to(video.device)]
    out = {"video": video, "video_mask": mask.to(loader.device),
           "video_index": torch.tensor(videos, dtype=torch.int64).to(loader.device)}
    if loader.mode == "train":
        idx = torch.as_tensor(loader._captions_of(batch), dtype=torch.int64)
        out["text"] = loader.text[idx].to(loader.device)
        out["text_mask"] = loader.text_mask[idx].to(loader.device)
    return out


def _reason(err: BaseException) -> str:
    """The informative line of a DALI error (its first line only names the operator)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keys = ("too small", "not supported", "Assert on", "Failed", "failed", "Error:")
    for key in keys:
        for ln in lines:
            if key in ln and not ln.startswith("Error in "):
                return ln[:300]
    for ln in lines:
        if "error" in ln.lower() and "Critical" not in ln:
            return ln[:300]
    return (lines[-1] if lines else type(err).__name__)[:300]
