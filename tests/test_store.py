"""The index store (SQLite records, memory-mapped float16 parts), its lock, damaged parts, the
old format's conversion, approximate search and its fallback, and what an ``index`` run may
touch in the folders it is given."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.register_assert_rewrite("search_fixtures")
from search_fixtures import REPO, save_untrained  # noqa: E402

from conftest import env  # noqa: E402

pytest_plugins = ["search_fixtures"]


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory) -> Path:
    return save_untrained(tmp_path_factory.mktemp("store_model") / "m.pt")


@pytest.fixture
def videos(clips, tmp_path) -> Path:
    """Four of the generated clips in a folder of their own."""
    d = tmp_path / "videos"
    d.mkdir()
    for f in sorted((clips / "videos").glob("*.webm"))[:4]:
        shutil.copy(f, d / f.name)
    return d


def build(out: Path, ckpt: Path, videos: Path, **kw) -> dict:
    from clip4clip_dali.archive.indexer import build_index, folder_candidates
    from clip4clip_dali.runsetup import checkpoint_config

    root, cands = folder_candidates(videos)
    return build_index(out, ckpt, checkpoint_config(ckpt), root, cands, show_progress=False, **kw)


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ data loss
def test_out_that_is_not_an_index_is_refused_untouched(model_ckpt, videos, tmp_path):
    from clip4clip_dali.errors import UserError

    proj = tmp_path / "proj"
    (proj / "parts").mkdir(parents=True)
    (proj / "thumbs").mkdir()
    (proj / "parts" / "ch1.json").write_text("n")
    (proj / "thumbs" / "holiday.jpg").write_bytes(b"\xff\xd8 my holiday")
    before = tree(proj)
    with pytest.raises(UserError, match="not a video index.*nothing was changed"):
        build(proj, model_ckpt, videos)
    assert tree(proj) == before and not (proj / ".lock").exists()
    # --out the videos folder itself (holding the user's own thumbs/) is refused the same way
    (videos / "thumbs").mkdir()
    (videos / "thumbs" / "mine.jpg").write_bytes(b"\xff\xd8 mine")
    before = tree(videos)
    with pytest.raises(UserError, match="not a video index"):
        build(videos, model_ckpt, videos)
    assert tree(videos) == before
    # a file as --out
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build(f, model_ckpt, videos)
    assert f.read_text() == "x"


def test_index_deletes_only_what_it_wrote(model_ckpt, videos, tmp_path):
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    assert build(out, model_ckpt, videos)["videos"] == 4
    mine = out / "thumbs" / "mine.jpg"
    mine.write_bytes(b"\xff\xd8 a user's file in the index's folder")
    (out / "notes.txt").write_text("keep")
    gone = sorted(videos.glob("*.webm"))[0]
    gone.unlink()
    s = build(out, model_ckpt, videos)
    assert (s["videos"], s["removed"]) == (3, 1)
    index = VideoIndex(out)
    thumbs = {r.thumb for r in index.records}
    assert {p.name for p in (out / "thumbs").glob("*.jpg")} == thumbs | {"mine.jpg"}
    s = build(out, model_ckpt, videos, rebuild=True)
    assert s["encoded"] == 3 and mine.is_file() and (out / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------ the lock
def test_second_writer_is_refused_and_a_killed_one_never_blocks(model_ckpt, videos, tmp_path):
    from clip4clip_dali.archive.store import VideoIndexError, WriterLock

    out = tmp_path / "index"
    build(out, model_ckpt, videos)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from clip4clip_dali.archive.store import WriterLock; "
         "WriterLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
         str(out)], cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VideoIndexError, match=f"another `index` run is writing .*pid {holder.pid}"):
            build(out, model_ckpt, videos)
        assert not (out / "parts").exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with WriterLock(out):  # the kernel dropped the killed holder's lock
        pass
    assert build(out, model_ckpt, videos)["kept"] == 4


# ------------------------------------------------------------------------------ damage
def test_damaged_or_truncated_part_is_refused_then_reencoded(model_ckpt, videos, tmp_path):
    from clip4clip_dali.archive.store import VideoIndexError
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    build(out, model_ckpt, videos)
    good = VideoIndex(out).vectors()["embeddings"].clone()
    part = next((out / "vectors").glob("part-*.f16"))
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(VideoIndexError, match="does not match its checksum.*`index` command that built"):
        VideoIndex(out).vectors()
    part.write_bytes(bytes(data[:-7]))
    with pytest.raises(VideoIndexError, match="truncated or damaged"):
        VideoIndex(out).vectors()
    s = build(out, model_ckpt, videos)  # the damaged part's videos are encoded again
    assert (s["encoded"], s["videos"]) == (4, 4) and not part.exists()
    assert torch.allclose(VideoIndex(out).vectors()["embeddings"].float(), good.float(), atol=2e-3)


def test_damaged_database_is_a_message(model_ckpt, videos, tmp_path):
    from clip4clip_dali.archive.store import VideoIndexError
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    build(out, model_ckpt, videos)
    (out / "index.sqlite").write_bytes(b"garbage" * 100)
    for n in ("index.sqlite-wal", "index.sqlite-shm"):
        (out / n).unlink(missing_ok=True)
    with pytest.raises(VideoIndexError, match="could not be read.*--rebuild"):
        VideoIndex(out)


# ------------------------------------------------------------------------------ records
def test_record_ids_are_stable_and_never_reused(model_ckpt, videos, tmp_path):
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    build(out, model_ckpt, videos)
    first = {r.path: r.rid for r in VideoIndex(out).records}
    names = sorted(first)
    (videos / names[0]).unlink()                                  # dropped
    shutil.copy(videos / names[2], videos / names[1])             # changed: a new id
    build(out, model_ckpt, videos)
    now = {r.path: r.rid for r in VideoIndex(out).records}
    assert now[names[2]] == first[names[2]] and now[names[3]] == first[names[3]]
    assert now[names[1]] not in first.values() and names[0] not in now
    index = VideoIndex(out)
    assert index.record(first[names[0]]) is None and index.video_file(first[names[0]]) is None


def test_old_format_converts_with_one_command(model_ckpt, videos, tmp_path):
    """An index.json index (the first format) is refused with the command, which converts it
    to the same records and vectors."""
    from safetensors.numpy import save_file

    from clip4clip_dali.archive.store import VideoIndexError
    from clip4clip_dali.archive.video_index import VideoIndex

    new = tmp_path / "new"
    build(new, model_ckpt, videos)
    index = VideoIndex(new)
    records, vec = index.records, index.vectors()["embeddings"].numpy()
    old = tmp_path / "old"
    (old / "thumbs").mkdir(parents=True)
    for r in records:
        shutil.copy(new / "thumbs" / r.thumb, old / "thumbs" / r.thumb)
    shutil.copy(new / "config.yaml", old / "config.yaml")
    save_file({"embeddings": vec}, str(old / "vectors-3.safetensors"))
    meta = {"format": 1, "kind": "embeddings", "root": str(index.root), "model": index.identity,
            "generation": 3, "vectors": "vectors-3.safetensors",
            "videos": [{k: v for k, v in r.__dict__.items() if k != "rid"} for r in records],
            "failed": [{"path": "bad.webm", "size": 1, "mtime_ns": 2, "error": "broken"}]}
    (old / "index.json").write_text(json.dumps(meta))
    with pytest.raises(VideoIndexError, match=f"--convert {old}"):
        VideoIndex(old)
    p = subprocess.run([sys.executable, "-m", "clip4clip_dali.index", "--convert", str(old)],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "converted" in p.stdout and "4 videos" in p.stdout, p.stderr
    conv = VideoIndex(old)
    assert [r.path for r in conv.records] == [r.path for r in records]
    assert np.array_equal(conv.vectors()["embeddings"].numpy(), vec)
    assert [f.path for f in conv.failed] == ["bad.webm"]
    assert not (old / "index.json").exists() and not (old / "vectors-3.safetensors").exists()
    assert build(old, model_ckpt, videos)["kept"] == 4  # and extends as any index


# ------------------------------------------------------------------------------ ANN
def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 50), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_recall_on_small_data(kind):
    faiss = pytest.importorskip("faiss", reason="the [search] extra (faiss-cpu) is in [dev]")
    from clip4clip_dali.archive import ann

    x = clustered(4000, 32)
    ids = np.arange(100, 4100, dtype=np.int64)
    index = ann.build(faiss, kind, x, ids)
    ann.tune(faiss, index, kind)
    q = ann.held_queries(x)
    assert ann.recall_at(index, q, x, ids, 10) >= 0.9
    # record ids come back, not positions; removal (ivf) drops them
    _, got = index.search(x[:1].astype(np.float32), 1)
    assert got[0, 0] == 100
    if kind == "ivf":
        ann.remove(faiss, index, [100])
        _, got = index.search(x[:1].astype(np.float32), 3)
        assert 100 not in got[0].tolist() and index.ntotal == 3999


def test_index_with_ann_searches_like_exact(model_ckpt, videos, tmp_path, clip4clip_log):
    pytest.importorskip("faiss", reason="the [search] extra (faiss-cpu) is in [dev]")
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    s = build(out, model_ckpt, videos, ann_kind="ivf")
    assert s["ann"]["kind"] == "ivf" and s["ann"]["recall_at_10"] == 1.0
    assert "recall@10 against exact search" in clip4clip_log.text
    index = VideoIndex(out)
    model = index.open_model()
    approx, exact = Searcher(index, model), Searcher(index, model, exact=True)
    assert (approx.method, exact.method) == ("ivf", "exact")
    q = ["a red circle moves to the left", "a blue square"]
    a, e = approx.search(q, 4), exact.search(q, 4)
    assert [[h["rid"] for h in x] for x in a] == [[h["rid"] for h in x] for x in e]
    # a damaged approximate index: truncated is refused at open, flipped bytes once checked
    from clip4clip_dali.archive.store import VideoIndexError

    ann_file = out / s["ann"]["file"]
    good = ann_file.read_bytes()
    ann_file.write_bytes(good[:-5])
    with pytest.raises(VideoIndexError, match="truncated or damaged.*--exact"):
        Searcher(index, model)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    ann_file.write_bytes(bytes(flipped))
    damaged = Searcher(index, model)
    damaged.ann_check.join()
    with pytest.raises(VideoIndexError, match="does not match its checksum"):
        damaged.search(q, 4)
    assert exact.search(q, 4) == e
    ann_file.write_bytes(good)
    # the next run keeps the kind and updates the ANN index in place
    (sorted(videos.glob("*.webm"))[0]).unlink()
    s = build(out, model_ckpt, videos)
    assert s["ann"]["kind"] == "ivf" and s["ann"].get("updated")
    assert len(Searcher(VideoIndex(out), model).search(q, 10)[0]) == 3


def test_without_faiss_search_is_exact_with_one_log_line(model_ckpt, videos, tmp_path,
                                                        clip4clip_log, monkeypatch):
    pytest.importorskip("faiss")
    from clip4clip_dali.archive import ann
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index"
    build(out, model_ckpt, videos, ann_kind="hnsw")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setattr(ann, "_warned", False)
    index = VideoIndex(out)
    searcher = Searcher(index, index.open_model())
    assert searcher.method == "exact" and len(searcher.search(["a circle"], 4)[0]) == 4
    s = build(out, model_ckpt, videos, ann_kind="ivf")
    assert s["ann"]["kind"] == "exact" and "faiss-cpu" in s["ann"]["why"]
    lines = {id(r): r.message for r in clip4clip_log.records  # (a record may reach it twice)
             if "faiss is not installed" in r.message}
    assert len(lines) == 1 and "[search]" in next(iter(lines.values()))


# ------------------------------------------------------------------------------ listing
def test_listing_survives_odd_names_loops_and_vanished_files(videos, clip4clip_log, monkeypatch):
    from clip4clip_dali.archive import collect

    good = sorted(p.name for p in videos.glob("*.webm"))
    bad_name = os.fsencode(videos) + b"/caf\xe9.webm"
    with open(bad_name, "wb") as f:
        f.write(b"x")
    (videos / "sub").mkdir()
    os.symlink(videos, videos / "sub" / "loop")        # points back up the tree
    os.symlink(videos / "nowhere.webm", videos / "dangling.webm")
    shutil.copy(videos / good[0], videos / "sub" / "vanishing.webm")
    real_candidate = collect._candidate

    def vanish(root, rel, vid):
        if rel.endswith("vanishing.webm"):
            (root / rel).unlink()
        return real_candidate(root, rel, vid)

    monkeypatch.setattr(collect, "_candidate", vanish)
    root, cands = collect.folder_candidates(videos)
    assert sorted(c.path for c in cands) == good
    text = clip4clip_log.text
    assert "not valid UTF-8" in text and "already listed" in text
    assert "dangling.webm" in text and "vanishing.webm" in text


def test_tight_transf_reranks_what_the_ann_index_preselects(videos, tmp_path):
    pytest.importorskip("faiss", reason="the [search] extra (faiss-cpu) is in [dev]")
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    ckpt = save_untrained(tmp_path / "tight.pt", sim_header="tightTransf")
    out = tmp_path / "index"
    s = build(out, ckpt, videos, ann_kind="hnsw")
    assert s["kind"] == "frames" and s["ann"]["kind"] == "hnsw"
    index = VideoIndex(out)
    model = index.open_model()
    q = ["a red circle moves up"]
    exact = Searcher(index, model, exact=True).search(q, 4)[0]
    every = Searcher(index, model, rerank=4).search(q, 4)[0]  # N = all: the same ranking
    assert [h["rid"] for h in every] == [h["rid"] for h in exact]
    assert [h["score"] for h in every] == pytest.approx([h["score"] for h in exact], abs=1e-4)
    two = Searcher(index, model, rerank=2)
    assert two.method == "hnsw"
    assert len(two.search(q, 4)[0]) == 4  # N is at least top_k
    hits = two.search(q, 2)[0]
    assert len(hits) == 2
    scores = {h["rid"]: h["score"] for h in exact}
    assert all(scores[h["rid"]] == pytest.approx(h["score"], abs=1e-4) for h in hits)
