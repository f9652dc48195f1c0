"""The file system as users have it: names that are not UTF-8, links back up the tree, pipes,
broken links, files that vanish between listing and reading. Each odd file gets a warning
naming it; none stops or duplicates a collection."""
from __future__ import annotations

import logging
import os

import pytest

from conftest import write_clip


@pytest.fixture()
def odd_tree(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    write_clip(root / "good.webm", frames=6, fps=6)
    write_clip(root / "sub" / "deep.webm", frames=6, fps=6, seed=1)
    os.symlink("..", root / "sub" / "up")  # a link back up: a loop when followed
    os.symlink(root / "sub", root / "again")  # the same folder twice
    os.symlink(root / "nowhere.webm", root / "gone.webm")  # broken link
    os.mkfifo(root / "pipe.webm")  # would block whoever opens it
    with open(os.path.join(os.fsencode(root), b"caf\xe9.webm"), "wb") as f:
        f.write(b"x")
    return root


def test_find_videos_skips_odd_files_by_name_and_lists_each_video_once(odd_tree, caplog):
    from clip4clip_dali.data.split import find_videos

    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        found = find_videos(odd_tree)
    assert found == {"good": odd_tree / "good.webm", "deep": odd_tree / "again" / "deep.webm"}
    text = caplog.text
    assert "caf\\xe9.webm: its name is not valid UTF-8" in text
    assert "pipe.webm: not a regular file" in text and "gone.webm: not a regular file" in text
    assert "a link back to a folder already listed" in text


def test_a_video_that_vanishes_after_listing_is_left_out_by_name(odd_tree, caplog):
    from clip4clip_dali.config import DataConfig
    from clip4clip_dali.data.split import SplitListing, default_manifest_path, find_videos, \
        load_listing

    videos = find_videos(odd_tree)
    listing = SplitListing("test", sorted(videos), videos, {v: [f"{v} clip"] for v in videos},
                           default_manifest_path(odd_tree), str(odd_tree), "test")
    (odd_tree / "sub" / "deep.webm").unlink()
    with caplog.at_level(logging.WARNING, logger="clip4clip_dali"):
        split = load_listing(listing, DataConfig(features_path=str(odd_tree)))
    assert split.video_ids == ["good"]
    assert "deep" in caplog.text


def test_prepare_skips_a_pipe_and_a_loop_in_its_source(odd_tree, tmp_path):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "pipelines"))
    import prepare_msvd as prep

    s = prep.prepare(odd_tree, tmp_path / "out", prep.Options(short_side=32, max_duration=1.0),
                     workers=1, manifest=False)
    assert s["videos"] == 2 and s["transcoded"] == 2
