"""data.frame_cache: videos decoded once, batches equal to the backend's own, every epoch."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

from clip4clip_dali.config import from_dict
from clip4clip_dali.data.loaders.dali_loader import DaliLoader
from clip4clip_dali.data.loaders.frame_cache import CachedLoader
from clip4clip_dali.data.loaders.loader import build_loader
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from dali_fixtures import CPU_SPECS, data_config, make_dataset

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cache_ds"), CPU_SPECS)


_cfg = data_config


def _cached(split, cfg, mode, batch, make, **kw):
    fills = []

    def fill(data, rank, ranks):
        assert data.eval_frame_order == 0  # frames are cached in decode order
        assert (rank, ranks) == (0, 1)  # no process group: every video decoded here
        fills.append(1)
        return make(split, data, "eval", 4)

    return CachedLoader(split, cfg, mode, batch, fill, **kw), fills


def assert_equal_batches(got, want, atol=1e-4):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            if k == "video":
                assert a[k].shape == b[k].shape
                assert torch.allclose(a[k], b[k], atol=atol), float((a[k] - b[k]).abs().max())
            else:
                assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_equals_the_dali_loader_every_epoch_and_shard(dataset, mode):
    cfg = _cfg(dataset, train_frame_order=2, eval_frame_order=1)
    split = load_split(cfg, "test")
    for rank in (0, 1):
        cached, fills = _cached(split, cfg, mode, 2, DaliLoader, rank=rank, world_size=2, seed=3)
        dali = DaliLoader(split, cfg, mode, 2, rank=rank, world_size=2, seed=3)
        assert len(cached) == len(dali)
        for epoch in (0, 1):
            cached.set_epoch(epoch)
            dali.set_epoch(epoch)
            assert_equal_batches(list(cached), list(dali))
        assert len(fills) == 1  # decoded once for both epochs


def test_equals_the_reference_loader(dataset):
    cfg = _cfg(dataset, train_frame_order=2)
    split = load_split(cfg, "test")
    make = lambda *a, **k: ReferenceLoader(*a, num_workers=0, **k)  # noqa: E731
    cached, _ = _cached(split, cfg, "train", 3, make, seed=5)
    ref = ReferenceLoader(split, cfg, "train", 3, seed=5, num_workers=0)
    assert_equal_batches(list(cached), list(ref))


def test_resume_mid_epoch(dataset):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    cached, _ = _cached(split, cfg, "train", 2, DaliLoader, seed=1)
    full = list(cached)
    assert_equal_batches(list(cached.iter_from(2)), full[2:], atol=0)


def test_broken_video_is_left_out_and_batches_stay_full(dataset, tmp_path, caplog):
    data, videos = dataset
    local = tmp_path / "videos"
    shutil.copytree(videos, local)
    cfg = _cfg((data, local))
    split = load_split(cfg, "test")
    victim = split.video_paths[2]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:200] + bytes(len(raw) - 200))  # broken after the manifest
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        cached, _ = _cached(split, cfg, "train", 3, DaliLoader)
        batches = list(cached)
    assert any(victim.name in r.getMessage() for r in caplog.records)
    assert len(batches) == len(cached) == 3
    assert all(len(b["video_index"]) == 3 and 2 not in b["video_index"].tolist() for b in batches)
    ev, _ = _cached(split, cfg, "eval", 2, DaliLoader)
    assert sorted(int(i) for b in ev for i in b["video_index"]) == [0, 1, 3, 4]


def test_build_loader_with_the_cache(dataset):
    data, videos = dataset
    cfg = from_dict({"data": {"data_path": str(data), "features_path": str(videos),
                              "max_frames": 4, "image_resolution": 32, "frame_cache": True},
                     "train": {"batch_size": 4, "eval_batch_size": 2}})
    split = load_split(cfg.data, "test")
    loader = build_loader(cfg, split, "train", device="cpu")
    assert loader.backend == "dali+cache"
    plain = build_loader(from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                             "frame_cache": False}}),
                         split, "train", device="cpu")
    assert_equal_batches(list(loader), list(plain))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cache_on_the_gpu_equals_the_dali_gpu_loader(tmp_path):
    data, videos = make_dataset(tmp_path, [dict(frames=40, fps=10, codec="h264"),
                                           dict(frames=30, fps=10, codec="vp9", width=160, height=128),
                                           dict(frames=20, fps=10, codec="h264", width=48, height=64)])
    cfg = _cfg((data, videos), train_frame_order=2)
    split = load_split(cfg, "test")
    dev = torch.device("cuda", 0)
    make = lambda *a, **k: DaliLoader(*a, device=dev, **k)  # noqa: E731
    cached, _ = _cached(split, cfg, "train", 2, make, device=dev, seed=2)
    got = list(cached)
    assert cached.frames.device == dev and all(b["video"].device == dev for b in got)
    assert_equal_batches(got, list(DaliLoader(split, cfg, "train", 2, device=dev, seed=2)))


def test_a_split_with_no_decodable_video_is_a_user_error(dataset, tmp_path):
    from clip4clip_dali.errors import UserError

    data, videos = dataset
    local = tmp_path / "videos"
    shutil.copytree(videos, local)
    cfg = _cfg((data, local))
    split = load_split(cfg, "test")
    for path in split.video_paths:  # every file broken after the manifest was written
        raw = path.read_bytes()
        path.write_bytes(raw[:100] + bytes(len(raw) - 100))
    cached, _ = _cached(split, cfg, "eval", 2, DaliLoader)
    with pytest.raises(UserError, match="none of its 5 videos could be decoded"):
        list(cached)
