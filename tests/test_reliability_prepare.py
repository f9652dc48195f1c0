"""pipelines/prepare_msvd.py loses nothing: a folder holding another mode's or another
sampling's output, or files it did not write, is refused before anything is written; a run that
fails on its arguments writes nothing; pre-sampled JSON Lines sets carry and enforce their
record, with clips in sub-folders of the dataset file."""
from __future__ import annotations

import sys

import pytest
import yaml

from clip4clip_dali.config import load_config
from clip4clip_dali.errors import UserError
from conftest import REPO
from layout_fixtures import CLIPS, own_clips_records, write_clips, write_lines
from reliability_helpers import old_mtime, snapshot

sys.path.insert(0, str(REPO / "pipelines"))  # importable by name, in pool workers too
import prepare_msvd as prep  # noqa: E402

IDS = list(CLIPS)[:2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return tmp_path_factory.mktemp("raw")


@pytest.fixture(scope="module")
def src(raw):
    write_clips(raw / "src", IDS)
    return raw / "src"


@pytest.fixture(scope="module")
def transcoded(src, raw):
    out = raw / "transcoded"
    assert prep.main(["--src", str(src), "--out", str(out), "--short-side", "32", "--workers",
                      "1", "-q", "--no-manifest"]) == 0
    return out


@pytest.fixture(scope="module")
def own_set(raw):
    """A JSON Lines dataset whose clips are in a sub-folder of the file's folder, pre-sampled."""
    root = raw / "own"
    clips = write_clips(root / "clips" / "a", IDS)
    data = write_lines(root / "dataset.jsonl",
                       own_clips_records(clips, root, {v: "train" for v in IDS}))
    cfg = raw / "own.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "jsonl", "data_path": str(data),
                                            "max_frames": 3, "image_resolution": 32}}))
    out = raw / "own_presampled"
    assert prep.main(["--presample", "--config", str(cfg), "--out", str(out), "--workers", "1",
                      "-q", "--no-manifest"]) == 0
    return cfg, out


def refused(argv, match, *keep):
    """``argv`` is refused with a message matching ``match``; the files under ``keep`` are
    unchanged (bytes and mtimes)."""
    for root in keep:
        for p in root.rglob("*"):
            if p.is_file():
                old_mtime(p)
    before = snapshot(*keep)
    with pytest.raises(UserError, match=match):
        prep.main(argv)
    assert snapshot(*keep) == before


def test_transcode_into_a_presampled_set_is_refused(src, own_set):
    _cfg, presampled = own_set
    refused(["--src", str(src), "--out", str(presampled), "--workers", "1"],
            "holds clips pre-sampled with .*Choose another --out", presampled)


def test_presample_into_transcoded_copies_is_refused(src, transcoded):
    refused(["--presample", "--src", str(src), "--out", str(transcoded), "--max-frames", "3",
             "--image-resolution", "32"], "holds transcoded copies", transcoded)


def test_transcode_with_other_options_is_refused(src, transcoded):
    refused(["--src", str(src), "--out", str(transcoded), "--short-side", "48"],
            "--short-side 32 there but 48 now.*--force", transcoded)


def test_a_folder_of_files_not_ours_is_refused(src, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f"{IDS[0]}.webm").write_bytes(b"my own video")
    refused(["--src", str(src), "--out", str(mine)], "holds no record of this tool", mine)


@pytest.mark.parametrize("argv, match", [
    (["--workers", "-1"], "--workers -1: give 0"),
    (["--fps", "0"], "--fps 0.0: give a positive number"),
    (["--crf", "99"], "--crf 99: give .* 63"),
    (["--gop", "-2"], "--gop -2"),
    (["--ids", "/nonexistent/ids.txt"], "--ids /nonexistent/ids.txt cannot be read"),
])
def test_a_run_that_fails_on_its_arguments_writes_nothing(src, tmp_path, argv, match):
    out = tmp_path / "new"
    with pytest.raises(UserError, match=match):
        prep.main(["--src", str(src), "--out", str(out), *argv])
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(src, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    refused(["--src", str(src), "--out", str(f)], "is a file, not a folder", tmp_path)


def test_a_presampled_jsonl_set_in_sub_folders_carries_its_record(own_set):
    from clip4clip_dali.data.dataset import load_split
    from clip4clip_dali.data.presampled import read_presampled, split_frames

    cfg_path, out = own_set
    assert set(read_presampled(out).videos) == {f"clips/a/{v}" for v in IDS}
    data = load_config(str(cfg_path), [f"data.data_path={out / 'dataset.jsonl'}"]).data
    split = load_split(data, "train")
    frames, presampled = split_frames(split, data)
    assert presampled and all(len(f) > 0 for f in frames)  # every clip found in the record
    # read with another sampling: refused, naming both values
    data.max_frames, data.image_resolution = 12, 224
    with pytest.raises(UserError, match="data.max_frames is 3 there but 12.*"
                                        "data.image_resolution is 32 there but 224"):
        split_frames(split, data)


def test_a_presampled_jsonl_set_that_fails_leaves_no_dataset_file(raw, tmp_path):
    root = tmp_path / "broken"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "v.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(200))
    data = write_lines(root / "d.jsonl", [{"video": "clips/v.webm", "caption": "a cat"}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "jsonl", "data_path": str(data),
                                            "max_frames": 3, "image_resolution": 32}}))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no video of .*d.jsonl was prepared"):
        prep.main(["--presample", "--config", str(cfg), "--out", str(out), "--workers", "1",
                   "-q", "--no-manifest"])
    assert not (out / "d.jsonl").exists()
