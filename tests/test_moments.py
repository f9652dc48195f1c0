"""Moment search: ``index --window/--stride``, time ranges in ``search``/``api``/``serve``, and
the page starting the clip at the moment (headless Chromium).

The long-video test needs a model that tells the moment apart. Training one from scratch on
this machine takes minutes, so the query here is a vector, not words: the untrained tiny model's
own embedding of a short clip that shows only the moment's shape (patched in for
``encode_text``). What is tested is everything after the text tower: windows, their frame
sampling, the vectors stored with start and end, ranking, merging and the ranges returned.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading

import numpy as np
import pytest

pytest.register_assert_rewrite("search_fixtures")
from search_fixtures import save_untrained  # noqa: E402

from clip4clip_dali.archive.moments import check_windowing, merge_hits, video_windows  # noqa: E402
from clip4clip_dali.errors import UserError  # noqa: E402

FPS = 4
SIZE = 64
LONG_SECONDS = 60
WINDOW, STRIDE = 6, 3


# ------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("duration,window,stride,expected", [
    (3.0, 10, 5, [(0, 3.0)]),                       # shorter than a window: one, clipped
    (10.0, 10, 5, [(0, 10.0)]),                     # exactly one window
    (20.0, 10, 5, [(0, 10), (5, 15), (10, 20)]),    # the last one ends at the video's end
    (21.5, 10, 10, [(0, 10), (10, 20), (20, 21.5)]),  # back to back, the last clipped
    (7.25, 4, 3, [(0, 4), (3, 7), (6, 7.25)]),
])
def test_window_enumeration(duration, window, stride, expected):
    assert video_windows(duration, window, stride) == expected


def test_windows_cover_every_second_once_started():
    rng = np.random.default_rng(0)
    for _ in range(200):
        window = int(rng.integers(1, 30))
        stride = int(rng.integers(1, window + 1))
        duration = float(rng.uniform(0.1, 200))
        w = video_windows(duration, window, stride)
        assert w[0][0] == 0 and w[-1][1] == pytest.approx(duration, abs=1e-3)  # to the end
        assert all(b[0] - a[0] == stride for a, b in zip(w, w[1:]))
        assert all(a[1] >= b[0] for a, b in zip(w, w[1:]))  # no gap between windows
        assert all(0 < e - s <= window for s, e in w)
        assert len(w) == 1 or w[-2][0] + window < duration  # no window past the one reaching the end


def test_window_flags_are_checked_up_front():
    assert check_windowing(None, None) is None
    assert check_windowing(10, None) == {"window": 10, "stride": 5}
    assert check_windowing(7, 7) == {"window": 7, "stride": 7}
    for window, stride, words in [(10, 11, "--stride 11 is longer than --window 10"),
                                  (0, None, "--window must be"), (5, 0, "--stride must be"),
                                  (None, 3, "--stride 3 needs --window")]:
        with pytest.raises(UserError, match=words):
            check_windowing(window, stride)
    import argparse

    from clip4clip_dali.archive.moments import whole_seconds

    assert whole_seconds("--window")("12") == 12
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of seconds.*--window 2$"):
        whole_seconds("--window")("2.5")


def test_adjacent_and_overlapping_hits_of_a_video_merge():
    def h(path, score, start, end):
        return {"path": path, "score": score, "start": start, "end": end, "rid": int(score * 100)}

    hits = [h("a", .9, 10., 20.), h("b", .85, 0., 5.), h("a", .8, 15., 25.), h("a", .7, 25., 35.),
            h("a", .6, 40., 50.), h("b", .5, 10., 15.)]
    out = merge_hits(hits)
    assert [(x["path"], x["start"], x["end"], x["score"], x["windows"], x["rank"]) for x in out] == [
        ("a", 10., 35., .9, 3, 1),   # 10-20, 15-25 overlap; 25-35 touches: one result
        ("b", 0., 5., .85, 1, 2),    # 0-5 and 10-15 neither touch nor overlap: two
        ("a", 40., 50., .6, 1, 3),
        ("b", 10., 15., .5, 1, 4)]
    assert out[0]["rid"] == 90  # the best window's record
    # top 3: the first three windows merge; later ones only add other moments (a's 25-35
    # touches a listed moment and is dropped, a's 40-50 is a moment of its own)
    out = merge_hits(hits, top_k=3)
    assert [(x["path"], x["start"], x["end"], x["windows"]) for x in out] == [
        ("a", 10., 25., 2), ("b", 0., 5., 1), ("a", 40., 50., 1)]
    assert [(x["path"], x["start"]) for x in merge_hits(hits, top_k=2)] == [("a", 10.), ("b", 0.)]
    bridge = [h("a", .9, 0., 10.), h("a", .8, 20., 30.), h("a", .7, 10., 20.)]
    assert [(x["start"], x["end"], x["windows"], x["score"]) for x in merge_hits(bridge)] == [
        (0., 30., 3, .9)]  # a window between two results joins them
    whole = [{"path": "x", "score": 1.0, "rid": 1}, {"path": "x", "score": .5, "rid": 2}]
    assert [x["rid"] for x in merge_hits(whole)] == [1, 2]  # whole videos are left alone


# ------------------------------------------------------------------------------ a long video
def _frames(seconds: float, moment: tuple[float, float] | None, distractor: bool = True):
    """Grey frames with a small red square wandering (always), and a big white cross in the
    middle only between ``moment`` = (t0, t1) seconds."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    c = SIZE // 2
    cross = ((abs(xx - c) <= 4) & (abs(yy - c) <= 22)) | ((abs(yy - c) <= 4) & (abs(xx - c) <= 22))
    for i in range(int(round(seconds * FPS))):
        t = i / FPS
        img = np.full((SIZE, SIZE, 3), 90, np.uint8)
        if distractor:
            x = int(4 + (SIZE - 14) * (0.5 + 0.5 * np.sin(t * 0.7)))
            y = int(4 + (SIZE - 14) * (0.5 + 0.5 * np.cos(t * 0.3)))
            img[y:y + 10, x:x + 10] = (200, 30, 30)
        if moment is not None and moment[0] <= t < moment[1]:
            img[cross] = 255
        yield img


@pytest.fixture(scope="session")
def moment_setup(tmp_path_factory):
    """A 60 s VP9 clip whose cross appears between drawn times, two short clips without it, the
    reference clip of the cross alone, an untrained tiny model, and a moment index of the
    folder made by the ``index`` CLI."""
    import contextlib
    import io

    from clip4clip_dali.archive import index as index_cli
    from clip4clip_dali.data.synthetic import write_video

    root = tmp_path_factory.mktemp("moments")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(19)
    t0 = float(rng.integers(8, 40))
    moment = (t0, t0 + float(rng.integers(8, 13)))
    write_video(videos / "long.webm", _frames(LONG_SECONDS, moment), FPS)
    for name, secs in (("short_a", 5), ("short_b", 8)):
        write_video(videos / f"{name}.webm", _frames(secs, None), FPS)
    write_video(root / "cross.webm", _frames(3, (0, 3), distractor=False), FPS)
    ckpt = save_untrained(root / "untrained.pt")
    index = root / "index"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the CLI in this process: no second start-up
        assert index_cli.main(["--no-progress", "--checkpoint", str(ckpt), "--videos",
                               str(videos), "--out", str(index), "--window", str(WINDOW),
                               "--stride", str(STRIDE), "--json"]) == 0
    summary = json.loads(printed.getvalue())
    return {"root": root, "videos": videos, "ckpt": ckpt, "index": index, "moment": moment,
            "summary": summary}


@pytest.fixture(scope="session")
def moment_searcher(moment_setup):
    """The index's searcher, whose text tower is replaced by the reference clip's embedding."""
    from clip4clip_dali.archive.searcher import Searcher

    s = Searcher.open(moment_setup["index"], device="cpu")
    ref = s.model.encode_videos([moment_setup["root"] / "cross.webm"])
    s.model.encode_text = lambda texts, batch_size=256: ref.repeat(len(texts), 1)
    return s


def test_index_stores_one_vector_per_window(moment_setup):
    from clip4clip_dali.archive.video_index import VideoIndex

    s = moment_setup["summary"]
    expected = {"long": video_windows(LONG_SECONDS, WINDOW, STRIDE),
                "short_a": video_windows(5, WINDOW, STRIDE),
                "short_b": video_windows(8, WINDOW, STRIDE)}
    assert s["videos"] == 3 and s["windows"] == sum(map(len, expected.values()))
    idx = VideoIndex(moment_setup["index"])
    assert idx.windowing == {"window": WINDOW, "stride": STRIDE} and idx.num_videos == 3
    got = {}
    for r in idx.records:
        got.setdefault(r.id, []).append((r.start, r.end))
    assert {k: sorted(v) for k, v in got.items()} == {
        k: [(float(a), float(b)) for a, b in v] for k, v in expected.items()}


def test_search_finds_the_moment_and_merges_its_windows(moment_searcher, moment_setup):
    t0, t1 = moment_setup["moment"]
    hits = moment_searcher.search(["the white cross"], top_k=3)[0]
    best = hits[0]
    assert best["id"] == "long" and best["start"] < t1 and best["end"] > t0, (hits, (t0, t1))
    # the range is the moment's, not the whole video's: at most a window beyond either end
    assert best["start"] >= t0 - WINDOW and best["end"] <= t1 + WINDOW, (hits, (t0, t1))
    assert best["windows"] >= 1 and [h["rank"] for h in hits] == [1, 2, 3]
    long_ranges = sorted((h["start"], h["end"]) for h in hits if h["id"] == "long")
    assert all(a[1] < b[0] for a, b in zip(long_ranges, long_ranges[1:]))  # merged: disjoint


def test_search_cli_prints_time_ranges(moment_searcher, monkeypatch, capsys):
    from clip4clip_dali.archive import search, searcher

    monkeypatch.setattr(searcher.Searcher, "open", classmethod(lambda cls, *a, **k: moment_searcher))
    assert search.main(["--index", str(moment_searcher.index.dir), "cross", "--top-k", "2"]) == 0
    table = capsys.readouterr().out
    first = moment_searcher.search(["cross"], 2)[0][0]
    assert "time" in table.splitlines()[1] and search.time_range(first) in table
    assert search.main(["--index", str(moment_searcher.index.dir), "cross", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
    assert all({"start", "end", "windows"} <= set(h) and h["start"] < h["end"] for h in hits)


def test_other_window_settings_refused_and_a_grown_collection_extends(moment_setup, tmp_path):
    from clip4clip_dali.archive import index as index_cli
    from clip4clip_dali.archive.video_index import VideoIndex
    from clip4clip_dali.data.synthetic import write_video

    videos = tmp_path / "videos"
    shutil.copytree(moment_setup["videos"], videos, copy_function=shutil.copy2)
    out = tmp_path / "index"
    shutil.copytree(moment_setup["index"], out)
    con = sqlite3.connect(out / "index.sqlite")  # the copy indexes the copied folder
    con.execute("UPDATE meta SET value=? WHERE key='root'", (json.dumps(str(videos)),))
    con.commit()
    con.close()
    base = ["--no-progress", "--checkpoint", str(moment_setup["ckpt"]), "--videos", str(videos),
            "--out", str(out), "--json"]
    for extra, words in [(["--window", "8"], "8 s windows every 4 s"),  # default stride: half
                         ([], "whole videos")]:
        with pytest.raises(UserError, match=f"holds {WINDOW} s windows every {STRIDE} s.*{words}"):
            index_cli.main(base + extra)
    before = {(r.id, r.start) for r in VideoIndex(out).records}
    write_video(videos / "new.webm", _frames(7, None), FPS)
    assert index_cli.main(base + ["--window", str(WINDOW), "--stride", str(STRIDE)]) == 0
    after = VideoIndex(out)
    assert before < {(r.id, r.start) for r in after.records} and after.num_videos == 4
    assert sorted(r.start for r in after.records if r.id == "new") == [0.0, 3.0]


# The videos table as the store wrote it before moments (format 2, commit dba76a1).
MAIN_VIDEOS_TABLE = """
DROP INDEX videos_path_window; DROP INDEX videos_part; DROP INDEX videos_thumb;
CREATE TABLE old(rid INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT UNIQUE NOT NULL, id TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL NOT NULL, frames INTEGER NOT NULL,
    fps REAL NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, codec TEXT NOT NULL,
    thumb TEXT, part TEXT NOT NULL REFERENCES parts(name), row INTEGER NOT NULL);
INSERT INTO old SELECT rid, path, id, size, mtime_ns, duration, frames, fps, width, height,
    codec, thumb, part, row FROM videos;
DROP TABLE videos;
ALTER TABLE old RENAME TO videos;
CREATE INDEX videos_part ON videos(part);
CREATE INDEX videos_thumb ON videos(thumb);
"""


def test_an_index_without_window_columns_still_opens_and_extends(moment_setup, tmp_path):
    """A store written before moments (its videos table as it was: no win_start/win_end,
    format 2) is read as whole videos and extended as before."""
    from clip4clip_dali.archive.indexer import build_index, folder_candidates
    from clip4clip_dali.archive.searcher import Searcher
    from clip4clip_dali.archive.video_index import VideoIndex
    from clip4clip_dali.runsetup import checkpoint_config

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("short_a", "short_b"):
        shutil.copy2(moment_setup["videos"] / f"{name}.webm", videos)
    out = tmp_path / "index"
    cfg = checkpoint_config(moment_setup["ckpt"], None)
    build_index(out, moment_setup["ckpt"], cfg, *folder_candidates(videos), show_progress=False)
    con = sqlite3.connect(out / "index.sqlite")
    con.executescript(MAIN_VIDEOS_TABLE)
    con.close()
    assert VideoIndex(out).windowing is None and VideoIndex(out).store.meta("format") == 2
    hits = Searcher.open(out, device="cpu").search(["anything"], 5)[0]
    assert len(hits) == 2 and not any("start" in h for h in hits)
    shutil.copy2(moment_setup["videos"] / "long.webm", videos)
    s = build_index(out, moment_setup["ckpt"], cfg, *folder_candidates(videos),
                    show_progress=False)
    assert s["videos"] == 3 and s["encoded"] == 1 and "windows" not in s
    assert all(r.start is None for r in VideoIndex(out).records)


# ------------------------------------------------------------------------------ the page
def _chromium(tmp_path):
    from search_fixtures import chromium_driver

    return chromium_driver(tmp_path, "--autoplay-policy=no-user-gesture-required")


def test_playing_a_moment_starts_the_player_inside_its_range(moment_searcher, moment_setup,
                                                               tmp_path):
    from conftest import free_port
    from waitress import create_server

    from clip4clip_dali.archive.serve import create_app

    port = free_port()
    server = create_server(create_app(moment_searcher), host="127.0.0.1", port=port, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    driver = None
    try:
        import urllib.request

        body = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/search?q=cross&k=3", timeout=30).read())
        assert all({"start", "end"} <= set(h) for h in body["hits"])
        t0, t1 = moment_setup["moment"]
        assert body["hits"][0]["start"] < t1 and body["hits"][0]["end"] > t0
        driver = _chromium(tmp_path)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(f"http://127.0.0.1:{port}/")
        assert "3 videos (moments: 6 s windows every 3 s)" in \
            driver.find_element(By.CLASS_NAME, "about").text
        driver.find_element(By.ID, "q").send_keys("the white cross", Keys.ENTER)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        card = cards[0]
        start, end = float(card.get_attribute("data-start")), float(card.get_attribute("data-end"))
        assert start > 0, "the best moment should start after 0 s, so that a seek is needed"
        assert card.find_element(By.CLASS_NAME, "moment").text == f"{start:.1f}\u2013{end:.1f} s"
        card.click()
        wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('clip');"
            "return v.readyState >= 2 && !v.seeking && v.currentTime > 0"))
        now = driver.execute_script("return document.getElementById('clip').currentTime")
        assert start <= now <= end, (now, start, end)
        assert f"{start:.1f}\u2013{end:.1f} s" in driver.find_element(By.ID, "playing").text
    finally:
        if driver is not None:
            driver.quit()
        server.close()


def test_a_split_with_time_windows_lists_each_file_once(moment_setup, tmp_path):
    """``index --split`` on a split whose captions name windows (one entry per window) indexes
    each file once, under the file's own id."""
    from clip4clip_dali.archive.collect import split_candidates
    from clip4clip_dali.config import load_config
    from layout_fixtures import write_lines
    from search_fixtures import DEMO

    videos = moment_setup["videos"]
    path = write_lines(tmp_path / "moments.jsonl", [
        {"video": str(videos / "long.webm"), "caption": "the cross", "split": "test",
         "start": 26, "end": 36},
        {"video": str(videos / "long.webm"), "caption": "the start", "split": "test",
         "start": 0, "end": 5},
        {"video": str(videos / "short_a.webm"), "caption": "a red square", "split": "test"}])
    cfg = load_config(DEMO, ["data.dataset=jsonl", f"data.data_path={path}",
                             "data.synthetic.videos=0"])
    root, cands = split_candidates(cfg, "test")
    assert root == videos and sorted((c.id, c.path) for c in cands) == [
        (str(videos / "long.webm"), "long.webm"), (str(videos / "short_a.webm"), "short_a.webm")]
