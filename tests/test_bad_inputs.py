"""Bad video inputs: each is a clear error or a logged skip naming the file, never garbage.

Every case builds a small dataset of good clips plus one bad input, loads the split and runs
the reference loader over it: the bad clip is either reported and skipped (the other clips
still load, every value finite) or, where it is usable, loaded like any other clip.
"""
import logging
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.msvd import DatasetError, load_split
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from conftest import write_clip


def _corrupt(path):
    path.with_suffix(".mp4").write_bytes(np.random.default_rng(0).bytes(4000))


def _truncated(path):
    write_clip(path, frames=40, fps=10, seed=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _empty_file(path):
    path.write_bytes(b"")


def _zero_frames(path):
    with av.open(str(path), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()  # writes the header of a stream that never gets a frame


def _audio_only(path):
    path = path.with_suffix(".mkv")
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)


SKIPPED = {
    "corrupt bytes": _corrupt,
    "truncated file": _truncated,
    "zero-byte file": _empty_file,
    "zero-frame video": _zero_frames,
    "audio-only file": _audio_only,
}


def _vfr(path):
    """Variable frame rate: frame gaps alternate between 1/30 s and 1/10 s."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=30)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 30)
        pts = 0
        for i in range(40):
            img = np.full((32, 48, 3), (i * 6) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts
            frame.time_base = Fraction(1, 30)
            pts += 1 if i % 2 else 3
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def _zero_fps_header(path):
    """MJPEG AVI whose headers say 0 frames a second (avih and strh rates zeroed)."""
    path = write_clip(path.with_suffix(".avi"), frames=10, fps=10, codec="mjpeg")
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    data[avih + 8:avih + 12] = bytes(4)  # dwMicroSecPerFrame
    strh = data.find(b"strh")
    data[strh + 28:strh + 36] = bytes(8)  # dwScale, dwRate
    path.write_bytes(bytes(data))


USABLE = {
    # FFmpeg substitutes its default rate (25) for a zero one: the clip loads at that rate.
    "zero fps in the header": _zero_fps_header,
    "variable frame rate": _vfr,
    "tiny 16x16 frames": lambda p: write_clip(p, frames=12, fps=6, width=16, height=16),
    "4K frames": lambda p: write_clip(p.with_suffix(".avi"), frames=3, fps=1, width=3840,
                                      height=2160, codec="mjpeg"),
    "portrait": lambda p: write_clip(p, frames=12, fps=6, width=32, height=64),
}


def _dataset(tmp_path, make_bad):
    data, vids = tmp_path / "data", tmp_path / "videos"
    data.mkdir(), vids.mkdir()
    for i in range(2):
        write_clip(vids / f"good{i}.webm", frames=12, fps=6, seed=i)
    make_bad(vids / "bad.webm")
    ids = ["good0", "bad", "good1"]
    (data / "raw-captions.pkl").write_bytes(pickle.dumps({v: [[v, "clip"]] for v in ids}))
    for split in ("train", "val", "test"):
        (data / f"{split}_list.txt").write_text("\n".join(ids))
    return DataConfig(data_path=str(data), features_path=str(vids), max_frames=4,
                      image_resolution=16, num_workers=0, max_words=8)


def _batches(cfg):
    split = load_split(cfg, "test")
    batches = list(ReferenceLoader(split, cfg, "eval", batch_size=2))
    for b in batches:
        assert torch.isfinite(b["video"]).all()
        assert (b["video_mask"].sum(1) > 0).all()
    return split, batches


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_bad_video_is_reported_and_skipped(tmp_path, caplog, case):
    cfg = _dataset(tmp_path, SKIPPED[case])
    with caplog.at_level(logging.WARNING):
        split, batches = _batches(cfg)
    assert split.video_ids == ["good0", "good1"], case
    assert "bad." in caplog.text, caplog.text
    assert sum(len(b["video_index"]) for b in batches) == 2


@pytest.mark.parametrize("case", sorted(USABLE))
def test_odd_but_valid_video_loads(tmp_path, case):
    cfg = _dataset(tmp_path, USABLE[case])
    split, batches = _batches(cfg)
    assert "bad" in split.video_ids, case
    assert sum(len(b["video_index"]) for b in batches) == 3
    info = split.video_info[split.video_ids.index("bad")]
    assert info.fps > 0 and info.frames > 0
    if case == "variable frame rate":  # 40 frames over 2.67 s: the average rate, not nominal 30
        assert info.frames == 40 and abs(info.fps - 15) < 0.5


def test_every_video_bad_is_a_clear_error(tmp_path):
    cfg = _dataset(tmp_path, _corrupt)
    for p in (tmp_path / "videos").glob("good*"):
        p.write_bytes(b"nope")
    with pytest.raises(DatasetError, match="every video is unreadable"):
        load_split(cfg, "test")


def test_non_utf8_caption_bytes_are_decoded_not_crashed(tmp_path):
    cfg = _dataset(tmp_path, lambda p: write_clip(p, frames=12, fps=6))
    path = tmp_path / "data" / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"good0": [[b"caf\xe9", "au", "lait"]], "good1": [["x"]],
                                   "bad": [["y"]]}))
    split = load_split(cfg, "test")
    assert split.captions[0].startswith("caf") and split.captions[0].endswith("au lait")
