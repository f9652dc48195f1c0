"""Malformed tables are refused with file, line and fix, by the same rules in every reader
(``clip4clip_dali/data/tables.py``): JSON Lines and CSV datasets, the spreadsheet converter,
MSR-VTT's annotations, MSVD's lists and captions pickle. Nothing is merged or dropped
silently, and a refused conversion writes nothing."""
from __future__ import annotations

import json
import pickle

import pytest

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.split import DatasetError

GOOD = "clips/a.webm"


def dataset(tmp_path, name: str, body: bytes | str):
    (tmp_path / "clips").mkdir(exist_ok=True)
    (tmp_path / GOOD).write_bytes(b"x")
    path = tmp_path / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return DataConfig(dataset="jsonl", data_path=str(path))


# case -> (file name, contents, what the message must say)
DATASETS = {
    "jsonl_null_caption": ("d.jsonl", f'{{"video": "{GOOD}", "caption": null}}\n',
                           r"line 1: caption is null"),
    "jsonl_number_video": ("d.jsonl", f'{{"video": "{GOOD}", "caption": "a"}}\n'
                                      '{"video": 7, "caption": "b"}\n', r"line 2: video is int 7"),
    "jsonl_not_utf8": ("d.jsonl", f'{{"video": "{GOOD}", "caption": "a"}}\n'.encode()
                       + b'{"video": "x", "caption": "caf\xe9"}\n',
                       r"line 2: bytes that are not UTF-8"),
    "csv_unclosed_quote": ("d.csv", f'video,caption\n{GOOD},"a cat\n{GOOD},a dog\n{GOOD},a cow\n',
                           r"line 2.*quot"),
    "csv_text_after_quote": ("d.csv", f'video,caption\n{GOOD},"a cat" jumps\n',
                             r"line 2: not valid CSV"),
    "jsonl_key_twice": ("d.jsonl", f'{{"video": "{GOOD}", "caption": "a", "caption": "b"}}\n',
                        r"line 1: not JSON \(key 'caption' given twice"),
    "csv_header_twice": ("d.csv", f"video,caption,caption\n{GOOD},a,b\n",
                         r"line 1: the header names 'caption' more than once"),
    "csv_not_utf8": ("d.csv", b"video,caption\n" + GOOD.encode() + b",caf\xe9\n",
                     r"line 2: bytes that are not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_malformed_dataset_files_are_refused_with_their_line(tmp_path, case):
    from clip4clip_dali.data.dataset import load_split

    name, body, match = DATASETS[case]
    cfg = dataset(tmp_path, name, body)
    with pytest.raises(DatasetError, match=match) as e:
        load_split(cfg, "train", probe=False)
    assert name in str(e.value)


def test_a_bom_and_crlf_are_read_as_text(tmp_path):
    from clip4clip_dali.data.jsonl import read_catalog

    cfg = dataset(tmp_path, "d.csv", "\ufeffvideo,caption\r\n" + GOOD + ',"a ""big"" cat"\r\n')
    assert read_catalog(cfg).captions == {GOOD: ['a "big" cat']}


CONVERTER = {
    "unclosed_quote": ('video,caption\na,"a cat\nb,a dog\n', "quot"),
    "no_video": ("video,caption\na,a cat\n,a dog\n", r"line 3: no clip in column 'video'"),
    "extra_cells": ("video,caption\na,a cat, sitting\n", r"line 2: 3 cells but the header"),
    "not_utf8": (b"video,caption\na,caf\xe9\n", r"line 2: bytes that are not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CONVERTER))
def test_the_converter_refuses_broken_spreadsheets_and_writes_nothing(tmp_path, case, capsys):
    from clip4clip_dali.data import jsonl

    body, match = CONVERTER[case]
    (tmp_path / "v").mkdir()
    for n in "ab":
        (tmp_path / "v" / f"{n}.mp4").write_bytes(b"x")
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(body.encode() if isinstance(body, str) else body)
    out = tmp_path / "out.jsonl"
    with pytest.raises(DatasetError, match=match):
        jsonl.main(["--csv", str(sheet), "--videos", str(tmp_path / "v"), "--out", str(out)])
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_the_converter_refuses_a_long_delimiter(tmp_path):
    from clip4clip_dali.data import jsonl

    (tmp_path / "v").mkdir()
    (tmp_path / "s.csv").write_text("video;caption\na;b\n")
    with pytest.raises(DatasetError, match="--delimiter ';;': give one character"):
        jsonl.main(["--csv", str(tmp_path / "s.csv"), "--videos", str(tmp_path / "v"),
                    "--out", str(tmp_path / "o.jsonl"), "--delimiter", ";;"])


def test_msrvtt_annotations_with_null_or_broken_quoting(tmp_path):
    from clip4clip_dali.data.msrvtt import read_csv, read_sentences

    doc = tmp_path / "MSRVTT_data.json"
    doc.write_text(json.dumps({"sentences": [{"video_id": "video1", "caption": "a"},
                                             {"video_id": "video2", "caption": None}]}))
    with pytest.raises(DatasetError, match=r"sentences\[1\]: caption is null"):
        read_sentences(doc)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text('key,vid_key,video_id,sentence\nr0,m0,video0,"a cat\nr1,m1,video1,a dog\n')
    with pytest.raises(DatasetError, match="test.csv, line 2"):
        read_csv(test_csv, ("video_id", "sentence"))


def test_msvd_lists_and_captions_that_are_not_utf8(tmp_path, caplog):
    from clip4clip_dali.data.msvd import load_captions, read_split_ids

    (tmp_path / "train_list.txt").write_bytes(b"vid1\nvid\xff2\n")
    with pytest.raises(DatasetError, match="train_list.txt, line 2: bytes that are not UTF-8"):
        read_split_ids(tmp_path, "train")
    # Python 2 pickles hold bytes: Latin-1 when not UTF-8, said by name
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"vid1": [[b"caf\xe9", "au"]]}))
    assert load_captions(tmp_path / "raw-captions.pkl") == {"vid1": ["caf\u00e9 au"]}
    assert "'vid1' holds bytes that are not UTF-8" in caplog.text


def test_the_converter_never_writes_over_a_file_unasked(tmp_path):
    from clip4clip_dali.data import jsonl

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    sheet = tmp_path / "s.csv"
    sheet.write_text("video,caption\na,a cat\n")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own lines\n")
    args = ["--csv", str(sheet), "--videos", str(tmp_path / "v")]
    with pytest.raises(DatasetError, match="is the spreadsheet itself"):
        jsonl.main(args + ["--out", str(sheet), "--replace"])
    with pytest.raises(DatasetError, match="exists; .* --replace"):
        jsonl.main(args + ["--out", str(mine)])
    with pytest.raises(DatasetError, match="is a folder"):
        jsonl.main(args + ["--out", str(tmp_path / "v")])
    assert sheet.read_text() == "video,caption\na,a cat\n" and mine.read_text() == "my own lines\n"
    assert jsonl.main(args + ["--out", str(mine), "--replace"]) == 0
    assert json.loads(mine.read_text())["caption"] == "a cat"
