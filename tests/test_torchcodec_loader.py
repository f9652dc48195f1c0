"""The torchcodec loader: CLIP4Clip's frames (decoder output order, PyAV as the oracle) on the
real MSVD clips and drawn clips, batches equal to the reference loader's, shards, resume,
broken files, the frame cache on top, and the GPU transform's error against PIL."""
from __future__ import annotations

import itertools
import logging

import av
import numpy as np
import pytest
import torch

from clip4clip_dali.config import DataConfig, from_dict
from clip4clip_dali.data.loaders.loader import build_loader
from clip4clip_dali.data.manifest import probe_video
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import DecodeError, ReferenceLoader
from clip4clip_dali.data.sampling import frame_indices
from clip4clip_dali.data.loaders.torchcodec_loader import (TorchcodecLoader, pil_frames_to_clip,
                                                   tensor_frames_to_clip, torchcodec_frames)
from conftest import MINI_MSVD, REALDATA, require_realdata
from dali_fixtures import make_dataset, pixel_mae, smooth_clip

pytest.importorskip("torchcodec", reason="torchcodec is in the dev extra; pip install -e .[dev]")


def _pyav_frames(path, wanted: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """(frame count, {n: RGB uint8 (H, W, 3)} for n in ``wanted``), counting frames in decoder
    output order: CLIP4Clip's numbering."""
    out = {}
    with av.open(str(path)) as c:
        for n, f in enumerate(c.decode(video=0)):
            if n in wanted:
                out[n] = f.to_ndarray(format="rgb24")
    return n + 1, out


def _patterns(n: int, fps: float) -> dict[str, list[int]]:
    rng = np.random.default_rng(n)
    return {"1fps": frame_indices(n, fps, 1, 12, 2).tolist(),
            "3fps": frame_indices(n, fps, 3, 1000, 2).tolist(),
            "random": sorted(rng.choice(n, min(n, 16), replace=False).tolist())}


def _check_clip(path) -> tuple[int, int]:
    """(patterns torchcodec served exactly, patterns it declined); a frame it returns must
    be PyAV's frame of that number, bit for bit."""
    info = probe_video(path)
    patterns = _patterns(info.frames, info.fps)
    count, frames = _pyav_frames(path, {i for idx in patterns.values() for i in idx})
    assert count == info.frames
    served = declined = 0
    for name, idx in patterns.items():
        try:
            got = torchcodec_frames(path, np.asarray(idx)).permute(0, 2, 3, 1).numpy()
        except DecodeError:
            declined += 1  # the loader decodes such clips with PyAV
            continue
        want = np.stack([frames[i] for i in idx]).astype(np.int16)
        err = np.abs(got.astype(np.int16) - want).mean(axis=(1, 2, 3))
        assert err.max() == 0, (path.name, name, idx, err.round(2).tolist())
        served += 1
    return served, declined


def test_frames_are_the_originals_on_real_msvd_and_other_real_clips():
    require_realdata()
    clips = sorted((MINI_MSVD / "MSVD_Videos").glob("*.avi"))
    assert len(clips) == 12
    served = {p.name: _check_clip(p)[0] for p in clips}
    # Measured: torchcodec serves 11 of the 12 (j2Dhf-xFUxU_13_20.avi goes to PyAV).
    assert sum(1 for s in served.values() if s == 3) >= 10, served
    others = [p for p in sorted((REALDATA / "clips").iterdir()) if p.suffix in (".mp4", ".avi")]
    assert others and all(_check_clip(p)[0] for p in others)


@pytest.mark.parametrize("codec,fps", [("h264", 30), ("h264avi", 25), ("vp9", 10),
                                       ("mpeg4", 15)])
def test_frames_are_the_originals_on_drawn_clips(tmp_path, codec, fps):
    from dali_fixtures import ENCODERS

    path = smooth_clip(tmp_path / f"c{ENCODERS[codec][1]}", frames=95, fps=fps, width=96,
                       height=64, codec=codec)
    served, _ = _check_clip(path)
    assert served >= 1


def _mini_cfg(**kw) -> DataConfig:
    return DataConfig(**{**dict(data_path=str(MINI_MSVD / "msvd_data"),
                                features_path=str(MINI_MSVD / "MSVD_Videos"), max_frames=5,
                                max_words=16, image_resolution=32, num_workers=0), **kw})


def test_batches_equal_the_reference_loaders_on_real_msvd():
    """Bit-equal batches (frames, masks, indices, captions, shuffled frame order): the
    measured mean error against the reference loader is 0."""
    require_realdata()
    cfg = _mini_cfg(train_frame_order=2)
    for name, mode, bs, limit in (("train", "eval", 3, None), ("test", "eval", 2, None),
                                  ("test", "train", 4, 3)):
        split = load_split(cfg, name)
        ref = ReferenceLoader(split, cfg, mode, batch_size=bs, seed=3)
        tc = TorchcodecLoader(split, cfg, mode, batch_size=bs, seed=3)
        assert len(ref) == len(tc)
        pairs = list(itertools.islice(zip(ref, tc), limit))
        assert len(pairs) == (limit or len(tc))
        for a, b in pairs:
            assert set(a) == set(b)
            for k in a:
                assert a[k].dtype == b[k].dtype, k
                assert torch.equal(a[k], b[k]), (name, mode, k)


def test_shards_and_resume(tmp_path):
    ds = make_dataset(tmp_path, [dict(frames=30, fps=10, codec="h264", width=64, height=48),
                                 dict(frames=24, fps=8, codec="h264avi", width=48, height=64),
                                 dict(frames=40, fps=10, codec="vp9"),
                                 dict(frames=20, fps=5, codec="mpeg4")])
    cfg = DataConfig(data_path=str(ds[0]), features_path=str(ds[1]), max_frames=4,
                     image_resolution=32, torchcodec_threads=2)
    split = load_split(cfg, "test")
    parts = [TorchcodecLoader(split, cfg, "eval", 1, rank=r, world_size=2) for r in range(2)]
    seen = sorted(int(i) for p in parts for b in p for i in b["video_index"])
    assert seen == [0, 1, 2, 3]
    train = TorchcodecLoader(split, cfg, "train", 2, seed=1)
    train.set_epoch(1)
    full = list(train)
    resumed = list(train.iter_from(2))
    assert len(full) == len(train) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_broken_video_is_named_skipped_and_refilled(tmp_path, caplog):
    ds = make_dataset(tmp_path, [dict(frames=20, fps=10, codec="h264") for _ in range(3)])
    cfg = DataConfig(data_path=str(ds[0]), features_path=str(ds[1]), max_frames=3,
                     image_resolution=16)
    split = load_split(cfg, "test")
    (ds[1] / "video1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 400)
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        ev = list(TorchcodecLoader(split, cfg, "eval", 2))
        tr = list(TorchcodecLoader(split, cfg, "train", 2))
    assert sorted(int(i) for b in ev for i in b["video_index"]) == [0, 2]
    assert "video1.mp4" in caplog.text
    assert len(tr) == 3 and all(len(b["video_index"]) == 2 for b in tr)  # full batches
    assert all(1 not in b["video_index"].tolist() for b in tr)
    assert all(torch.isfinite(b["video"]).all() for b in ev + tr)


def test_build_loader_torchcodec_with_frame_cache():
    require_realdata()
    cfg = from_dict({"data": {"data_path": str(MINI_MSVD / "msvd_data"),
                              "features_path": str(MINI_MSVD / "MSVD_Videos"),
                              "max_frames": 4, "image_resolution": 32, "loader": "torchcodec"},
                     "train": {"batch_size": 4, "eval_batch_size": 2}})
    split = load_split(cfg.data, "test")
    plain = build_loader(cfg, split, "eval")
    cached = build_loader(cfg, split, "eval", frame_cache=True)
    assert plain.backend == "torchcodec" and cached.backend == "torchcodec+cache"
    for a, b in zip(list(plain), list(cached)):
        assert torch.equal(a["video_index"], b["video_index"])
        assert pixel_mae(a["video"], b["video"]) < 1e-3  # uint8 round trip of the same pixels


def test_tensor_transform_is_close_to_pil():
    """The transform GPU batches get, run here on CPU tensors: within 0.5/255 of PIL
    (measured 0.08-0.16/255 mean on the real MSVD clips)."""
    require_realdata()
    for path in sorted((MINI_MSVD / "MSVD_Videos").glob("*.avi"))[:3]:
        info = probe_video(path)
        frames = torchcodec_frames(path, frame_indices(info.frames, info.fps, 1, 4, 2))
        a, b = pil_frames_to_clip(frames, 224), tensor_frames_to_clip(frames, 224)
        assert a.shape == b.shape == (4, 3, 224, 224)
        assert pixel_mae(a, b) < 0.5, path.name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NVDEC)")
def test_nvdec_batches_close_to_reference():
    require_realdata()
    cfg = _mini_cfg(image_resolution=224, max_frames=6)
    split = load_split(cfg, "train")
    ref = list(ReferenceLoader(split, cfg, "eval", batch_size=3))
    gpu = TorchcodecLoader(split, cfg, "eval", batch_size=3, device="cuda", threads=4)
    got = list(gpu)
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        assert b["video"].device.type == "cuda"
        assert torch.equal(a["video_index"], b["video_index"].cpu())
        assert torch.equal(a["video_mask"], b["video_mask"].cpu())
        # NVDEC's colour conversion and torch's resize differ slightly from FFmpeg + PIL
        assert pixel_mae(a["video"], b["video"]) < 3.0


def test_presampled_set_equals_the_reference_loader(tmp_path):
    """A pre-sampled set (pipelines/prepare_msvd.py --presample) is read whole, only
    normalised, as the reference loader reads it."""
    import sys

    from clip4clip_dali.data.presampled import Sampling
    from conftest import REPO

    sys.path.insert(0, str(REPO / "pipelines"))
    import prepare_msvd as prep

    data, videos = make_dataset(tmp_path, [dict(frames=30, fps=15, codec="h264", width=48,
                                                height=80),
                                           dict(frames=40, fps=10, codec="mpeg4")])
    cfg = DataConfig(data_path=str(data), features_path=str(videos), max_frames=4,
                     image_resolution=32)
    out = tmp_path / "pre"
    summary = prep.prepare(videos, out, prep.Options(codec="vp9",
                                                     presample=Sampling.from_config(cfg)))
    assert summary["presampled"] == 2
    pre = DataConfig(**{**cfg.__dict__, "features_path": str(out)})
    split = load_split(pre, "test")
    tc = TorchcodecLoader(split, pre, "eval", 2)
    assert tc.presampled
    a, b = next(iter(ReferenceLoader(split, pre, "eval", 2, num_workers=0))), next(iter(tc))
    assert all(torch.equal(a[k], b[k]) for k in a)  # (read by PyAV, its conversion)
    assert not tc.pyav_fallbacks
