"""data.dali_pipelines: K independent DALI pipelines feeding one loader give the same batches for
any K (also around a broken file, across passes, mid-epoch resume); data.dali_threads 0 takes
this process's share of the cores."""
from __future__ import annotations

import shutil

import pytest
import torch

from clip4clip_dali.config import load_config
from clip4clip_dali.data.loaders.dali_loader import DaliLoader, default_dali_threads
from clip4clip_dali.data.msvd import load_split
from dali_fixtures import CPU_SPECS, data_config, make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("k_ds"), CPU_SPECS)


def same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def loader(split, cfg, mode, k, builds=None, **kw):
    cfg.dali_pipelines = k
    out = DaliLoader(split, cfg, mode, 2, seed=5, **kw)
    if builds is not None:
        orig = out._build
        out._build = lambda *a: (builds.append(a[1]), orig(*a))[1]
    return out


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batches_identical_for_any_number_of_pipelines(dataset, mode):
    cfg = data_config(dataset, train_frame_order=2)
    split = load_split(cfg, "test")
    want = list(loader(split, cfg, mode, 1))
    for k in (2, 3, 7):  # 7: more pipelines than batches in evaluation
        builds = []
        one = loader(split, cfg, mode, k, builds)
        for epoch in (0, 0, 1):  # the second pass reuses the pipelines
            one.set_epoch(epoch)
            same(list(one), want if epoch == 0 else _epoch(split, cfg, mode, epoch))
        assert len(builds) == k  # built once, reused by the later passes
        same(list(one.iter_from(1)), _epoch(split, cfg, mode, 1)[1:])


def _epoch(split, cfg, mode, epoch):
    cfg.dali_pipelines = 1
    single = DaliLoader(split, cfg, mode, 2, seed=5)
    single.set_epoch(epoch)
    return list(single)


def test_broken_file_handled_the_same_for_any_k(dataset, tmp_path):
    data, videos = dataset
    local = tmp_path / "videos"
    shutil.copytree(videos, local)
    cfg = data_config((data, local))
    split = load_split(cfg, "test")  # probed while every file is good
    victim = split.video_paths[3]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:200] + bytes(len(raw) - 200))
    for mode in ("train", "eval"):
        want = list(loader(split, cfg, mode, 1))
        for k in (2, 3):
            got = list(loader(split, cfg, mode, k))
            same(got, want)
            assert all(3 not in b["video_index"].tolist() for b in got)


def test_dali_threads_default_is_this_process_share_of_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_dali_threads() == 16 and default_dali_threads(3) == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_dali_threads() == 2 and default_dali_threads(4) == 1
    cfg = load_config(None, [])
    assert (cfg.data.dali_threads, cfg.data.dali_pipelines) == (0, 1)
    assert load_config(None, ["data.dali_pipelines=4"]).data.dali_pipelines == 4
    with pytest.raises(ValueError, match="data.dali_pipelines = 0 is out of range"):
        load_config(None, ["data.dali_pipelines=0"])
