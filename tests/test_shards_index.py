"""``index --split`` on a tar shard set and ``serve`` playing clips out of the tars, on real MSVD
clips (the test split of ``realdata/mini_msvd``, pre-sampled, then written into shards)."""
from __future__ import annotations

import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from clip4clip_dali.errors import UserError
from conftest import REPO, require_realdata
from s3_fixtures import S3_ENV, moto_with_shards

sys.path.insert(0, str(REPO / "pipelines"))
import make_shards as ms  # noqa: E402
import prepare_msvd as prep  # noqa: E402

FRAMES, RES = 4, 64  # the demo's tiny model samples 4 frames at 64 px


def data_cfg(**kw):
    from clip4clip_dali.config import DataConfig

    mini = require_realdata() / "mini_msvd"
    return DataConfig(**{**dict(data_path=str(mini / "msvd_data"),
                                features_path=str(mini / "MSVD_Videos"), max_frames=FRAMES,
                                image_resolution=RES, dali_threads=1, prefetch=2), **kw})


def index_cli(*args: str) -> int:
    """The index command in this process, the package logger left as it was (main() sets it
    up; conftest's restore_logging does not cover module fixtures, and later modules' caplog
    would see nothing)."""
    import logging

    from clip4clip_dali.archive.index import main

    log = logging.getLogger("clip4clip_dali")
    state = (list(log.handlers), log.propagate, log.level)
    try:
        return main(["--no-progress", "--json", *args])
    finally:
        log.handlers[:] = state[0]
        log.propagate, log.level = state[1], state[2]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """The test split's clips pre-sampled once (a per-file set), the same bytes written into
    tar shards, an untrained tiny model, and an index of the shards' test split."""
    from search_fixtures import save_untrained

    from clip4clip_dali.data.presampled import Sampling

    root = tmp_path_factory.mktemp("shards_index")
    src = data_cfg()
    sampling = Sampling.from_config(src)
    ids = (require_realdata() / "mini_msvd" / "msvd_data" / "test_list.txt").read_text().split()
    prep.prepare(src.features_path, root / "pre", prep.Options(presample=sampling, crf=None),
                 workers=2, ids=ids)
    s = ms.make_shards(src, root / "shards", sampling, shard_size="2", workers=2,
                       splits=["test"], clips=root / "pre")
    assert s["failed"] == {} and s["samples"]["test"] == len(ids) == 5
    ckpt = save_untrained(root / "untrained.pt")
    config = root / "shards.yaml"
    config.write_text(f"data:\n  dataset: shards\n  data_path: {root / 'shards'}\n")
    return SimpleNamespace(root=root, ids=ids, ckpt=ckpt, config=config,
                           shards=root / "shards", pre=root / "pre", index=root / "index")


@pytest.fixture(scope="module")
def indexed(shard_set):
    from clip4clip_dali.archive.video_index import VideoIndex

    assert index_cli("--checkpoint", str(shard_set.ckpt), "--config", str(shard_set.config),
                     "--split", "test", "--out", str(shard_set.index)) == 0
    return VideoIndex(shard_set.index)


@pytest.fixture(scope="module")
def per_file(shard_set) -> dict[str, torch.Tensor]:
    """Video id -> float16 embedding of its per-file pre-sampled clip, by the same model through
    the per-file loader (the frames the trainer sees from that set)."""
    from clip4clip_dali.api import load_model
    from clip4clip_dali.data.dataset import load_split
    from clip4clip_dali.data.loaders.loader import build_loader

    model = load_model(shard_set.ckpt, device="cpu")
    split = load_split(data_cfg(features_path=str(shard_set.pre)), "test")
    cfg = model.config
    cfg.data = data_cfg(features_path=str(shard_set.pre))
    loader = build_loader(cfg, split, "eval", frame_cache=False)
    assert loader.presampled and loader.backend == "dali"
    out = {}
    for pos, f, m in model.iter_loader(loader, range(split.num_videos)):
        for p, e in zip(pos.tolist(), model.video_embeddings(f, m).half()):
            out[split.video_ids[p]] = e
    return out


def test_index_of_a_shard_split_equals_the_per_file_presampled_clips(shard_set, indexed,
                                                                     per_file):
    records = indexed.records
    assert sorted(r.id for r in records) == sorted(shard_set.ids)
    for r in records:
        m = indexed.store.member(r.path)
        assert r.path.split(":")[0].startswith("test-") and m["tar"].startswith(str(shard_set.shards))
        assert (m["size"], r.width, r.frames, r.codec) == (r.size, RES, FRAMES, "vp9")
        assert indexed.thumb_file(r.rid) is not None  # drawn from the member's bytes
    rid, vecs = indexed.load_vectors()
    by_id = {indexed.record(int(i)).id: v for i, v in zip(rid, vecs["embeddings"])}
    assert per_file.keys() == by_id.keys()
    for vid in per_file:  # same bytes -> same frames -> the same vector, bit for bit
        assert torch.equal(by_id[vid], per_file[vid]), vid


def test_search_finds_them(shard_set, indexed, per_file):
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.data.msvd import load_captions

    captions = load_captions(require_realdata() / "mini_msvd" / "msvd_data" / "raw-captions.pkl")
    searcher = Searcher.open(shard_set.index, device=torch.device("cpu"))
    query = captions[shard_set.ids[0]][0]
    hits = searcher.search([query], 5)[0]
    text = searcher.model.encode_text([query])[0]
    scores = {vid: float(text @ e.float()) for vid, e in per_file.items()}
    assert [h["id"] for h in hits] == sorted(scores, key=scores.get, reverse=True)
    assert all(abs(h["score"] - scores[h["id"]]) < 2e-3 for h in hits)


def app_client(index):
    from clip4clip_dali.archive.serve import create_app

    return create_app(SimpleNamespace(index=index, score_kind="cosine"), {"localhost"}).test_client()


def test_serve_streams_the_member_and_its_ranges_only(shard_set, indexed, monkeypatch):
    client = app_client(indexed)
    rec = next(r for r in indexed.records if r.path.endswith(":000001.webm"))
    member = indexed.store.member(rec.path)
    clip = (shard_set.pre / f"{rec.id}.webm").read_bytes()  # the bytes the shard holds
    client.get(f"/video/{rec.rid}").close()
    fds = len(os.listdir("/proc/self/fd"))
    reads = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((off, n)) or pread(fd, n, off))
    r = client.get(f"/video/{rec.rid}")
    assert r.status_code == 200 and r.data == clip and r.mimetype == "video/webm"
    assert r.headers["Accept-Ranges"] == "bytes" and int(r.headers["Content-Length"]) == len(clip)
    r = client.get(f"/video/{rec.rid}", headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206 and r.data == clip[100:1100]
    assert r.headers["Content-Range"] == f"bytes 100-1099/{len(clip)}"
    r = client.get(f"/video/{rec.rid}", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.data == clip[-10:]
    r = client.get(f"/video/{rec.rid}", headers={"Range": "bytes=5000-99999999"})
    assert r.status_code == 206 and r.data == clip[5000:]  # cut at the member's end
    r = client.get(f"/video/{rec.rid}", headers={"Range": f"bytes={len(clip)}-"})
    assert r.status_code == 416
    start, end = member["offset"], member["offset"] + member["size"]
    assert reads and all(start <= off and off + n <= end for off, n in reads)
    assert client.head(f"/video/{rec.rid}").status_code == 200
    assert len(os.listdir("/proc/self/fd")) == fds  # every response closed its shard
    assert client.get("/video/999").status_code == 404


def test_shards_sampled_otherwise_than_the_model_are_refused(shard_set, monkeypatch):
    from clip4clip_dali.archive.tar_clips import shard_candidates, with_model_sampling
    from clip4clip_dali.config import load_config

    model_cfg = load_config(None, ["data.image_resolution=32"])
    data = data_cfg(dataset="shards", data_path=str(shard_set.shards / "manifest.json"))
    with pytest.raises(UserError, match="image_resolution is 64 there but 32"):
        shard_candidates(with_model_sampling(data, model_cfg), "test")
    # a manifest given relative to the working folder: shards recorded by absolute path
    monkeypatch.chdir(shard_set.root)
    root, cands = shard_candidates(data_cfg(dataset="shards", data_path="shards"), "test")
    assert root == shard_set.shards.resolve() and len(cands) == 5
    assert all(c.member["tar"].startswith(str(root) + "/test-") for c in cands)


def test_demo_indexes_and_searches_a_shards_test_split(shard_set, tmp_path, capsys):
    from clip4clip_dali import distributed as D
    from clip4clip_dali.config import load_config
    from clip4clip_dali.demo_search import index_and_search

    cfg = load_config(None, [f"train.output_dir={tmp_path}"])
    cfg.data = data_cfg(dataset="shards", data_path=str(shard_set.shards / "manifest.json"))
    shutil.copy(shard_set.ckpt, tmp_path / "best.pt")
    got = index_and_search(cfg, "test", D.DistInfo())
    assert got["video"] in shard_set.ids and len(got["hits"]) == 3
    assert "5 test videos indexed" in capsys.readouterr().out


def test_s3_shards_are_indexed_and_served_by_ranged_gets(shard_set, indexed, tmp_path,
                                                         monkeypatch):
    """(moto's S3 server on loopback, as tests/test_shards.py)"""
    from clip4clip_dali.archive.video_index import VideoIndex

    with moto_with_shards(shard_set.shards) as (endpoint, client):
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        config = tmp_path / "s3.yaml"
        config.write_text("data:\n  dataset: shards\n  data_path: s3://clips/set/manifest.json\n")
        assert index_cli("--checkpoint", str(shard_set.ckpt), "--config", str(config),
                         "--split", "test", "--out", str(tmp_path / "index")) == 0
        index = VideoIndex(tmp_path / "index")
        rid, vecs = index.load_vectors()
        local = dict(zip((r.id for r in indexed.records), indexed.vectors()["embeddings"]))
        for i, v in zip(rid, vecs["embeddings"]):
            assert torch.equal(v, local[index.record(int(i)).id])
        rec = index.records[1]
        assert index.store.member(rec.path)["tar"].startswith("s3://clips/set/test-")
        from clip4clip_dali.archive.searcher import _shown_path
        assert _shown_path(index.root_text, rec.path) == f"s3://clips/set/{rec.path}"
        clip = (shard_set.pre / f"{rec.id}.webm").read_bytes()
        web = app_client(index)
        r = web.get(f"/video/{rec.rid}", headers={"Range": "bytes=10-209"})
        assert r.status_code == 206 and r.data == clip[10:210]
        assert web.get(f"/video/{rec.rid}").data == clip
        # the shard rewritten on the server (another ETag): refused
        tar = rec.path.split(":")[0]
        client.put_object(Bucket="clips", Key=f"set/{tar}",
                          Body=(shard_set.shards / tar).read_bytes() + b"\0" * 512)
        assert web.get(f"/video/{rec.rid}").status_code == 404


def test_a_rewritten_shard_is_refused_then_indexed_again(shard_set, indexed):
    """(Last: it rewrites a shard of the module's set.)"""
    client = app_client(indexed)
    recs = {r.path: r for r in indexed.records}
    changed = [r for p, r in recs.items() if p.startswith("test-000001.tar:")]
    kept = [r for p, r in recs.items() if not p.startswith("test-000001.tar:")]
    tar = shard_set.shards / "test-000001.tar"
    tar.write_bytes(tar.read_bytes())  # the same name, rewritten (a new modification time)
    for r in changed:
        got = client.get(f"/video/{r.rid}")
        assert got.status_code == 404 and b"changed since it was indexed" in got.data
    assert all(client.get(f"/video/{r.rid}").status_code == 200 for r in kept)
    assert index_cli("--checkpoint", str(shard_set.ckpt), "--config", str(shard_set.config),
                     "--split", "test", "--out", str(shard_set.index)) == 0
    from clip4clip_dali.archive.video_index import VideoIndex

    again = VideoIndex(shard_set.index)
    fresh = [r for r in again.records if r.path.startswith("test-000001.tar:")]
    assert len(fresh) == len(changed) and {r.rid for r in fresh}.isdisjoint(r.rid for r in changed)
    assert all(app_client(again).get(f"/video/{r.rid}").status_code == 200 for r in fresh)


def test_an_index_written_before_tar_members_still_opens(tmp_path):
    """An index of an earlier version has no members table: read-only it holds files only;
    the next `index` run (writable) adds the table."""
    from clip4clip_dali.archive.store import Store

    Store.create(tmp_path, {"kind": "embeddings", "root": str(tmp_path)}).db.execute(
        "DROP TABLE members")
    old = Store.open(tmp_path)
    assert old.member("a.tar:000000.webm") is None
    old.close()
    store = Store.open(tmp_path, writable=True)
    m = {"tar": "/x/a.tar", "offset": 512, "size": 10, "tar_size": 2048, "tar_mtime": "1"}
    with store.transaction():
        store.put_members([("a.tar:000000.webm", m)])
    assert store.member("a.tar:000000.webm") == m
    with store.transaction():
        store.drop_paths(["a.tar:000000.webm"])
    assert store.member("a.tar:000000.webm") is None
