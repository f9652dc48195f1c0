import json
import logging
import pickle
import subprocess
import sys

import pytest

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.msvd import (DatasetError, dataset_stats, find_videos, load_captions,
                                      load_split, read_split_ids)
from conftest import REALDATA, require_realdata, write_clip


def _layout(tmp_path, captions, splits, videos=()):
    data = tmp_path / "data"
    vids = tmp_path / "videos"
    data.mkdir()
    vids.mkdir()
    (data / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    for split in ("train", "val", "test"):
        (data / f"{split}_list.txt").write_text("\n".join(splits.get(split, [])))
    for vid in videos:
        write_clip(vids / f"{vid}.webm", frames=10, fps=10)
    return data, vids


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unpickler_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"v": [["a", "b"]], "x": _Evil(str(marker))}))
    with pytest.raises(DatasetError, match="not a plain captions pickle"):
        load_captions(path)
    assert not marker.exists()
    os_payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path.write_bytes(os_payload)
    with pytest.raises(DatasetError, match="refusing to load os.system|posix.system"):
        load_captions(path)
    assert not marker.exists()


def test_captions_tokens_joined_and_strings_accepted(tmp_path, caplog):
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps({"a": [["a", "man", "runs"], "a  dog barks", []],
                                   b"b": [("x", "y")]}))
    with caplog.at_level(logging.WARNING):
        caps = load_captions(path)
    assert caps == {"a": ["a man runs", "a dog barks"], "b": ["x y"]}
    assert "empty caption" in caplog.text


@pytest.mark.parametrize("payload,match", [
    ([1, 2], "expected a dict"),
    ({"a": "not a list"}, "expected a list of captions"),
    ({"a": [[1, 2]]}, "tokens must be strings"),
    ({1: [["a"]]}, "must be strings"),
])
def test_malformed_captions(tmp_path, payload, match):
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DatasetError, match=match):
        load_captions(path)


def test_corrupt_and_missing_pickle(tmp_path):
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps({"a": [["x"]]})[:-5])
    with pytest.raises(DatasetError, match="corrupt"):
        load_captions(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_captions(tmp_path / "nope.pkl")


def test_split_ids_dedup_and_missing_file(tmp_path, caplog):
    (tmp_path / "train_list.txt").write_text("a\nb\n\na\nc")  # no trailing newline, like MSVD's
    with caplog.at_level(logging.WARNING):
        assert read_split_ids(tmp_path, "train") == ["a", "b", "c"]
    assert "more than once" in caplog.text
    with pytest.raises(DatasetError, match="val_list.txt does not exist"):
        read_split_ids(tmp_path, "val")


def test_find_videos_any_extension_nested(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.avi", "sub/b.mp4", "c.tar.webm", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(find_videos(tmp_path)) == ["a", "b", "c.tar"]
    with pytest.raises(DatasetError, match="does not exist"):
        find_videos(tmp_path / "missing")


def test_real_msvd_annotation_stats():
    require_realdata()
    stats = dataset_stats(REALDATA / "msvd_annotations")
    assert [stats[s]["videos_listed"] for s in ("train", "val", "test")] == [1200, 100, 670]
    assert [stats[s]["captions"] for s in ("train", "val", "test")] == [48774, 4290, 27763]
    assert stats["train"]["pairs"] == 48774


def test_stats_cli_on_mini_msvd_and_broken_layout(tmp_path):
    root = require_realdata() / "mini_msvd"
    out = subprocess.run([sys.executable, "-m", "clip4clip_dali.data.msvd", "--data-path",
                          str(root / "msvd_data"), "--features-path", str(root / "MSVD_Videos")],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    assert stats["train"]["videos_found"] == 7 and stats["test"]["videos_found"] == 5
    assert stats["train"]["videos_missing"] == 0
    bad = subprocess.run([sys.executable, "-m", "clip4clip_dali.data.msvd", "--data-path",
                          str(root / "msvd_data"), "--features-path", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no listed video was found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_load_split_reports_missing_and_builds_pairs(tmp_path, caplog):
    captions = {"v1": [["a", "b"], ["c"]], "v2": [["d"]], "v3": [["e"]], "v4": []}
    data, vids = _layout(tmp_path, captions, {"train": ["v1", "v2", "v3", "v4", "v5"]},
                         videos=["v1", "v2", "v4"])
    cfg = DataConfig(data_path=str(data), features_path=str(vids))
    with caplog.at_level(logging.WARNING):
        split = load_split(cfg, "train")
    assert "3 of 5 listed videos skipped" in caplog.text
    assert "2 with no video" in caplog.text and "2 with no captions" in caplog.text
    assert split.video_ids == ["v1", "v2"]
    assert split.captions == ["a b", "c", "d"]
    assert split.caption_video.tolist() == [0, 0, 1]
    assert split.video_info[0].frames == 10


def test_load_split_drops_broken_video_and_errors_when_nothing_left(tmp_path, caplog):
    data, vids = _layout(tmp_path, {"v1": [["a"]], "v2": [["b"]]}, {"train": ["v1", "v2"]},
                         videos=["v1"])
    (vids / "v2.mp4").write_bytes(b"\x00garbage" * 100)
    cfg = DataConfig(data_path=str(data), features_path=str(vids))
    with caplog.at_level(logging.WARNING):
        split = load_split(cfg, "train")
    assert split.video_ids == ["v1"] and "v2.mp4" in caplog.text
    (vids / "v1.webm").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="every video is unreadable"):
        load_split(cfg, "train")


def test_load_split_empty_split(tmp_path):
    data, vids = _layout(tmp_path, {"v1": [["a"]]}, {"train": ["v1"]}, videos=["v1"])
    cfg = DataConfig(data_path=str(data), features_path=str(vids))
    with pytest.raises(DatasetError, match="lists no videos"):
        load_split(cfg, "val")
    with pytest.raises(DatasetError, match="data folder"):
        load_split(DataConfig(data_path=str(tmp_path / "x"), features_path=str(vids)), "train")
