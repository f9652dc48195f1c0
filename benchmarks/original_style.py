"""The original CLIP4Clip loader's way of reading a clip, re-implemented for comparison only.

CLIP4Clip (ArrowLuo/CLIP4Clip, ``dataloaders/rawvideo_util.py`` + ``dataloader_msvd_retrieval.py``)
reads each training sample like this:

* ``cv2.VideoCapture``; ``fps = int(CAP_PROP_FPS)``, ``frames = int(CAP_PROP_FRAME_COUNT)``;
  ``duration = ceil(frames / fps)``;
* for every second ``sec`` in ``0..duration`` (inclusive) and every offset of
  ``arange(0, fps, fps // feature_framerate)[:feature_framerate]``: one
  ``cap.set(CAP_PROP_POS_FRAMES, sec * fps + offset)`` seek, one ``cap.read()``, BGR -> RGB,
  PIL image, ``Resize(R, bicubic) / CenterCrop(R) / ToTensor / Normalize(CLIP mean, std)``;
  it stops at the first failed read;
* ``torch.tensor(np.stack(images))`` over *all* those frames, then keeps ``max_frames`` of them
  (head / tail / ``np.linspace`` uniform), and copies them into a ``float64`` array of shape
  ``(1, max_frames, 1, 3, R, R)`` (``np.zeros(..., dtype=np.float)``), with an int64 mask.

So it decodes and transforms every sampled second of the clip, even those it throws away, seeks
once per sampled frame, and ships float64. This module does the same with our own code, so the
benchmark can put it side by side with the DALI and PyAV loaders on the same clips and cores.
It is not part of the package and no training path uses it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from clip4clip_dali.data.loaders.reference import CLIP_MEAN, CLIP_STD


def cv2_import_error() -> str | None:
    try:
        import cv2  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"OpenCV is not installed ({type(e).__name__}: {e}); pip install opencv-python-headless"
    return None


def _transform(resolution: int):
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

    return Compose([
        Resize(resolution, interpolation=Image.BICUBIC),
        CenterCrop(resolution),
        lambda image: image.convert("RGB"),
        ToTensor(),
        Normalize(CLIP_MEAN, CLIP_STD),
    ])


def read_video_original(path: str, transform, feature_framerate: int = 1):
    """All frames the original samples (one per 1/feature_framerate s) -> float32 (n, 3, R, R)
    tensor, or ``None`` when nothing could be read. One seek per frame, as the original."""
    import cv2
    from PIL import Image

    cap = cv2.VideoCapture(str(path))
    try:
        frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = int(cap.get(cv2.CAP_PROP_FPS))
        if fps <= 0 or frame_count <= 0:
            return None  # the original would divide by zero here
        total_duration = (frame_count + fps - 1) // fps
        sample_fp = feature_framerate
        interval = fps // sample_fp if sample_fp > 0 else 1
        if sample_fp <= 0:
            sample_fp = fps
        interval = max(1, interval)
        inds = list(np.arange(0, fps, interval))[:sample_fp]
        images = []
        ret = True
        for sec in np.arange(0, total_duration + 1):
            if not ret:
                break
            sec_base = int(sec * fps)
            for ind in inds:
                cap.set(cv2.CAP_PROP_POS_FRAMES, sec_base + ind)
                ret, frame = cap.read()
                if not ret:
                    break
                frame_rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                images.append(transform(Image.fromarray(frame_rgb).convert("RGB")))
    finally:
        cap.release()
    if not images:
        return None
    return torch.tensor(np.stack(images))  # the original's np.stack of tensors


class OriginalStyleDataset(Dataset):
    """Item i = video i read the original way: ``(video float64 (1,T,1,3,R,R), mask int64 (1,T))``."""

    def __init__(self, paths: list, max_frames: int, resolution: int, feature_framerate: int = 1,
                 slice_framepos: int = 2):
        self.paths = [str(p) for p in paths]
        self.max_frames, self.resolution = max_frames, resolution
        self.feature_framerate, self.slice_framepos = feature_framerate, slice_framepos
        self._tf = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self._tf is None:
            self._tf = _transform(self.resolution)
        r, t = self.resolution, self.max_frames
        video = np.zeros((1, t, 1, 3, r, r), dtype=np.float64)
        mask = np.zeros((1, t), dtype=np.int64)
        raw = read_video_original(self.paths[i], self._tf, self.feature_framerate)
        if raw is not None:
            raw = raw.view(-1, 1, 3, r, r)
            if t < raw.shape[0]:
                if self.slice_framepos == 0:
                    raw = raw[:t]
                elif self.slice_framepos == 1:
                    raw = raw[-t:]
                else:
                    raw = raw[np.linspace(0, raw.shape[0] - 1, num=t, dtype=int)]
            n = raw.shape[0]
            video[0][:n] = raw
            mask[0][:n] = 1
        return video, mask
