"""The DALI pipeline on the CPU against the reference loader, sharding, partial batches, broken
videos. These run in CI (DALI is installed there); only the GPU tests at the end need CUDA."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

from clip4clip_dali.data.loaders.dali_loader import DaliLoader, resize_size
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from dali_fixtures import CPU_SPECS, data_config, make_dataset, pixel_mae

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dali_ds"), CPU_SPECS)


_cfg = data_config


def assert_same_batches(dali_batches, ref_batches, tol=2.0):
    assert len(dali_batches) == len(ref_batches)
    for a, b in zip(dali_batches, ref_batches):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        a = {k: v.cpu() for k, v in a.items()}  # a GPU loader's batch against a CPU one
        b = {k: v.cpu() for k, v in b.items()}
        assert torch.equal(a["video_index"], b["video_index"])
        assert torch.equal(a["video_mask"], b["video_mask"])
        for k in ("text", "text_mask"):
            if k in a:
                assert torch.equal(a[k], b[k])
        for i in range(len(a["video"])):
            n = int(a["video_mask"][i].sum())
            assert n > 0
            assert pixel_mae(a["video"][i, :n], b["video"][i, :n]) < tol
            assert not a["video"][i, n:].any()  # padding is zero after normalisation


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_dali_cpu_equals_reference(dataset, mode):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    assert {i.codec for i in split.video_info} == {"vp9", "mjpeg"}
    dali = list(DaliLoader(split, cfg, mode, 3, seed=7))
    ref = list(ReferenceLoader(split, cfg, mode, 3, seed=7, num_workers=0))
    assert_same_batches(dali, ref)
    assert all(b["video"].shape[1:] == (6, 3, 32, 32) for b in dali)
    assert all(b["video"].dtype == torch.float32 and b["video_mask"].dtype == torch.int64
               for b in dali)


def test_frames_already_at_target_size_skip_the_resize_and_still_match(tmp_path):
    """Prepared clips (short side = image_resolution) skip DALI's resize on the CPU, as PIL
    skips it in the reference; mixed with clips that need it, in one batch."""
    ds = make_dataset(tmp_path, [dict(frames=20, fps=10, codec="vp9", width=84, height=64),
                                 dict(frames=20, fps=10, codec="mjpeg", width=64, height=80),
                                 dict(frames=20, fps=10, codec="vp9", width=96, height=72)])
    cfg = _cfg(ds, image_resolution=64)
    split = load_split(cfg, "test")
    dali = DaliLoader(split, cfg, "eval", 3)
    assert [bool(r) for r in dali._resize] == [False, False, True]
    assert_same_batches(list(dali), list(ReferenceLoader(split, cfg, "eval", 3, num_workers=0)))


def test_frame_order_reverse_and_shuffle(dataset):
    cfg = _cfg(dataset, eval_frame_order=1, train_frame_order=2)
    split = load_split(cfg, "test")
    for mode in ("eval", "train"):
        dali = list(DaliLoader(split, cfg, mode, 5, seed=3))
        ref = list(ReferenceLoader(split, cfg, mode, 5, seed=3, num_workers=0))
        assert_same_batches(dali, ref)


def test_resize_rule_matches_torchvision():
    assert resize_size(80, 48, 32) == (32, 53)  # (h, w): int(32 * 80 / 48)
    assert resize_size(48, 64, 32) == (42, 32)  # portrait
    assert resize_size(50, 50, 32) == (32, 32)


def test_partial_last_eval_batch_and_len(dataset):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    loader = DaliLoader(split, cfg, "eval", 2)
    sizes = [len(b["video_index"]) for b in loader]
    assert sizes == [2, 2, 1] and len(loader) == 3
    train = DaliLoader(split, cfg, "train", 4)  # 10 captions -> 2 full batches, tail dropped
    sizes = [len(b["video_index"]) for b in train]
    assert sizes == [4, 4] and len(train) == 2


def test_two_shards_disjoint_complete_and_reshuffled(dataset):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    # Evaluation: every video exactly once across the two ranks (shards may differ by one).
    seen = []
    for rank in range(2):
        loader = DaliLoader(split, cfg, "eval", 2, rank=rank, world_size=2)
        seen.append([int(i) for b in loader for i in b["video_index"]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(split.num_videos))
    # Training: per epoch, disjoint caption samples, all ranks the same batch count, new order.
    orders = {}
    for epoch in range(2):
        per_rank = []
        for rank in range(2):
            loader = DaliLoader(split, cfg, "train", 2, rank=rank, world_size=2, seed=1)
            loader.set_epoch(epoch)
            texts = [tuple(t.tolist()) for b in loader for t in b["text"]]
            assert len(texts) == len(loader) * 2
            per_rank.append(loader.indices().tolist())
            assert len(texts) == len(per_rank[-1])
        assert not set(per_rank[0]) & set(per_rank[1])
        assert len(per_rank[0]) == len(per_rank[1]) == 2 * (len(split.captions) // 4)
        orders[epoch] = per_rank
    assert orders[0] != orders[1]


def test_broken_video_is_skipped_with_a_warning(dataset, tmp_path, caplog):
    check_broken_video_skipped(dataset, tmp_path, caplog, torch.device("cpu"))


def check_broken_video_skipped(dataset, tmp_path, caplog, device):
    data, videos = dataset
    local = tmp_path / "videos"
    shutil.copytree(videos, local)
    cfg = _cfg((data, local))
    split = load_split(cfg, "test")  # probed while every file is good
    victim = split.video_paths[2]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:200] + bytes(len(raw) - 200))  # broken after the manifest
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        out = list(DaliLoader(split, cfg, "eval", 2, device=device))
    got = sorted(int(i) for b in out for i in b["video_index"])
    assert got == [0, 1, 3, 4]
    assert any(victim.name in r.getMessage() for r in caplog.records)
    ref = list(ReferenceLoader(split, cfg, "eval", 5, num_workers=0))
    dali_all = {int(i): b["video"][k] for b in out for k, i in enumerate(b["video_index"])}
    for k, i in enumerate(ref[0]["video_index"].tolist()):
        if i in dali_all:
            n = int(ref[0]["video_mask"][k].sum())
            assert pixel_mae(dali_all[i][:n], ref[0]["video"][k][:n]) < 2.5
    # Training keeps full batches (the hole is refilled) and never shows the broken video.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        train = DaliLoader(split, cfg, "train", 3, device=device)
        batches = list(train)
    assert len(batches) == len(train) == 3
    assert all(len(b["video_index"]) == 3 for b in batches)
    assert all(2 not in b["video_index"].tolist() for b in batches)
    assert all(b["video_mask"].sum(1).min() > 0 for b in batches)


def test_iter_from_skips_batches_without_decoding(dataset, monkeypatch):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    for mode in ("train", "eval"):
        for make in (lambda: DaliLoader(split, cfg, mode, 2, seed=4),
                     lambda: ReferenceLoader(split, cfg, mode, 2, seed=4, num_workers=0)):
            loader = make()
            loader.set_epoch(1)
            full = list(loader)
            for k in (0, 1, len(full) - 1, len(full), len(full) + 2):
                fresh = make()
                fresh.set_epoch(1)
                got = list(fresh.iter_from(k))
                assert len(got) == len(full[k:])
                for a, b in zip(got, full[k:]):
                    assert a.keys() == b.keys()
                    for key in a:
                        assert torch.equal(a[key], b[key]), key
    # The skipped batches are never read (let alone decoded).
    loader = DaliLoader(split, cfg, "train", 2, seed=4)
    fed = []
    orig = loader._feed
    monkeypatch.setattr(loader, "_feed", lambda batch: (fed.append(list(batch)), orig(batch))[1])
    n = len(list(loader.iter_from(3)))
    assert n == len(loader) - 3 and len(fed) == n
    assert [i for b in fed for i in b] == loader.indices().tolist()[6:6 + 2 * n]


def test_pipeline_is_reused_across_passes(dataset):
    cfg = _cfg(dataset)
    split = load_split(cfg, "test")
    loader = DaliLoader(split, cfg, "train", 3, seed=2)
    builds = []
    orig = loader._build
    loader._build = lambda *a: (builds.append(a[1:]), orig(*a))[1]
    for epoch in (0, 1, 1):
        loader.set_epoch(epoch)
        got = list(loader)
        fresh = DaliLoader(split, cfg, "train", 3, seed=2)
        fresh.set_epoch(epoch)
        want = list(fresh)
        assert len(got) == len(want) == len(loader)
        for a, b in zip(got, want):
            for key in a:
                assert torch.equal(a[key], b[key]), key
    assert len(builds) == 1
    # A pass left unfinished does not hand its half-used pipeline to the next one.
    loader.set_epoch(2)
    it = iter(loader)
    next(it)
    del it
    fresh = DaliLoader(split, cfg, "train", 3, seed=2)
    fresh.set_epoch(2)
    assert all(torch.equal(a["text"], b["text"]) for a, b in zip(loader, fresh))


# ---- GPU (NVDEC) -----------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for NVDEC")


def gpu_specs(codec: str) -> list[dict]:
    """Three clips (landscape, portrait at 29.97 fps, wide) no smaller than NVDEC's minimum
    frame for ``codec`` (VP9: 128x128; H.264 / MPEG-4: 48x16, kept small there)."""
    big = codec == "vp9"
    sizes = [(160, 128), (128, 160), (192, 128)] if big else [(64, 48), (48, 64), (96, 64)]
    return [dict(frames=40, fps=10, codec=codec, width=sizes[0][0], height=sizes[0][1]),
            dict(frames=31, fps=30000 / 1001, codec=codec, width=sizes[1][0], height=sizes[1][1]),
            dict(frames=50, fps=25, codec=codec, width=sizes[2][0], height=sizes[2][1])]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("codec", ["h264", "vp9", "mpeg4", "h264avi"])
def test_dali_gpu_equals_reference(tmp_path, codec):
    data, videos = make_dataset(tmp_path, gpu_specs(codec))
    cfg = _cfg((data, videos))
    split = load_split(cfg, "test")
    dev = torch.device("cuda", 0)
    for mode in ("eval", "train"):
        dali = list(DaliLoader(split, cfg, mode, 2, device=dev, seed=5))
        assert all(t.device == dev for b in dali for t in b.values())
        ref = list(ReferenceLoader(split, cfg, mode, 2, seed=5, num_workers=0))
        assert_same_batches(dali, ref, tol=2.5)


def _loader_cfg(data, videos, loader):
    from clip4clip_dali.config import from_dict

    return from_dict({"data": {"data_path": str(data), "features_path": str(videos),
                               "max_frames": 4, "image_resolution": 32, "loader": loader},
                      "train": {"batch_size": 2, "eval_batch_size": 2}})


@pytest.mark.parametrize("what", ["mjpeg", "small_vp9"])
def test_gpu_routing_of_what_nvdec_cannot_decode(tmp_path, what):
    """MJPEG (DALI's GPU decoder rejects it: "Codec 7 (mjpeg) is not supported by the GPU
    variant") and VP9 below 128x128 never reach NVDEC: auto falls back to the reference
    loader, an explicit dali is a UserError. Runs without a GPU (only the choice is tested)."""
    from clip4clip_dali.data.loaders.dali_loader import dali_import_error
    from clip4clip_dali.data.loaders.loader import choose_backend
    from clip4clip_dali.errors import UserError

    if dali_import_error():
        pytest.skip("needs NVIDIA DALI importable")
    spec = (dict(frames=12, fps=10, codec="mjpeg", width=160, height=128) if what == "mjpeg"
            else dict(frames=12, fps=10, codec="vp9", width=96, height=64))
    data, videos = make_dataset(tmp_path, [spec, dict(spec)])
    split = load_split(_loader_cfg(data, videos, "auto").data, "test")
    dev = torch.device("cuda", 0)
    backend, reason = choose_backend("auto", split, dev)
    assert backend == "reference"
    assert ("mjpeg" in reason) if what == "mjpeg" else ("smaller than 128x128" in reason)
    with pytest.raises(UserError, match="cannot decode on the GPU"):
        choose_backend("dali", split, dev)
    if what == "small_vp9":  # fine for DALI on the CPU
        assert choose_backend("dali", split, torch.device("cpu"))[0] == "dali"


def test_gpu_run_with_cpu_decoder_takes_cpu_codecs_at_any_size(tmp_path):
    """data.dali_decoder=cpu on a GPU: DALI's CPU decoder feeds the GPU, so MJPEG and VP9
    below NVDEC's minimum are DALI's, H.264 is not. Runs without a GPU (only the choice)."""
    from clip4clip_dali.data.loaders.dali_loader import dali_import_error
    from clip4clip_dali.data.loaders.loader import choose_backend
    from clip4clip_dali.errors import UserError

    if dali_import_error():
        pytest.skip("needs NVIDIA DALI importable")
    dev = torch.device("cuda", 0)
    cpu_ok = make_dataset(tmp_path / "a", [dict(frames=12, fps=10, codec="mjpeg"),
                                           dict(frames=12, fps=10, codec="vp9", width=96, height=64)])
    split = load_split(_loader_cfg(*cpu_ok, "auto").data, "test")
    backend, reason = choose_backend("auto", split, dev, "cpu")
    assert backend == "dali" and "on the CPU" in reason
    assert choose_backend("auto", split, dev, "nvdec")[0] == "reference"
    h264 = make_dataset(tmp_path / "b", [dict(frames=12, fps=10, codec="h264")])
    split = load_split(_loader_cfg(*h264, "auto").data, "test")
    assert choose_backend("auto", split, dev, "cpu")[0] == "reference"
    assert choose_backend("auto", split, dev, "nvdec")[0] == "dali"
    with pytest.raises(UserError, match="dali_decoder=nvdec"):
        choose_backend("dali", split, dev, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dali_cpu_decoder_feeding_the_gpu_equals_reference(tmp_path):
    """data.dali_decoder=cpu: decoded on the CPU, resized and normalised on the GPU."""
    data, videos = make_dataset(tmp_path, gpu_specs("mjpeg")[:2] + [
        dict(frames=30, fps=10, codec="vp9", width=96, height=64)])  # below NVDEC's VP9 minimum
    cfg = _cfg((data, videos), dali_decoder="cpu")
    split = load_split(cfg, "test")
    dev = torch.device("cuda", 0)
    for mode in ("eval", "train"):
        loader = DaliLoader(split, cfg, mode, 2, device=dev, seed=5)
        assert loader.decode_device == "cpu"
        dali = list(loader)
        assert all(t.device == dev for b in dali for t in b.values())
        ref = list(ReferenceLoader(split, cfg, mode, 2, seed=5, num_workers=0))
        assert_same_batches(dali, ref, tol=2.5)


@pytest.mark.gpu
@gpu
def test_dali_gpu_mjpeg_goes_to_the_reference_loader(tmp_path):
    from clip4clip_dali.data.loaders.loader import build_loader

    data, videos = make_dataset(tmp_path, gpu_specs("mjpeg"))
    cfg = _loader_cfg(data, videos, "auto")
    split = load_split(cfg.data, "test")
    loader = build_loader(cfg, split, "eval", device=torch.device("cuda", 0))
    assert loader.backend == "reference"
    assert sum(len(b["video_index"]) for b in loader) == 3


@pytest.fixture(scope="module")
def gpu_dataset(tmp_path_factory):
    """Like ``dataset`` but NVDEC-decodable: H.264 (.mp4/.avi) and VP9 of at least 128x128."""
    return make_dataset(tmp_path_factory.mktemp("dali_gpu_ds"), [
        dict(frames=40, fps=10, codec="vp9", width=160, height=128),
        dict(frames=25, fps=5, codec="h264", width=48, height=64),  # portrait
        dict(frames=75, fps=25, codec="vp9", width=224, height=128),
        dict(frames=33, fps=10, codec="h264avi"),
        dict(frames=12, fps=6, codec="vp9", width=128, height=128)])


@pytest.mark.gpu
@gpu
def test_dali_gpu_broken_video_is_skipped(gpu_dataset, tmp_path, caplog):
    check_broken_video_skipped(gpu_dataset, tmp_path, caplog, torch.device("cuda", 0))


@pytest.mark.gpu
@gpu
def test_build_loader_auto_uses_nvdec_for_h264(tmp_path):
    from clip4clip_dali.config import from_dict
    from clip4clip_dali.data.loaders.loader import build_loader

    data, videos = make_dataset(tmp_path, [dict(frames=30, fps=10, codec="h264")] * 3)
    cfg = from_dict({"data": {"data_path": str(data), "features_path": str(videos),
                              "max_frames": 4, "image_resolution": 32},
                     "train": {"batch_size": 2, "eval_batch_size": 2}})
    split = load_split(cfg.data, "test")
    loader = build_loader(cfg, split, "train", device=torch.device("cuda", 0))
    assert loader.backend == "dali"
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert all(b["video"].is_cuda and b["text"].is_cuda for b in batches)
