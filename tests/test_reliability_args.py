"""A broken-input matrix for train, evaluate, stats and the converter (prepare's is in
test_reliability_prepare.py): each bad value is refused with one message naming the argument
or file and the fix (a UserError, printed without traceback by the CLIs), and no file a user
owns is changed."""
from __future__ import annotations

import importlib

import pytest

from clip4clip_dali.errors import UserError
from reliability_helpers import DEMO, old_mtime, snapshot

pytest_plugins = ["reliability_fixtures"]


@pytest.fixture()
def files(tmp_path):
    """A user's files: a text file posing as a checkpoint or an output folder, a config that is
    not UTF-8, a folder."""
    (tmp_path / "notes.pt").write_text("my notes, not a checkpoint")
    (tmp_path / "latin1.yaml").write_bytes(b"data:\n  data_path: caf\xe9\n")
    (tmp_path / "folder").mkdir()
    for p in tmp_path.rglob("*"):
        if p.is_file():
            old_mtime(p)
    return tmp_path


def demo(*sets: str) -> list[str]:
    return ["--config", str(DEMO), *[a for s in sets for a in ("--set", s)]]


# (module, argv with {t} for the files' folder, what the message must say)
ROWS = [
    ("clip4clip_dali.train", ["--config", "{t}/latin1.yaml"], "is not UTF-8 text"),
    ("clip4clip_dali.train", ["--config", "{t}/missing.yaml"], "does not exist"),
    ("clip4clip_dali.train", demo("data.num_workers=-1"), "data.num_workers = -1 is out of range"),
    ("clip4clip_dali.train", demo("data.max_frames=100000000"), "between 1 and 1024"),
    ("clip4clip_dali.train", demo("data.image_resolution=100000"), "between 8 and 4096"),
    ("clip4clip_dali.train", demo("train.batch_size=0"), "train.batch_size = 0"),
    ("clip4clip_dali.train", demo("train.output_dir={t}/notes.pt"),
     "train.output_dir = .*notes.pt is a file, not a folder"),
    ("clip4clip_dali.train", demo("train.epochs"), "expected key=value"),
    ("clip4clip_dali.evaluate", ["--checkpoint", "{t}/notes.pt"],
     r"notes.pt could not be loaded \(not a PyTorch tensor file"),
    ("clip4clip_dali.evaluate", ["--checkpoint", "{t}/folder"], "folder is a folder"),
    ("clip4clip_dali.evaluate", ["--checkpoint", "{t}/none.pt"], "none.pt does not exist"),
    ("clip4clip_dali.data.stats", demo("data.data_path={t}/absent"), "absent does not exist"),
    ("clip4clip_dali.data.stats", ["--config", "{t}/latin1.yaml"], "is not UTF-8 text"),
    ("clip4clip_dali.data.jsonl", ["--csv", "{t}/notes.pt", "--videos", "{t}/absent",
                                   "--out", "{t}/o.jsonl"], "absent is not a folder"),
    ("clip4clip_dali.data.jsonl", ["--csv", "{t}/folder", "--videos", "{t}/folder",
                                   "--out", "{t}/o.jsonl"], "folder cannot be read"),
]


@pytest.mark.parametrize("module, argv, match", ROWS,
                         ids=[f"{m.rsplit('.', 1)[1]}-{a[-1].rsplit('/', 1)[-1]}"
                              for m, a, _ in ROWS])
def test_bad_arguments_are_refused_by_name_and_nothing_is_changed(files, module, argv, match):
    before = snapshot(files)
    main = importlib.import_module(module).main
    with pytest.raises(UserError, match=match):
        main([a.replace("{t}", str(files)) for a in argv])
    assert snapshot(files) == before


def test_evaluate_with_an_output_that_is_a_file(tiny_checkpoint, files):
    from clip4clip_dali.evaluate import main

    before = snapshot(files)
    with pytest.raises(UserError, match="--out .*notes.pt is a file, not a folder"):
        main(["--checkpoint", str(tiny_checkpoint), "--out", str(files / "notes.pt")])
    assert snapshot(files) == before
