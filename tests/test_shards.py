"""Tar shards (pipelines/make_shards.py, data.dataset=shards): the writer's output, batches
equal to the per-file pre-sampled loader's, ranks, resume, the resampled mode, bad input."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile

import pytest
import torch

from clip4clip_dali.config import load_config
from clip4clip_dali.data.loaders.dali_shards import ShardLoader
from clip4clip_dali.data.dataset import load_split
from clip4clip_dali.data.loaders.loader import build_loader
from clip4clip_dali.data.presampled import Sampling
from clip4clip_dali.data.shards_store import parse_index
from clip4clip_dali.errors import UserError
from conftest import REPO, free_port
from dali_fixtures import CPU_SPECS, data_config, make_dataset
from s3_fixtures import S3_ENV, moto_with_shards

sys.path.insert(0, str(REPO / "pipelines"))
import make_shards as ms  # noqa: E402
import prepare_msvd as prep  # noqa: E402

FRAMES, RES = 4, 32


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """(msvd DataConfig over per-file pre-sampled clips, shards DataConfig, shard folder)."""
    root = tmp_path_factory.mktemp("shards")
    ds = make_dataset(root, CPU_SPECS)
    src = data_config(ds, max_frames=FRAMES, image_resolution=RES)
    sampling = Sampling.from_config(src)
    summary = ms.make_shards(src, root / "shards", sampling, shard_size="2", workers=1)
    assert summary["failed"] == {} and summary["samples"]["train"] == len(CPU_SPECS)
    prep.prepare(ds[1], root / "presampled", prep.Options(presample=sampling, crf=None), workers=1)
    per_file = data_config(ds, max_frames=FRAMES, image_resolution=RES,
                           features_path=str(root / "presampled"))
    return per_file, shards_cfg(root / "shards"), root / "shards"


def shards_cfg(folder, **kw):
    from clip4clip_dali.config import DataConfig

    return DataConfig(**{**dict(dataset="shards", data_path=str(folder / "manifest.json"),
                                max_frames=FRAMES, image_resolution=RES, dali_threads=1), **kw})


def run_cfg(data, batch=2):
    cfg = load_config(None, [])
    cfg.data, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.seed = data, batch, 3, 7
    return cfg


def batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch)
    return list(loader.iter_from(start))


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_writer_output_is_a_dali_webdataset_of_the_presampled_bytes(sets):
    per_file, _cfg, folder = sets
    doc = json.loads((folder / "manifest.json").read_text())
    assert doc["sampling"] == Sampling.from_config(per_file).to_json()
    assert not (folder / ms.WORK).exists()
    shard = doc["splits"]["train"]["shards"][0]
    with tarfile.open(folder / shard["tar"]) as tar:
        names = tar.getnames()
        assert names == ["000000.webm", "000000.json", "000001.webm", "000001.json"]
        meta = json.loads(tar.extractfile("000001.json").read())
        clip = tar.extractfile("000001.webm").read()
    assert meta["id"] == "video1" and meta["split"] == "train" and len(meta["captions"]) == 2
    assert len(meta["indices"]) == meta["frames"] <= FRAMES
    # presample.py's clip: the same bytes but the muxer's random 8-byte TrackUID (written twice)
    same = (per_file_dir(per_file) / "video1.webm").read_bytes()
    assert len(clip) == len(same) and sum(x != y for x, y in zip(clip, same)) <= 16
    index = parse_index((folder / shard["index"]).read_text(), "idx")
    raw = (folder / shard["tar"]).read_bytes()
    m = index[1]["webm"]
    assert raw[m.offset:m.offset + m.size] == clip
    # DALI's own reader takes the shards and their index files
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def wds():
        video, _meta = fn.readers.webdataset(paths=[str(folder / shard["tar"])],
                                             index_paths=[str(folder / shard["index"])],
                                             ext=["webm", "json"])
        return fn.decoders.video(video, device="cpu")

    pipe = wds()
    pipe.build()
    assert tuple(pipe.run()[0].as_tensor().shape())[1:] == (FRAMES, RES, RES, 3)


def per_file_dir(cfg):
    from pathlib import Path

    return Path(cfg.features_path)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batches_equal_the_per_file_presampled_loader(sets, mode):
    per_file, cfg, _ = sets
    split_a = load_split(per_file, "train")
    split_b = load_split(cfg, "train")
    assert split_a.video_ids == split_b.video_ids and split_a.captions == split_b.captions
    a = build_loader(run_cfg(per_file), split_a, mode)
    b = build_loader(run_cfg(cfg), split_b, mode)
    assert isinstance(b, ShardLoader) and not isinstance(a, ShardLoader)
    assert_same(batches(a, 1), batches(b, 1))


def test_two_ranks_cover_each_sample_once_and_resume_exactly(sets):
    _, cfg, _ = sets
    split = load_split(cfg, "train")
    seen = []
    for rank in range(2):
        loader = ShardLoader(split, cfg, "eval", 2, rank=rank, world_size=2)
        seen += [int(i) for b in batches(loader) for i in b["video_index"]]
    assert sorted(seen) == list(range(split.num_videos))
    # training: 10 (video, caption) samples, global batch 4 -> 2 steps, 8 samples, none twice
    train = [ShardLoader(split, cfg, "train", 2, rank=r, world_size=2, seed=3) for r in (0, 1)]
    pairs = [(int(v), tuple(t.tolist())) for ld in train for b in batches(ld)
             for v, t in zip(b["video_index"], b["text"])]
    assert len(pairs) == 8 == len(set(pairs))
    # a new loader (a resumed process) from batch 1 of epoch 2 equals the rest of that epoch
    full = batches(ShardLoader(split, cfg, "train", 2, seed=3), 2)
    assert_same(batches(ShardLoader(split, cfg, "train", 2, seed=3), 2, start=1), full[1:])


def test_resampled_mode_draws_a_fixed_count_per_seed_and_rank(sets):
    _, cfg, _ = sets
    split = load_split(cfg, "train")
    rs = shards_cfg(sets[2], shards_resampled=13)

    def order(rank, epoch, seed=1):
        ld = ShardLoader(split, rs, "train", 3, rank=rank, world_size=2, seed=seed)
        ld.set_epoch(epoch)
        return ld.indices().tolist()

    assert len(order(0, 0)) == len(order(1, 0)) == 6  # 13 cut to whole global batches of 6
    assert order(0, 0) == order(0, 0) and order(0, 0) != order(1, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(0, 0, seed=2)
    ld = ShardLoader(split, rs, "train", 3, seed=1)
    assert len(ld) == 4 and len(batches(ld)) == 4


def test_writer_resumes_and_refuses_foreign_or_other_sampling(sets, tmp_path):
    per_file, _, folder = sets
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    (out / "train-000001.tar").write_bytes((out / "train-000001.tar").read_bytes()[:3000])
    (out / "manifest.json").unlink()
    src = data_config((per_file.data_path, sets[0].features_path.replace("presampled", "videos")),
                      max_frames=FRAMES, image_resolution=RES)
    s = ms.make_shards(src, out, Sampling.from_config(src), shard_size="2", workers=1)
    assert s["kept_shards"] == s["shards"] - 1  # only the truncated one is written again
    assert (out / "train-000001.tar").stat().st_size == (folder / "train-000001.tar").stat().st_size
    assert (out / "train-000000.tar").read_bytes() == (folder / "train-000000.tar").read_bytes()
    assert len(load_split(shards_cfg(out), "train").skipped) == 0
    with pytest.raises(UserError, match="max_frames is 4 there but 3"):
        ms.make_shards(src, out, Sampling(max_frames=3, image_resolution=RES), shard_size="2")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a shard set"):
        ms.make_shards(src, foreign, Sampling.from_config(src), shard_size="2")
    assert os.listdir(foreign) == ["notes.txt"]


def broken_copy(folder, tmp_path):
    out = tmp_path / "broken"
    shutil.copytree(folder, out)
    return out


def test_missing_truncated_and_unreadable_shards_are_skipped_by_name(sets, tmp_path, caplog):
    out = broken_copy(sets[2], tmp_path)
    (out / "train-000000.tar").unlink()  # missing: its 2 samples
    raw = (out / "train-000001.tar").read_bytes()
    idx = parse_index((out / "train-000001.idx").read_text(), "idx")
    (out / "train-000001.tar").write_bytes(raw[:idx[1]["webm"].offset + 10])  # truncated
    (out / "train-000002.idx").write_text("garbage\n")  # unreadable index
    with caplog.at_level(logging.WARNING, "clip4clip_dali"):
        split = load_split(shards_cfg(out), "train")
    assert split.video_ids == ["video2"] and len(split.skipped) == 4
    assert f"{out / 'train-000000.tar'} (2 samples): missing" in caplog.text
    assert "000001.webm lies past the end" in caplog.text and "train-000002.idx" in caplog.text


def _corrupt_member(out, shard, member):
    idx = parse_index((out / f"{shard}.idx").read_text(), "idx")
    m = idx[int(member[:6])][member[7:]]
    with open(out / f"{shard}.tar", "r+b") as f:
        f.seek(m.offset)
        f.write(b"\x00garbage" * (m.size // 8))


def test_member_that_does_not_decode_is_skipped_and_training_goes_on(sets, tmp_path, caplog):
    out = broken_copy(sets[2], tmp_path)
    _corrupt_member(out, "train-000001", "000000.webm")  # video2
    split = load_split(shards_cfg(out), "train")
    loader = ShardLoader(split, shards_cfg(out), "train", 2, seed=5)
    with caplog.at_level(logging.WARNING, "clip4clip_dali"):
        got = batches(loader)
    assert len(got) == len(loader) == 5 and loader.bad_videos == {2}
    assert all(2 not in b["video_index"].tolist() and torch.isfinite(b["video"]).all()
               for b in got)
    assert "train-000001.tar:000000.webm" in caplog.text


def test_sample_without_json_is_skipped_and_a_foreign_manifest_is_refused(sets, tmp_path):
    out = broken_copy(sets[2], tmp_path)
    lines = (out / "train-000002.idx").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:4])  # the index lists no JSON member for it
    (out / "train-000002.idx").write_text("\n".join(lines) + "\n")
    split = load_split(shards_cfg(out), "train")
    assert "video4" not in split.video_ids and "json is missing" in split.skipped[0]
    # another set's shard under this manifest's name: refused before decoding, named
    shutil.copy(out / "train-000002.tar", out / "train-000000.tar")
    shutil.copy(out / "train-000002.idx", out / "train-000000.idx")
    with pytest.raises(UserError, match="train-000000.tar does not match the manifest"):
        load_split(shards_cfg(out), "train")


def test_other_sampling_is_refused_naming_both_values(sets):
    cfg = shards_cfg(sets[2])
    cfg.image_resolution = 48
    with pytest.raises(UserError, match="image_resolution is 32 there but 48 in the config"):
        load_split(cfg, "val")
    cfg = shards_cfg(sets[2], loader="reference")
    with pytest.raises(UserError, match="read by DALI only"):
        build_loader(run_cfg(cfg), load_split(cfg, "val"), "eval")


# ---- S3 (moto's server on loopback: a real S3 API, no network) --------------------------
@pytest.fixture(scope="module")
def s3_set(sets):
    with moto_with_shards(sets[2]) as (endpoint, _client):
        yield endpoint, "s3://clips/set/manifest.json"


def test_shards_read_from_s3_equal_the_local_ones(sets, s3_set, monkeypatch):
    endpoint, url = s3_set
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    cfg = shards_cfg(sets[2], data_path=url)
    split = load_split(cfg, "val")
    assert split.video_paths[0].startswith("s3://clips/set/val-000000.tar:")
    local = load_split(sets[1], "val")
    assert_same(batches(ShardLoader(split, cfg, "eval", 3)),
                batches(ShardLoader(local, sets[1], "eval", 3)))


def test_s3_without_credentials_or_endpoint_fails_fast_with_a_clear_error(sets, s3_set,
                                                                          monkeypatch, tmp_path):
    endpoint, url = s3_set
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    with pytest.raises(UserError, match="the S3 endpoint does not answer"):
        load_split(shards_cfg(sets[2], data_path=url), "val")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UserError, match="no S3 credentials"):
        load_split(shards_cfg(sets[2], data_path=url), "val")


def test_stats_of_a_shard_set_come_from_its_manifest(sets, tmp_path, capsys):
    from clip4clip_dali.data.stats import main as stats_main

    out = broken_copy(sets[2], tmp_path)
    (out / "train-000001.tar").unlink()  # 2 samples skipped when probing
    assert stats_main(["--config", str(REPO / "configs" / "demo.yaml"), "--json",
                       "--set", "data.dataset=shards", "--set", "data.synthetic.videos=0",
                       "--set", f"data.data_path={out / 'manifest.json'}"]) == 0
    s = json.loads(capsys.readouterr().out)
    doc = json.loads((out / "manifest.json").read_text())
    assert list(s) == list(doc["splits"]) == ["train", "val", "test"]
    train = s["train"]
    assert train["videos_listed"] == train["videos_found"] == 5 and train["videos_missing"] == 0
    assert train["captions"] == train["pairs"] == train["train_samples_per_epoch"] == 10
    assert train["sampling"] == doc["sampling"] and doc["sampling"]["max_frames"] == FRAMES
    assert train["shards"] == 3 and train["codec"] == "vp9"
    frames = [r["frames"] for sh in doc["splits"]["train"]["shards"] for r in sh["samples"]]
    assert train["frames_per_clip"]["max"] == max(frames) <= FRAMES
    assert train["samples_readable"] == 3 and train["samples_skipped"] == 2
    assert train["skipped_examples"][0].startswith(f"{out / 'train-000001.tar'}: missing")
    from clip4clip_dali.data.stats import dataset_stats, format_stats

    cfg = shards_cfg(out, shards_caption_per_epoch=True)
    text = format_stats(dataset_stats(cfg, probe=False), cfg)
    assert "train: 5 videos listed, 5 found, 0 missing; 10 captions, 10 pairs" in text
    assert "3 shard(s)" in text and f"data.max_frames={FRAMES}" in text
    assert "readable" not in text  # not probed: no index file opened
