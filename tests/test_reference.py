import av
import numpy as np
import pytest
import torch

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.manifest import probe_video
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import (ReferenceLoader, clip_transform, decode_clip,
                                           pad_clip)
from clip4clip_dali.data.sampling import frame_indices
from conftest import MINI_MSVD, require_realdata, write_clip


def _direct_frames(path, indices, resolution):
    """Decode every frame with plain PyAV and pick the indices: the oracle for the loader."""
    with av.open(str(path)) as c:
        images = [f.to_image() for f in c.decode(video=0)]
    return torch.stack([clip_transform(images[i], resolution) for i in indices]), len(images)


@pytest.mark.parametrize("codec,size", [("libvpx-vp9", (64, 48)), ("mjpeg", (48, 80))])
def test_reference_frames_equal_direct_pyav(tmp_path, codec, size):
    path = write_clip(tmp_path / "c.mkv", frames=75, fps=25, width=size[0], height=size[1],
                      codec=codec)
    idx = frame_indices(75, 25, 1, 12, 2)
    got = decode_clip(path, idx, 32)
    want, n = _direct_frames(path, idx, 32)
    assert n == 75 and got.shape == (3, 3, 32, 32)
    assert torch.equal(got, want)


def test_pad_and_mask():
    frames = torch.randn(3, 3, 8, 8)
    video, mask = pad_clip(frames, 5)
    assert mask.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(video[:3], frames) and not video[3:].any()


def test_real_msvd_clips_counts_indices_and_frames():
    require_realdata()
    clips = sorted((MINI_MSVD / "MSVD_Videos").glob("*.avi"))
    assert len(clips) == 12
    for path in clips:
        info = probe_video(path)
        assert info.ok and info.codec == "h264", (path, info)
        idx = frame_indices(info.frames, info.fps, 1, 12, 2)
        assert len(idx) and idx[-1] < info.frames
        if path.name in ("klteYv1Uv9A_27_33.avi", "778mkceE0UQ_40_46.avi"):
            got = decode_clip(path, idx, 224)
            want, n = _direct_frames(path, idx, 224)
            assert n == info.frames
            assert torch.equal(got, want)
    info = probe_video(MINI_MSVD / "MSVD_Videos" / "778mkceE0UQ_40_46.avi")
    assert (info.frames, int(info.fps), info.width, info.height) == (360, 59, 640, 480)
    assert frame_indices(info.frames, info.fps, 1, 12, 2).tolist() == list(range(0, 355, 59))


def test_reference_loader_on_real_msvd_batches():
    require_realdata()
    cfg = DataConfig(data_path=str(MINI_MSVD / "msvd_data"),
                     features_path=str(MINI_MSVD / "MSVD_Videos"), max_frames=4, max_words=16,
                     image_resolution=32, num_workers=0)
    split = load_split(cfg, "test")
    loader = ReferenceLoader(split, cfg, "eval", batch_size=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    seen = torch.cat([b["video_index"] for b in batches]).tolist()
    assert seen == list(range(5))
    b = batches[0]
    assert b["video"].shape == (2, 4, 3, 32, 32) and b["video"].dtype == torch.float32
    assert b["video_mask"].dtype == torch.int64
    train = ReferenceLoader(split, cfg, "train", batch_size=4, num_workers=1)
    tb = next(iter(train))
    assert tb["text"].shape == tb["text_mask"].shape == (4, 16)
    assert len(train) == len(split.captions) // 4


def test_broken_video_skipped_with_warning(tmp_path, caplog):
    import pickle
    import logging
    data, vids = tmp_path / "d", tmp_path / "v"
    data.mkdir(), vids.mkdir()
    for i in range(3):
        write_clip(vids / f"v{i}.webm", frames=20, fps=10, seed=i)
    (data / "raw-captions.pkl").write_bytes(pickle.dumps({f"v{i}": [["a"]] for i in range(3)}))
    for s in ("train", "val", "test"):
        (data / f"{s}_list.txt").write_text("v0\nv1\nv2")
    cfg = DataConfig(data_path=str(data), features_path=str(vids), max_frames=2,
                     image_resolution=16, num_workers=0)
    split = load_split(cfg, "test")
    # Broken after probing: the manifest said fine, the decoder now finds garbage.
    (vids / "v1.webm").write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 500)
    with caplog.at_level(logging.WARNING):
        batches = list(ReferenceLoader(split, cfg, "eval", batch_size=3))
    assert torch.cat([b["video_index"] for b in batches]).tolist() == [0, 2]
    assert "v1.webm" in caplog.text
    assert all(torch.isfinite(b["video"]).all() for b in batches)
