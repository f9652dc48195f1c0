"""build_loader: backend choice (auto/dali/reference), its log line, user errors, batch sizes."""
from __future__ import annotations

import logging

import pytest
import torch

from clip4clip_dali.config import from_dict
from clip4clip_dali.data.loaders import loader as loader_mod
from clip4clip_dali.data.loaders.loader import build_loader, choose_backend
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.errors import UserError
from dali_fixtures import make_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_ds")
    vp9 = make_dataset(root / "vp9", [dict(frames=20, codec="vp9"), dict(frames=20, codec="mjpeg"),
                                      dict(frames=10, codec="vp9")])
    # (VP9 at least 128x128: NVDEC's minimum, so that NVDEC could take this split on a GPU)
    h264 = make_dataset(root / "h264", [dict(frames=20, codec="h264"),
                                        dict(frames=20, codec="vp9", width=160, height=128)])
    return {"vp9": vp9, "h264": h264}


def _cfg(ds, loader="auto", **train):
    data, videos = ds
    return from_dict({"data": {"data_path": str(data), "features_path": str(videos),
                               "max_frames": 4, "image_resolution": 32, "loader": loader},
                      "train": {"batch_size": 4, "eval_batch_size": 2, **train}})


def test_auto_picks_dali_on_cpu_for_vp9_mjpeg(datasets, caplog):
    cfg = _cfg(datasets["vp9"])
    split = load_split(cfg.data, "train")
    with caplog.at_level(logging.INFO, logger="clip4clip_dali"):
        loader = build_loader(cfg, split, "train", device=torch.device("cpu"))
    assert loader.backend == "dali"
    assert any("dali" in r.getMessage() for r in caplog.records)
    batches = list(loader)
    assert len(batches) == len(loader) == 1  # 6 captions, batch 4, tail dropped
    b = batches[0]
    assert set(b) == {"video", "video_mask", "text", "text_mask", "video_index"}
    assert b["video"].shape == (4, 4, 3, 32, 32) and b["text"].shape == (4, 32)
    ev = build_loader(cfg, split, "eval", device="cpu")
    assert set(next(iter(ev))) == {"video", "video_mask", "video_index"}
    assert [len(x["video_index"]) for x in ev] == [2, 1]


def test_auto_picks_torchcodec_then_reference_for_h264_on_cpu(datasets, caplog, monkeypatch):
    cfg = _cfg(datasets["h264"])
    split = load_split(cfg.data, "test")
    with caplog.at_level(logging.INFO, logger="clip4clip_dali"):
        loader = build_loader(cfg, split, "eval", device="cpu")
    assert loader.backend == "torchcodec"  # installed by the dev extra (and .ci/run's FFmpeg)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "h264" in msg and "prepare_msvd.py" in msg and "torchcodec" in msg
    assert sorted(int(i) for b in loader for i in b["video_index"]) == [0, 1]
    # Without torchcodec: the reference loader, saying why.
    monkeypatch.setattr(loader_mod, "torchcodec_import_error", lambda: "ImportError: none")
    with caplog.at_level(logging.INFO, logger="clip4clip_dali"):
        loader = build_loader(cfg, split, "eval", device="cpu")
    assert loader.backend == "reference" and "torchcodec is not usable" in caplog.text
    assert sorted(int(i) for b in loader for i in b["video_index"]) == [0, 1]
    # On a GPU, NVDEC would take it.
    assert choose_backend("auto", split, torch.device("cuda", 0))[0] == "dali"


def test_explicit_dali_with_undecodable_codec_is_a_user_error(datasets):
    cfg = _cfg(datasets["h264"], loader="dali")
    split = load_split(cfg.data, "test")
    with pytest.raises(UserError) as err:
        build_loader(cfg, split, "eval", device="cpu")
    text = str(err.value)
    assert "video0.mp4" in text and "prepare_msvd.py" in text and "loader=reference" in text


def test_reference_when_asked_or_dali_missing(datasets, monkeypatch):
    cfg = _cfg(datasets["vp9"], loader="reference")
    split = load_split(cfg.data, "test")
    assert build_loader(cfg, split, "eval").backend == "reference"
    monkeypatch.setattr(loader_mod, "dali_import_error", lambda: "ImportError: no DALI")
    assert choose_backend("auto", split, torch.device("cpu"))[0] == "torchcodec"
    monkeypatch.setattr(loader_mod, "torchcodec_import_error", lambda: "ImportError: none")
    assert choose_backend("auto", split, torch.device("cpu"))[0] == "reference"
    with pytest.raises(UserError, match="cannot be imported"):
        choose_backend("dali", split, torch.device("cpu"))


def test_explicit_torchcodec_without_it_is_a_user_error(datasets, monkeypatch):
    cfg = _cfg(datasets["h264"], loader="torchcodec")
    split = load_split(cfg.data, "test")
    assert choose_backend("torchcodec", split, torch.device("cpu"))[0] == "torchcodec"
    monkeypatch.setattr(loader_mod, "torchcodec_import_error", lambda: "ImportError: none")
    with pytest.raises(UserError, match="pip install torchcodec.*apt-get install ffmpeg"):
        build_loader(cfg, split, "eval")


def test_per_rank_batch_and_world_size(datasets):
    cfg = _cfg(datasets["vp9"], batch_size=4)
    split = load_split(cfg.data, "train")
    parts = [build_loader(cfg, split, "train", rank=r, world_size=2) for r in range(2)]
    assert all(p.batch_size == 2 for p in parts) and len(parts[0]) == len(parts[1]) == 1
    with pytest.raises(UserError):
        build_loader(_cfg(datasets["vp9"], batch_size=1), split, "train", world_size=2)



_COLLECTING_DATASET = """
import gc
from clip4clip_dali.data.loaders.reference import ClipDataset


class CollectingDataset(ClipDataset):
    def __getitem__(self, i):
        gc.collect()  # as a worker's own garbage collection would, sooner or later
        return super().__getitem__(i)
"""

_AFTER_DALI = """
import gc, sys
from clip4clip_dali.config import from_dict
from clip4clip_dali.data.loaders.dali_loader import DaliLoader
from clip4clip_dali.data.msvd import load_split
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from collecting_dataset import CollectingDataset
data, videos = sys.argv[1:3]
cfg = from_dict({"data": {"data_path": data, "features_path": videos, "max_frames": 4,
                          "image_resolution": 32}})
split = load_split(cfg.data, "test")
dali = DaliLoader(split, cfg.data, "eval", 2, device="cpu")
list(dali)
gc.disable()  # the dropped DALI loader stays garbage in this process
dali.cycle = dali
del dali
ref = ReferenceLoader(split, cfg.data, "eval", 1, num_workers=2)
ref.dataset.__class__ = CollectingDataset
print(sorted(int(i) for b in ref for i in b["video_index"]))
"""


def test_reference_workers_survive_dali_garbage_in_the_parent(datasets, tmp_path):
    """A forked worker that garbage-collects a DALI pipeline inherited from its parent hangs in
    the pipeline's destructor (the CI failure of 2026-11-27): the reference loader's workers
    must not inherit the parent's objects."""
    import os
    import subprocess
    import sys

    (tmp_path / "collecting_dataset.py").write_text(_COLLECTING_DATASET)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    data, videos = datasets["vp9"]
    try:
        p = subprocess.run([sys.executable, "-c", _AFTER_DALI, str(data), str(videos)],
                           capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("reference loader workers hung after a DALI loader was dropped")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[0, 1, 2]"
