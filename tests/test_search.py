"""Index -> search on generated clips with a trained tiny model; incremental and resumable
indexing; refusals; the library API."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.register_assert_rewrite("search_fixtures")
from search_fixtures import save_untrained  # noqa: E402

from clip4clip_dali.archive.index import main as index_main  # noqa: E402
from clip4clip_dali.archive.search import main as search_main  # noqa: E402
from conftest import check, run_here, run_main, run_module  # noqa: E402

pytest_plugins = ["search_fixtures"]

HIT_KEYS = {"rank", "score", "id", "path", "rid", "duration"}


def captions_of(clips: Path) -> dict[str, list[str]]:
    from clip4clip_dali.data.msvd import load_captions

    return load_captions(clips / "raw-captions.pkl")


def build(out: Path, checkpoint: Path, videos: Path, **kw) -> dict:
    """The index CLI's work, in this process."""
    from clip4clip_dali.archive.indexer import build_index, folder_candidates
    from clip4clip_dali.runsetup import checkpoint_config

    root, candidates = folder_candidates(videos)
    return build_index(out, checkpoint, checkpoint_config(checkpoint), root, candidates,
                       show_progress=False, **kw)


def test_round_trip_finds_the_captioned_video(folder_index, clips, tmp_path):
    caps = captions_of(clips)
    queries = [(c, vid) for vid in sorted(caps) for c in caps[vid]]
    qfile = tmp_path / "queries.txt"
    qfile.write_text("# one caption a line\n" + "\n".join(c for c, _ in queries) + "\n")
    p = run_module("clip4clip_dali.search", "--index", str(folder_index), "--queries",
                   str(qfile), "--top-k", "5", "--json")
    check(p)
    doc = json.loads(p.stdout)
    assert set(doc) == {"index", "model", "score", "method", "results"}
    assert doc["method"] == "exact"  # 12 videos: auto keeps exact search
    assert set(doc["model"]) == {"checkpoint", "sim_header"} and doc["score"] == "cosine"
    assert [r["query"] for r in doc["results"]] == [c for c, _ in queries]
    top1 = 0
    for res, (_, vid) in zip(doc["results"], queries):
        hits = res["hits"]
        assert set(res) == {"query", "hits"} and len(hits) == 5
        assert all(set(h) == HIT_KEYS for h in hits)
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)
        assert all(Path(h["path"]).is_file() and Path(h["path"]).stem == h["id"] for h in hits)
        top1 += hits[0]["id"] == vid
    rate = top1 / len(queries)
    print(f"round trip: the captioned video is first for {top1}/{len(queries)} captions "
          f"({100 * rate:.0f}%) of {len(caps)} videos")
    assert rate >= 0.6, rate

    # several queries on the command line, text output: rank, score, id, path
    p = run_here("clip4clip_dali.search", "--index", str(folder_index), queries[0][0],
                 queries[-1][0], "--top-k", "3")
    check(p)
    lines = p.stdout.splitlines()
    assert lines[0] == f"query: {queries[0][0]}"
    assert len([x for x in lines if x.startswith("query:")]) == 2
    rank, score, vid, path = lines[2].split()
    assert rank == "1" and float(score) <= 1.001 and Path(path).is_file() and Path(path).stem == vid


def test_split_index_ranks_as_the_evaluation_does(trained, clips, tmp_path):
    """Search over an indexed split puts a caption's video first exactly as often as the
    evaluation's text-to-video R@1 says (same loaders, sampling and model)."""
    import dataclasses

    from clip4clip_dali.data.msvd import load_split
    from clip4clip_dali.distributed import DistInfo
    from clip4clip_dali.archive.indexer import build_index, split_candidates
    from clip4clip_dali.retrieval import evaluate_split
    from clip4clip_dali.runsetup import checkpoint_config, model_from_checkpoint
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    cfg = checkpoint_config(trained)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, loader="reference"))
    out = tmp_path / "split_index"
    root, candidates = split_candidates(cfg, "test")
    build_index(out, trained, cfg, root, candidates, show_progress=False)
    r1 = evaluate_split(model_from_checkpoint(trained, cfg, "cpu"), cfg,
                        load_split(cfg.data, "test"), DistInfo())["plain"]["t2v"]["R1"]
    index = VideoIndex(out)
    assert len(index) == 4
    caps = captions_of(clips)
    queries = [(c, r.id) for r in index.records for c in caps[r.id]]
    hits = Searcher(index, index.open_model()).search([c for c, _ in queries], 1)
    rate = 100 * sum(h[0]["id"] == v for h, (_, v) in zip(hits, queries)) / len(queries)
    assert rate == pytest.approx(r1, abs=100 / len(queries) + 1e-6)


def test_reindex_encodes_only_added_and_changed_and_resumes(trained, clips, tmp_path,
                                                            monkeypatch):
    from clip4clip_dali.archive import indexer
    from clip4clip_dali.archive.video_index import VideoIndex

    src = sorted((clips / "videos").glob("*.webm"))
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for f in src[:3]:
        shutil.copy(f, videos / f.name)
    shutil.copy(src[3], videos / "sub" / src[3].name)
    out = tmp_path / "index"
    s = build(out, trained, videos)
    assert s["encoded"] == 4 and s["videos"] == 4
    first = VideoIndex(out)
    before = {r.path: first.vectors()["embeddings"][i] for i, r in enumerate(first.records)}
    assert f"sub/{src[3].name}" in before and all(r.thumb for r in first.records)

    # nothing changed: nothing encoded
    s = build(out, trained, videos)
    assert (s["encoded"], s["kept"], s["videos"]) == (0, 4, 4)

    # one added, one changed (other content), one removed
    shutil.copy(src[4], videos / src[4].name)
    shutil.copy(src[5], videos / src[1].name)
    (videos / src[2].name).unlink()
    s = build(out, trained, videos)
    assert (s["encoded"], s["kept"], s["removed"], s["videos"]) == (2, 2, 1, 4)
    after = VideoIndex(out)
    vec = {r.path: after.vectors()["embeddings"][i] for i, r in enumerate(after.records)}
    assert set(vec) == {src[0].name, src[1].name, src[4].name, f"sub/{src[3].name}"}
    assert torch.equal(vec[src[0].name], before[src[0].name])
    assert not torch.equal(vec[src[1].name], before[src[1].name])
    assert len(list((out / "thumbs").glob("*.jpg"))) == 4  # the removed file's is gone

    # a run killed after encoding (parts written, not merged) is picked up by the next one
    shutil.copy(src[6], videos / src[6].name)

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(indexer, "_merge", killed)
        with pytest.raises(KeyboardInterrupt):
            build(out, trained, videos, flush_every=1)
    assert list((out / "parts").glob("*.json"))
    assert len(VideoIndex(out)) == 4  # the index itself is untouched until the merge
    s = build(out, trained, videos)
    assert (s["encoded"], s["videos"]) == (0, 5) and not (out / "parts").exists()


def test_another_model_is_refused(trained, folder_index, clips, tmp_path, capsys):
    from clip4clip_dali.archive.video_index import VideoIndex, VideoIndexError

    other = save_untrained(tmp_path / "other.pt")
    assert run_main(index_main, "--no-progress", "--checkpoint", str(other),
                    "--videos", str(clips / "videos"), "--out", str(folder_index)) == 2
    err = capsys.readouterr().err
    assert "was built by" in err and "--rebuild" in err and "Traceback" not in err
    with pytest.raises(VideoIndexError, match="was built by"):
        VideoIndex(folder_index).open_model(other)
    # the same bytes elsewhere are the same model
    moved = tmp_path / "moved.pt"
    shutil.copy(trained, moved)
    assert VideoIndex(folder_index).open_model(moved).checkpoint == str(moved)
    # --rebuild replaces the index (here a copy of it)
    copy = tmp_path / "copy"
    shutil.copytree(folder_index, copy)
    assert build(copy, other, clips / "videos", rebuild=True)["encoded"] == 12
    assert VideoIndex(copy).identity["checkpoint"] == str(other.resolve())


def test_cli_refusals_are_one_clear_line(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no video here")
    for main, args, message in (
            (index_main, ["--checkpoint", str(trained), "--videos", str(empty),
                          "--out", str(tmp_path / "i")], "no video files"),
            (search_main, ["--index", str(empty), "anything"], "not a video index"),
            (search_main, ["--index", str(empty)], "no query")):
        assert run_main(main, *args) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error:") and "Traceback" not in err, err


def test_unreadable_videos_are_listed_and_skipped(trained, clips, tmp_path):
    from clip4clip_dali.archive.video_index import VideoIndex
    from clip4clip_dali.errors import UserError

    videos = tmp_path / "videos"
    videos.mkdir()
    good = sorted((clips / "videos").glob("*.webm"))[:2]
    for f in good:
        shutil.copy(f, videos / f.name)
    (videos / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    (videos / "empty.webm").write_bytes(b"")
    (videos / "cut.webm").write_bytes(good[0].read_bytes()[:300])
    out = tmp_path / "index"
    s = build(out, trained, videos)
    assert s["videos"] == 2 and len(s["failed"]) == 3
    index = VideoIndex(out)
    assert sorted(r.path for r in index.records) == sorted(f.name for f in good)
    assert sorted(f.path for f in index.failed) == ["cut.webm", "empty.webm", "garbage.mp4"]
    assert all(f.error for f in index.failed)
    # known unreadable files are not tried again unless they change (or retry_failed)
    s = build(out, trained, videos)
    assert s["encoded"] == 0 and len(s["failed"]) == 3
    s = build(out, trained, videos, retry_failed=True)
    assert s["encoded"] == 0 and len(s["failed"]) == 3
    shutil.copy(good[0], videos / "cut.webm")
    s = build(out, trained, videos)
    assert s["encoded"] == 1 and s["videos"] == 3 and len(s["failed"]) == 2
    # a collection with nothing readable is an error, not an empty index
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.avi").write_bytes(b"RIFF....AVI garbage")
    with pytest.raises(UserError, match=r"none of the 1 video\(s\)"):
        build(tmp_path / "bad_index", trained, bad)
    with pytest.raises(UserError, match="no video files"):
        build(tmp_path / "x", trained, tmp_path / "index" / "thumbs")


def test_tight_transf_ranks_with_the_cross_encoder(clips, tmp_path, clip4clip_log):
    from clip4clip_dali.api import load_model
    from clip4clip_dali.errors import UserError
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    ckpt = save_untrained(tmp_path / "tight.pt", sim_header="tightTransf")
    out = tmp_path / "index"
    s = build(out, ckpt, clips / "videos")
    assert s["kind"] == "frames" and s["videos"] == 12
    index = VideoIndex(out)
    searcher = Searcher(index, index.open_model(), chunk=5)
    assert "cross encoder" in clip4clip_log.text and "slower" in clip4clip_log.text
    hits = searcher.search(["a red circle moves up"], 12)[0]
    assert searcher.score_kind == "cross_encoder_logit" and len(hits) == 12
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the model's own cross encoder on the files gives the same scores (the index keeps fp16)
    model = load_model(ckpt, device="cpu")
    enc = model.encode_video_frames([h["path"] for h in hits])
    direct = model.score(model.encode_text(["a red circle moves up"]), enc.frames, enc.mask)[0]
    assert direct.tolist() == pytest.approx([h["score"] for h in hits], abs=2e-2)
    with pytest.raises(UserError, match="no video embedding"):
        model.encode_videos([hits[0]["path"]])


def test_load_model_api(trained, folder_index, clips):
    from clip4clip_dali.api import load_model
    from clip4clip_dali.errors import UserError
    from clip4clip_dali.archive.video_index import VideoIndex

    model = load_model(trained)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    index = VideoIndex(folder_index)
    paths = [index.root / r.path for r in index.records]
    v = model.encode_videos(paths[::-1], batch_size=5)
    assert v.shape == (12, model.embed_dim) and v.device.type == model.device.type
    assert torch.allclose(v.norm(dim=1), torch.ones(12, device=v.device), atol=1e-4)
    stored = index.vectors()["embeddings"].float().flip(0).to(v.device)
    assert torch.allclose(v, stored, atol=2e-3)  # the index holds the same vectors (fp16)
    t = model.encode_text(["a red circle moves to the left", "a blue square goes up"])
    assert t.shape == (2, model.embed_dim)
    assert (t @ v.T).shape == (2, 12)
    with pytest.raises(TypeError):
        model.encode_text("one string")
    with pytest.raises(UserError, match="could not be decoded"):
        model.encode_videos([paths[0], clips / "raw-captions.pkl"])


def test_index_under_torchrun_two_ranks(trained, folder_index, clips, tmp_path):
    from clip4clip_dali.archive.video_index import VideoIndex

    out = tmp_path / "index2"
    p = run_module("clip4clip_dali.index", "--no-progress", "--checkpoint", str(trained),
                   "--videos", str(clips / "videos"), "--out", str(out), "--flush-every", "2",
                   torchrun=2, timeout=400)
    check(p)
    two, one = VideoIndex(out), VideoIndex(folder_index)
    assert [r.path for r in two.records] == [r.path for r in one.records]
    assert torch.allclose(two.vectors()["embeddings"].float(),
                          one.vectors()["embeddings"].float(), atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_index_and_search_on_the_gpu_match_the_cpu(clips, tmp_path):
    """On a GPU the model runs there and DALI decodes with NVDEC what it can (the small VP9
    clips below NVDEC's minimum go to the reference loader): the vectors match the CPU's."""
    from clip4clip_dali import distributed as D
    from clip4clip_dali.archive.indexer import build_index, folder_candidates
    from clip4clip_dali.runsetup import checkpoint_config
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex

    ckpt = save_untrained(tmp_path / "m.pt")
    cfg = checkpoint_config(ckpt)
    root, cands = folder_candidates(clips / "videos")
    for name, dev in (("cpu", "cpu"), ("gpu", "cuda:0")):
        info = D.DistInfo(device=torch.device(dev))
        build_index(tmp_path / name, ckpt, cfg, root, cands, info, show_progress=False)
    cpu, gpu = VideoIndex(tmp_path / "cpu"), VideoIndex(tmp_path / "gpu")
    a, b = (x.vectors()["embeddings"].float() for x in (cpu, gpu))
    assert [r.path for r in cpu.records] == [r.path for r in gpu.records]
    assert (a * b).sum(1).min() > 0.99
    searcher = Searcher.open(tmp_path / "gpu", device="cuda")
    assert searcher.model.device.type == "cuda"
    hits = searcher.search(["a red circle moves to the left"], 5)[0]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    """index and search arguments: a message naming the argument and the fix."""
    from clip4clip_dali.archive import index as index_cli
    from clip4clip_dali.archive import search as search_cli
    from clip4clip_dali.errors import UserError

    latin1 = tmp_path / "queries.txt"
    latin1.write_bytes("a red circle\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"--queries .*line 2 is not UTF-8.*save the file as UTF-8"):
        search_cli.main(["--index", str(tmp_path), "--queries", str(latin1)])
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa red circle\n".encode("utf-8"))
    assert search_cli.read_queries(str(bom)) == ["a red circle"]
    for argv, message in ((["--index", str(tmp_path), "q", "--top-k", "0"], "--top-k"),
                          (["--index", str(tmp_path), "q", "--rerank", "0"], "--rerank"),
                          (["--index", str(tmp_path), "q", "--device", "cuda:7"], "--device cuda:7")):
        if "cuda" in message and torch.cuda.device_count() > 7:
            continue
        with pytest.raises(UserError, match=message):
            search_cli.main(argv)
    for argv, message in ((["--videos", str(tmp_path)], "--out INDEX_DIR is required"),
                          (["--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                            "--flush-every", "0"], "--flush-every must be at least 1")):
        with pytest.raises(UserError, match=message):
            index_cli.main(argv)
