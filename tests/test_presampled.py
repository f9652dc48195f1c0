"""Pre-sampled sets (prepare_msvd.py --presample): the clips hold exactly CLIP4Clip's frames,
and every loader reading them matches the reference loader reading the source clips."""
from __future__ import annotations

import logging
import shutil
import sys

import numpy as np
import pytest
import torch

from clip4clip_dali.config import DataConfig, load_config
from clip4clip_dali.data.loaders.dali_loader import DaliLoader
from clip4clip_dali.data.loaders.frame_cache import CachedLoader
from clip4clip_dali.data.loaders.loader import build_loader
from clip4clip_dali.data.manifest import probe_video
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.presampled import Sampling, read_presampled
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from clip4clip_dali.errors import UserError
from conftest import MINI_MSVD, REPO, require_realdata
from dali_fixtures import make_dataset, pixel_mae

sys.path.insert(0, str(REPO / "pipelines"))  # importable by name, in pool workers too
import prepare_msvd as prep  # noqa: E402

# Drawn clips: portrait, odd sizes, 15 to 60 frames/s, short (under a second) and long (20 s),
# in codecs DALI's CPU decoder cannot read (the pre-sampled copies are VP9).
DRAWN = [dict(frames=30, fps=15, codec="h264", width=48, height=80),     # portrait, 2 s
         dict(frames=180, fps=60, codec="vp9", width=75, height=53),     # odd size, 3 s
         dict(frames=14, fps=29.97, codec="mpeg4", width=64, height=48),  # short: < 0.5 s
         dict(frames=500, fps=25, codec="mjpeg", width=40, height=36),   # long: 20 s
         dict(frames=95, fps=23.976, codec="vp9", width=36, height=64)]  # portrait, odd rate


def presample(src_root, out, cfg: DataConfig, workers=1, **kw):
    opts = prep.Options(codec=kw.pop("codec", "vp9"), presample=Sampling.from_config(cfg),
                        crf=kw.pop("crf", None))
    return prep.prepare(src_root, out, opts, workers=workers, **kw)


def per_video_mae(a: dict, b: dict) -> list[float]:
    """Batches ``a`` and ``b`` (same videos, same order): masks equal, padding zero; the mean
    abs error per video in /255."""
    assert torch.equal(a["video_index"], b["video_index"])
    assert torch.equal(a["video_mask"], b["video_mask"])
    out = []
    for i in range(len(a["video"])):
        n = int(a["video_mask"][i].sum())
        assert n > 0 and not a["video"][i, n:].any()
        out.append(pixel_mae(a["video"][i, :n], b["video"][i, :n]))
    return out


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = tmp_path_factory.mktemp("presampled_drawn")
    data, videos = make_dataset(root, DRAWN)
    cfg = DataConfig(data_path=str(data), features_path=str(videos), max_frames=6,
                     image_resolution=32, dali_threads=1, train_frame_order=2)  # shuffled
    out = root / "presampled"
    summary = presample(videos, out, cfg, workers=2)
    assert (summary["presampled"], summary["failed"]) == (len(DRAWN), 0)
    return cfg, DataConfig(**{**cfg.__dict__, "features_path": str(out)})


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    require_realdata()
    cfg = DataConfig(data_path=str(MINI_MSVD / "msvd_data"),
                     features_path=str(MINI_MSVD / "MSVD_Videos"), max_frames=12)
    out = tmp_path_factory.mktemp("presampled_real") / "clips"
    summary = presample(MINI_MSVD / "MSVD_Videos", out, cfg, workers=2)
    assert (summary["presampled"], summary["failed"]) == (12, 0)
    return cfg, DataConfig(**{**cfg.__dict__, "features_path": str(out)})


def _all_videos(split_name, cfg):
    """Every video of the data set, as one split."""
    sp = [load_split(cfg, s) for s in ("train", "test")]  # (val is a copy of test there)
    ids = [v for s in sp for v in s.video_ids]
    assert len(set(ids)) == len(ids)
    s0 = sp[0]
    return type(s0)(split_name, ids, [p for s in sp for p in s.video_paths],
                    [i for s in sp for i in s.video_info], [], np.zeros(0, np.int64))


def test_real_msvd_presampled_equals_reference_on_the_source(real):
    """The 12 real MSVD clips (H.264 AVI, 15 to 59.94 frames/s, 320x240 to 1280x720)."""
    src_cfg, pre_cfg = real
    src, pre = _all_videos("all", src_cfg), _all_videos("all", pre_cfg)
    assert src.video_ids == pre.video_ids and len(src.video_ids) == 12
    want = list(ReferenceLoader(src, src_cfg, "eval", 12, num_workers=0))[0]
    dali = list(DaliLoader(pre, pre_cfg, "eval", 12))[0]
    ref_pre = list(ReferenceLoader(pre, pre_cfg, "eval", 12, num_workers=0))[0]
    d, r = per_video_mae(dali, want), per_video_mae(ref_pre, want)
    print(f"\nreal MSVD, pre-sampled vs reference on the source, mean abs error /255: DALI CPU "
          f"{np.mean(d):.3f} (worst clip {max(d):.3f}), reference loader {np.mean(r):.3f} "
          f"(worst {max(r):.3f})")
    assert np.mean(d) <= 1.3 and max(d) <= 1.6  # measured 1.19, worst 1.48 (VP9 CRF 6)
    assert np.mean(r) <= 1.3 and max(r) <= 1.6  # the same (its yuv420_to_image is DALI's)
    # The record holds what CLIP4Clip samples from each source.
    rec = read_presampled(pre_cfg.features_path)
    for vid, info in zip(src.video_ids, src.video_info):
        idx = Sampling.from_config(src_cfg).indices(info.frames, info.fps)
        assert rec.videos[vid]["indices"] == idx.tolist()
        assert rec.videos[vid]["frames"] == len(idx) == int(want["video_mask"][
            src.video_ids.index(vid)].sum())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_drawn_clips_presampled_equal_reference_on_the_source(drawn, mode):
    src_cfg, pre_cfg = drawn
    src, pre = load_split(src_cfg, "test"), load_split(pre_cfg, "test")
    assert {i.codec for i in pre.video_info} == {"vp9"}
    assert all((i.width, i.height) == (32, 32) for i in pre.video_info)
    want = list(ReferenceLoader(src, src_cfg, mode, 5, seed=3, num_workers=0))
    got = list(DaliLoader(pre, pre_cfg, mode, 5, seed=3))
    assert len(got) == len(want) > 0
    errors = [e for a, b in zip(got, want) for e in per_video_mae(a, b)]
    for a, b in zip(got, want):
        if mode == "train":
            assert torch.equal(a["text"], b["text"])
    print(f"\ndrawn clips ({mode}), DALI CPU on pre-sampled vs reference on the source: mean "
          f"abs error {np.mean(errors):.3f}/255 (worst {max(errors):.3f})")
    assert np.mean(errors) <= 1.5 and max(errors) <= 2.0


def test_frame_cache_and_reference_on_a_presampled_set_equal_dali(drawn):
    _src_cfg, cfg = drawn
    split = load_split(cfg, "test")
    dali = list(DaliLoader(split, cfg, "train", 2, seed=1))
    cached = CachedLoader(split, cfg, "train", 2, lambda d, r, n: DaliLoader(
        split, d, "eval", 3, rank=r, world_size=n), seed=1)
    got = list(cached)
    assert cached.presampled and len(got) == len(dali)
    for a, b in zip(got, dali):
        assert torch.equal(a["video_mask"], b["video_mask"])
        assert torch.allclose(a["video"], b["video"], atol=1e-4)
    ref = list(ReferenceLoader(split, cfg, "eval", 5, num_workers=0))[0]
    errors = per_video_mae(ref, list(DaliLoader(split, cfg, "eval", 5))[0])
    print(f"\nreference loader vs DALI CPU on the same pre-sampled clips: worst {max(errors):.4f}/255")
    assert max(errors) < 0.05  # the same files, the same colour conversion


def test_a_config_sampling_otherwise_is_refused_before_any_work(drawn, monkeypatch):
    _src_cfg, pre_cfg = drawn
    cfg = load_config(None, [f"data.data_path={pre_cfg.data_path}",
                             f"data.features_path={pre_cfg.features_path}",
                             "data.max_frames=4", "data.image_resolution=32"])
    split = load_split(cfg.data, "test")
    monkeypatch.setattr(DaliLoader, "_build", lambda *a: pytest.fail("decoded"))
    for backend in ("dali", "reference"):
        cfg.data.loader = backend
        for cache in (False, True):
            with pytest.raises(UserError) as e:
                build_loader(cfg, split, "train", frame_cache=cache)
            msg = str(e.value)
            assert "data.max_frames is 6 there but 4 in the config" in msg
            assert "--presample" in msg and pre_cfg.features_path in msg
    cfg.data.max_frames, cfg.data.feature_framerate = 6, 2
    with pytest.raises(UserError, match="data.feature_framerate is 1 there but 2"):
        DaliLoader(split, cfg.data, "eval", 2)


def test_files_unlike_their_record_are_skipped_with_a_warning(drawn, tmp_path, caplog):
    src_cfg, pre_cfg = drawn
    local = tmp_path / "clips"
    shutil.copytree(pre_cfg.features_path, local)
    cfg = DataConfig(**{**pre_cfg.__dict__, "features_path": str(local)})
    # video1 replaced by another video's clip (other frame count); video4 broken after probing
    shutil.copy(local / "video3.webm", local / "video1.webm")
    split = load_split(cfg, "test")
    raw = (local / "video4.webm").read_bytes()
    (local / "video4.webm").write_bytes(raw[:300] + bytes(len(raw) - 300))
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        got = sorted(int(i) for b in DaliLoader(split, cfg, "eval", 2) for i in b["video_index"])
        ref = sorted(int(i) for b in ReferenceLoader(split, cfg, "eval", 2, num_workers=0)
                     for i in b["video_index"])
    assert got == [0, 2, 3] and ref == [0, 2, 3]
    text = caplog.text
    assert "video1.webm: it holds 6 frames, the record says 3" in text
    assert "video4.webm" in text
    train = DaliLoader(split, cfg, "train", 2)  # full batches, refilled, never the skipped
    batches = list(train)
    assert len(batches) == len(train) and all(
        1 not in b["video_index"].tolist() and 4 not in b["video_index"].tolist() for b in batches)


def test_prepare_is_resumable_and_refuses_other_sampling(drawn, tmp_path):
    src_cfg, pre_cfg = drawn
    out = tmp_path / "out"
    shutil.copytree(pre_cfg.features_path, out)
    videos = src_cfg.features_path
    again = presample(videos, out, src_cfg)
    assert (again["skipped"], again["presampled"]) == (5, 0)
    (out / "video2.webm").write_bytes(b"garbage")  # a damaged output is redone
    mtime = (out / "video0.webm").stat().st_mtime
    third = presample(videos, out, src_cfg, workers=2)
    assert (third["skipped"], third["presampled"]) == (4, 1)
    assert (out / "video0.webm").stat().st_mtime == mtime
    assert set(read_presampled(out).videos) == {f"video{k}" for k in range(5)}
    other = DataConfig(**{**src_cfg.__dict__, "max_frames": 4})
    with pytest.raises(UserError, match="data.max_frames is 6 there but 4 in the flags"):
        presample(videos, out, other)
    # --ids: only those redone; the other videos' records kept
    ids = tmp_path / "ids.txt"
    ids.write_text("video3\n")
    part = presample(videos, out, src_cfg, ids=["video3"], force=True)
    assert part["presampled"] == 1 and len(read_presampled(out).videos) == 5


def test_cli_with_config_and_flags_h264_option(tmp_path, capsys):
    src = tmp_path / "src"
    make_dataset(tmp_path / "ds", [dict(frames=40, fps=10, codec="vp9", width=40, height=30)])
    shutil.copytree(tmp_path / "ds" / "videos", src)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  max_frames: 3\n  image_resolution: 16\n  slice_framepos: 0\n")
    rc = prep.main(["--presample", "--config", str(cfg), "--feature-framerate", "2",
                    "--src", str(src), "--out", str(tmp_path / "o"), "--codec", "h264",
                    "--workers", "1", "-q"])
    assert rc == 0 and "1 pre-sampled" in capsys.readouterr().out
    rec = read_presampled(tmp_path / "o")
    assert rec.sampling == Sampling(feature_framerate=2, max_frames=3, slice_framepos=0,
                                    image_resolution=16)
    assert rec.codec == "h264" and rec.videos["video0"]["indices"] == [0, 5, 10]
    info = probe_video(tmp_path / "o" / "video0.mp4", count="decode")
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 3, 16, 16)
    import av

    with av.open(str(tmp_path / "o" / "video0.mp4")) as c:  # no B-frames (NVDEC-friendly)
        assert c.streams.video[0].codec_context.has_b_frames == 0
    with pytest.raises(UserError, match="--presample writes h264 or vp9"):
        prep.main(["--presample", "--src", str(src), "--out", str(tmp_path / "m"),
                   "--codec", "mjpeg"])


# ---- GPU (run by benchmarks/gpu_all.sh) --------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for NVDEC")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("codec,decoder", [("vp9", "nvdec"), ("h264", "nvdec"), ("vp9", "cpu")])
def test_gpu_on_presampled_real_msvd_equals_reference_on_the_source(real, tmp_path, codec,
                                                                     decoder):
    src_cfg, pre_cfg = real
    if codec == "h264":
        out = tmp_path / "h264"
        assert presample(MINI_MSVD / "MSVD_Videos", out, src_cfg, workers=2,
                         codec="h264")["presampled"] == 12
        pre_cfg = DataConfig(**{**pre_cfg.__dict__, "features_path": str(out)})
    src, pre = _all_videos("all", src_cfg), _all_videos("all", pre_cfg)
    want = list(ReferenceLoader(src, src_cfg, "eval", 12, num_workers=0))[0]
    dev = torch.device("cuda", 0)
    for k in (1, 2):
        cfg = DataConfig(**{**pre_cfg.__dict__, "dali_decoder": decoder, "dali_pipelines": k})
        got = list(DaliLoader(pre, cfg, "eval", 6, device=dev))
        assert all(b["video"].device.type == "cuda" for b in got)
        merged = {key: torch.cat([b[key].cpu() for b in got]) for key in got[0]}
        errors = per_video_mae(merged, want)
        print(f"\n{codec} via {decoder}, {k} pipeline(s), pre-sampled real MSVD vs reference on "
              f"the source: mean abs error {np.mean(errors):.3f}/255 (worst {max(errors):.3f})")
        assert np.mean(errors) <= 1.5 and max(errors) <= 2.0
    cached = CachedLoader(pre, cfg, "eval", 6, lambda d, r, n: DaliLoader(
        pre, d, "eval", 6, rank=r, world_size=n, device=dev), device=dev)
    for a, b in zip(cached, got):
        assert torch.equal(a["video_mask"], b["video_mask"])
        assert torch.allclose(a["video"], b["video"], atol=1e-4)
