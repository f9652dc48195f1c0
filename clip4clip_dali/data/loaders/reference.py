"""The reference loader: PyAV decoding + PIL transforms in a torch DataLoader.

It is the correctness oracle for the DALI pipeline, the fallback where DALI cannot decode a
codec, and a benchmark baseline. It decodes each clip once, in order, up to the last sampled
frame (no seeking, so every frame index means the n-th decoded frame, as in the manifest), and
applies CLIP's transform: short side to R (bicubic), center crop R, CLIP mean/std. Frames past
the clip's samples are zeros after normalisation, with mask 0.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...workers import clean_context
from ..presampled import split_frames
from ..sampling import frame_order_permutation
from .sharding import EpochShard, epoch_captions, train_sample_count, train_sample_video
from ..text import Tokenizer

if TYPE_CHECKING:
    from ...config import DataConfig
    from ..msvd import MSVDSplit

log = logging.getLogger("clip4clip_dali")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DecodeError(RuntimeError):
    pass


def yuv420_to_image(frame):
    """An RGB PIL image of a yuv420p PyAV frame, chroma upsampled bilinearly (centre-sited) and
    converted with BT.601 limited range, as DALI's decoder converts. (PyAV's ``to_image``
    repeats each chroma sample instead: 0.5/255 further from the source on pre-sampled clips.)
    Other pixel formats go through ``to_image``."""
    if frame.format.name != "yuv420p":
        return frame.to_image()
    import torch.nn.functional as F
    from PIL import Image

    h, w = frame.height, frame.width

    def plane(k, pw, ph):
        p = frame.planes[k]
        a = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw]
        return torch.from_numpy(a.astype(np.float32))

    y = (plane(0, w, h) - 16) * 1.164383
    uv = torch.stack([plane(1, (w + 1) // 2, (h + 1) // 2), plane(2, (w + 1) // 2, (h + 1) // 2)])
    u, v = F.interpolate(uv[None], size=(h, w), mode="bilinear", align_corners=False)[0] - 128
    rgb = torch.stack([y + 1.596027 * v, y - 0.391762 * u - 0.812968 * v, y + 2.017232 * u], -1)
    return Image.fromarray(rgb.round_().clamp_(0, 255).to(torch.uint8).numpy())


def decode_frames(path: str | Path, indices: np.ndarray, to_image=None) -> list:
    """The frames at ``indices`` (sorted, counted in decode order) as RGB PIL images
    (``to_image(frame)``; by default PyAV's own conversion)."""
    import av

    wanted = set(int(i) for i in indices)
    last = int(max(indices)) if len(indices) else -1
    frames: dict[int, object] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream)):
                if n in wanted:
                    frames[n] = to_image(frame) if to_image else frame.to_image()
                if n >= last:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as e:
        if not frames:
            raise DecodeError(f"{path}: {e}") from None
        log.warning("%s: decoding stopped early (%s); using %d of %d sampled frames",
                    path, e, len(frames), len(wanted))
    return [frames[int(i)] for i in indices if int(i) in frames]


def resize_crop(image, resolution: int):
    """CLIP's geometry on one PIL image: short side to R (bicubic), centre crop R x R."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = TF.resize(image, resolution, interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(image, resolution).convert("RGB")


def normalize_image(image) -> torch.Tensor:
    """An RGB PIL image -> float32 (3, H, W) with CLIP's mean/std."""
    import torchvision.transforms.functional as TF

    return TF.normalize(TF.to_tensor(image.convert("RGB")), CLIP_MEAN, CLIP_STD)


def clip_transform(image, resolution: int) -> torch.Tensor:
    """CLIP's preprocessing of one PIL image -> float32 (3, R, R), as the original applies it."""
    return normalize_image(resize_crop(image, resolution))


def decode_clip(path: str | Path, indices: np.ndarray, resolution: int,
                presampled: bool = False) -> torch.Tensor:
    """Decoded and transformed frames at ``indices``: float32 (n, 3, R, R). ``presampled``:
    the frames are already R x R (a pre-sampled set), only normalised."""
    images = decode_frames(path, indices, yuv420_to_image if presampled else None)
    if not images:
        raise DecodeError(f"{path}: no frame could be decoded")
    if presampled:
        return torch.stack([normalize_image(im) for im in images])
    return torch.stack([clip_transform(im, resolution) for im in images])


def pad_clip(frames: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (n, 3, R, R) to (max_frames, 3, R, R); mask is 1 on real frames."""
    n = frames.shape[0]
    out = frames.new_zeros((max_frames,) + tuple(frames.shape[1:]))
    out[:n] = frames
    mask = torch.zeros(max_frames, dtype=torch.int64)
    mask[:n] = 1
    return out, mask


class ClipDataset(Dataset):
    """Train mode: item i is training sample i (``sharding``: a caption with its video, or a
    video with this epoch's caption). Eval mode: item i is video i."""

    def __init__(self, split: "MSVDSplit", data_cfg: "DataConfig", mode: str, seed: int = 0):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, got {mode!r}")
        self.split, self.cfg, self.mode, self.seed = split, data_cfg, mode, seed
        self.epoch = 0
        self.frame_order = data_cfg.train_frame_order if mode == "train" else data_cfg.eval_frame_order
        self.indices, self.presampled = split_frames(split, data_cfg)
        if mode == "train":
            self.text, self.text_mask = Tokenizer(data_cfg.max_words)(split.captions)

    def __len__(self) -> int:
        return train_sample_count(self.split) if self.mode == "train" else self.split.num_videos

    def caption_of(self, i: int) -> int:
        if getattr(self, "_captions", (None,))[0] != self.epoch:
            self._captions = (self.epoch, epoch_captions(self.split, self.epoch, self.seed))
        return int(self._captions[1][i])

    def __getitem__(self, i: int):
        v = train_sample_video(self.split, i) if self.mode == "train" else i
        path = self.split.video_paths[v]
        if len(self.indices[v]) == 0:  # a pre-sampled file unlike its record (named already)
            return None
        try:
            frames = decode_clip(path, self.indices[v], self.cfg.image_resolution,
                                 self.presampled)
        except DecodeError as e:
            log.warning("skipping video that failed to decode: %s", e)
            return None
        rng = np.random.default_rng([self.seed, self.epoch, i])
        frames = frames[torch.from_numpy(frame_order_permutation(len(frames), self.frame_order, rng))]
        video, mask = pad_clip(frames, self.cfg.max_frames)
        item = {"video": video, "video_mask": mask, "video_index": torch.tensor(v)}
        if self.mode == "train":
            c = self.caption_of(i)
            item["text"], item["text_mask"] = self.text[c], self.text_mask[c]
        return item


def collate_clips(items: list) -> dict | None:
    items = [it for it in items if it is not None]
    if not items:
        return None
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def worker_context():
    """Clean DataLoader workers (see ``clip4clip_dali.workers``) with decoding preloaded."""
    return clean_context(("torch", "av", "torchvision.transforms.functional", __name__))


class ReferenceLoader(EpochShard):
    """Batches of one rank's shard; ``len`` is the number of batches this rank yields."""

    backend = "reference"

    def __init__(self, split: "MSVDSplit", data_cfg: "DataConfig", mode: str, batch_size: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 seed: int = 0, num_workers: int | None = None):
        self.dataset = ClipDataset(split, data_cfg, mode, seed)
        self.mode, self.batch_size, self.seed = mode, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.num_workers = data_cfg.num_workers if num_workers is None else num_workers
        self.prefetch = data_cfg.prefetch
        self.epoch = 0

    def num_samples(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0):
        """This epoch's batches from batch ``start_batch`` on, without decoding the skipped
        ones (exact mid-epoch resume; batches are fixed chunks of ``indices()``)."""
        self.dataset.epoch = self.epoch
        workers = self.num_workers
        order = self.indices().tolist()[max(0, int(start_batch)) * self.batch_size:]
        loader = DataLoader(self.dataset, batch_size=self.batch_size,
                            sampler=order, collate_fn=collate_clips,
                            num_workers=workers, drop_last=self.mode == "train",
                            prefetch_factor=self.prefetch if workers > 0 else None,
                            multiprocessing_context=worker_context() if workers > 0 else None,
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            if batch is None:
                continue
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
