"""The decoders the ``decoders`` section compares, each turned into the same kind of loader.

Every decoder does the same work: for each clip, the frames CLIP4Clip samples (or, on a
pre-sampled set, every frame of the file), resized short side R (bicubic), centre-cropped R x R,
normalised with CLIP's mean/std, zero-padded to ``max_frames``: a float32 batch
(B, max_frames, 3, R, R) on the decoder's device (CPU rows: host memory; GPU rows: the GPU).

CPU: ``opencv`` (the original CLIP4Clip's reader: ``CAP_PROP_POS_FRAMES`` seek + read per frame,
PIL transform, DataLoader worker processes; here only the kept frames, so the work is equal),
``pyav`` (our reference loader), ``torchcodec`` (our torchcodec loader, threads), ``dali_cpu``
(our DALI loader on the CPU; VP8/VP9/MJPEG only). GPU: ``dali_nvdec`` (our DALI loader),
``torchcodec_cuda`` (our torchcodec loader with NVDEC: threads, each bound to the GPU, decoder
cache sized to the set's frame sizes) and ``pynvc`` (PyNvVideoCodec: one ``SimpleDecoder`` per
thread sized to the set's largest frame, ``reconfigure_decoder`` per clip; ``ThreadedDecoder``
on pre-sampled clips), resized and normalised in torch on the GPU.
"""
from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CPU_KINDS = ("opencv", "pyav", "torchcodec", "dali_cpu")
GPU_KINDS = ("dali_nvdec", "torchcodec_cuda", "pynvc")
NAMES = {"opencv": "OpenCV, the original's way (seek + read per frame, PIL)",
         "pyav": "PyAV (reference loader, DataLoader workers)",
         "torchcodec": "torchcodec CPU (torchcodec loader)",
         "dali_cpu": "DALI CPU",
         "dali_nvdec": "DALI NVDEC",
         "torchcodec_cuda": "torchcodec CUDA (NVDEC)",
         "pynvc": "PyNvVideoCodec (NVDEC)"}
_MODULES = {"opencv": ("cv2", "opencv-python-headless"), "pyav": ("av", "av"),
            "torchcodec": ("torchcodec.decoders", "torchcodec (the [peers] extra)"),
            "torchcodec_cuda": ("torchcodec.decoders", "torchcodec (the [peers] extra)"),
            "dali_cpu": ("nvidia.dali", "nvidia-dali-cuda130 (the [dali] extra)"),
            "dali_nvdec": ("nvidia.dali", "nvidia-dali-cuda130 (the [dali] extra)"),
            "pynvc": ("PyNvVideoCodec", "PyNvVideoCodec (the [peers] extra)")}


def not_installed(kind: str) -> str | None:
    """'not installed (...)' when ``kind``'s package cannot be imported, else None."""
    module, package = _MODULES[kind]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as e:  # ImportError, or a library that fails to load
        return f"not installed: pip install {package} ({type(e).__name__})"
    return None


def unsupported(kind: str, split, has_cuda: bool) -> str | None:
    """Why ``kind`` cannot run on this set here, or None."""
    why = not_installed(kind)
    if why:
        return why
    if kind in GPU_KINDS and not has_cuda:
        return "no CUDA device"
    if kind in ("dali_cpu", "dali_nvdec"):
        import torch

        from clip4clip_dali.data.loaders.loader import undecodable

        bad = undecodable(split, torch.device("cuda" if kind == "dali_nvdec" else "cpu"))
        if bad:
            return f"DALI cannot decode {', '.join(sorted(bad))} there"
    if kind == "torchcodec":
        from clip4clip_dali.data.loaders.torchcodec_loader import torchcodec_import_error

        return torchcodec_import_error()
    return None


class _OpenCVClips:
    """Dataset: clip i read the original CLIP4Clip way, only the frames it keeps."""

    def __init__(self, paths, indices, resolution: int, max_frames: int, presampled: bool):
        self.paths, self.indices = [str(p) for p in paths], indices
        self.resolution, self.max_frames, self.presampled = resolution, max_frames, presampled

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import cv2
        import torch
        from PIL import Image

        from clip4clip_dali.data.loaders.torchcodec_loader import images_to_clip

        cap = cv2.VideoCapture(self.paths[i])
        images = []
        try:
            for n in self.indices[i]:
                cap.set(cv2.CAP_PROP_POS_FRAMES, int(n))
                ok, frame = cap.read()
                if not ok:
                    break
                images.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
        finally:
            cap.release()
        r = self.resolution
        video = torch.zeros((self.max_frames, 3, r, r))
        mask = torch.zeros(self.max_frames, dtype=torch.int64)
        if images:
            video[:len(images)] = images_to_clip(images, r, self.presampled)
            mask[:len(images)] = 1
        return video, mask


class _Passes:
    """A loader-like object (``set_epoch``, iteration over batch dicts) from a pass function."""

    def __init__(self, make_pass):
        self.make_pass = make_pass

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return self.make_pass()


def _opencv_loader(split, cfg, batch: int, threads: int):
    from torch.utils.data import DataLoader

    from clip4clip_dali.data.presampled import split_frames
    from clip4clip_dali.data.loaders.reference import worker_context

    indices, presampled = split_frames(split, cfg.data)
    ds = _OpenCVClips(split.video_paths, indices, cfg.data.image_resolution,
                      cfg.data.max_frames, presampled)

    def one_pass():
        dl = DataLoader(ds, batch_size=batch, num_workers=threads,
                        prefetch_factor=cfg.data.prefetch if threads else None,
                        multiprocessing_context=worker_context() if threads else None)
        return ({"video": v, "video_mask": m} for v, m in dl)

    return _Passes(one_pass)


class PyNvcLoader:
    """PyNvVideoCodec in ``threads`` threads, one hardware decoder each, reused across clips
    (``reconfigure_decoder``) and sized to the set's largest frame; frames as planar RGB on
    the GPU (DLPack), then the torch transform of the torchcodec loader."""

    def __init__(self, split, data_cfg, batch: int, threads: int, device):
        import torch

        from clip4clip_dali.data.presampled import split_frames

        self.split, self.batch, self.threads = split, batch, max(1, threads)
        self.device = torch.device(device)
        self.indices, self.presampled = split_frames(split, data_cfg)
        self.r, self.max_frames = data_cfg.image_resolution, data_cfg.max_frames
        self.max_w = max(int(i.width) for i in split.video_info)
        self.max_h = max(int(i.height) for i in split.video_info)
        self._local = threading.local()

    def set_epoch(self, epoch: int) -> None:
        pass

    def _frames(self, v: int):
        import PyNvVideoCodec as nvc
        import torch

        path, idx = str(self.split.video_paths[v]), [int(i) for i in self.indices[v]]
        dec = getattr(self._local, "decoder", None)
        kw = dict(gpu_id=self.device.index or 0, use_device_memory=True, max_width=self.max_w,
                  max_height=self.max_h, output_color_type=nvc.OutputColorType.RGBP)
        try:
            if self.presampled:  # every frame, in order: the prefetching decoder
                if dec is None:
                    dec = nvc.ThreadedDecoder(path, buffer_size=self.max_frames, **kw)
                else:
                    dec.reconfigure_decoder(path)
                frames = dec.get_batch_frames(len(idx))
            else:
                if dec is None:
                    dec = nvc.SimpleDecoder(path, **kw)
                else:
                    dec.reconfigure_decoder(path)
                frames = dec.get_batch_frames_by_index(idx)
            self._local.decoder = dec
        except Exception:
            self._local.decoder = None  # a failed reconfigure stays cached: rebuild next time
            raise
        info = self.split.video_info[v]
        out = []
        for f in frames:
            t = torch.from_dlpack(f)
            if t.dim() == 2:  # planes stacked: (3H, W)
                t = t.view(3, int(info.height), int(info.width))
            elif t.shape[-1] == 3:
                t = t.permute(2, 0, 1)
            out.append(t)
        return torch.stack(out)

    def _clip(self, v: int):
        import torch

        from clip4clip_dali.data.loaders.torchcodec_loader import tensor_frames_to_clip

        if getattr(self._local, "bound", None) is None:
            torch.cuda.set_device(self.device)
            self._local.bound = True
        return tensor_frames_to_clip(self._frames(v), self.r)

    def __iter__(self):
        import torch

        n = self.split.num_videos
        r = self.r
        ahead = 2 * self.batch + self.threads  # clips in flight: bounded GPU memory
        with ThreadPoolExecutor(self.threads) as pool:
            futures = [pool.submit(self._clip, v) for v in range(min(n, ahead))]
            for start in range(0, n, self.batch):
                part = futures[start:start + self.batch]
                futures += [pool.submit(self._clip, v)
                            for v in range(len(futures), min(n, start + self.batch + ahead))]
                video = torch.zeros((len(part), self.max_frames, 3, r, r), device=self.device)
                mask = torch.zeros((len(part), self.max_frames), dtype=torch.int64)
                for b, f in enumerate(part):
                    clip = f.result()
                    video[b, :len(clip)] = clip
                    mask[b, :len(clip)] = 1
                futures[start:start + len(part)] = [None] * len(part)  # (results freed)
                yield {"video": video, "video_mask": mask}


def make(kind: str, cfg, split, batch: int, threads: int):
    """A loader for ``kind`` over ``split`` in evaluation order with ``threads`` workers."""
    import torch

    gpu = torch.device("cuda", torch.cuda.current_device()) if kind in GPU_KINDS else None
    if kind == "opencv":
        return _opencv_loader(split, cfg, batch, threads)
    if kind == "pyav":
        from clip4clip_dali.data.loaders.reference import ReferenceLoader

        return ReferenceLoader(split, cfg.data, "eval", batch, num_workers=threads)
    if kind in ("torchcodec", "torchcodec_cuda"):
        from clip4clip_dali.data.loaders.torchcodec_loader import TorchcodecLoader

        return TorchcodecLoader(split, cfg.data, "eval", batch, device=gpu or "cpu",
                                threads=threads)
    if kind in ("dali_cpu", "dali_nvdec"):
        from clip4clip_dali.data.loaders.dali_loader import DaliLoader

        data = dataclasses.replace(cfg.data, dali_threads=threads, dali_decoder="nvdec")
        return DaliLoader(split, data, "eval", batch, device=gpu or "cpu")
    if kind == "pynvc":
        return PyNvcLoader(split, cfg.data, batch, threads, gpu)
    raise ValueError(f"unknown decoder {kind!r}")


def repeated(split, min_clips: int):
    """``split``'s videos listed again and again until a pass holds at least ``min_clips``."""
    reps = max(1, -(-min_clips // max(1, split.num_videos)))
    if reps == 1:
        return split
    return type(split)(split.name, list(split.video_ids) * reps, list(split.video_paths) * reps,
                       list(split.video_info) * reps, [], np.zeros(0, np.int64))


class DecoderUtilisation:
    """Samples ``nvidia-smi``'s decoder utilisation (%) of one GPU while it runs."""

    def __init__(self, gpu_index: int, period_s: float = 0.25):
        self.cmd = ["nvidia-smi", "--query-gpu=utilization.decoder", "--format=csv,noheader,nounits",
                    "-i", str(gpu_index)]
        self.period, self.samples = period_s, []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except Exception:
                return
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        a = np.asarray(self.samples)
        return {"mean": float(a.mean()), "max": float(a.max()), "samples": int(a.size)}
