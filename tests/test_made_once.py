"""conftest.made_once: a fixture's folder made once a run, shared by the pytest-xdist workers."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import made_once


class Factory:
    """The one method of pytest's tmp_path_factory that made_once uses."""

    def __init__(self, base: Path):
        self.base = base

    def getbasetemp(self) -> Path:
        return self.base


def test_two_workers_share_one_make_and_a_failed_make_is_redone(tmp_path, monkeypatch):
    calls = []

    def make(folder: Path) -> None:
        calls.append(folder)
        (folder / "data.txt").write_text(str(len(calls)))

    run = tmp_path / "pytest-7"
    gw0, gw1 = Factory(run / "popen-gw0"), Factory(run / "popen-gw1")
    for f in (gw0, gw1):
        f.base.mkdir(parents=True)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = made_once(gw0, "model", make)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert made_once(gw1, "model", make) == first == run / "model"
    assert len(calls) == 1 and (first / "data.txt").read_text() == "1"

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half made")
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        made_once(gw0, "other", broken)
    again = made_once(gw1, "other", make)  # made anew, without the half-made file
    assert sorted(p.name for p in again.iterdir()) == ["data.txt"]


def test_without_xdist_the_folder_is_in_the_sessions_own_temp(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    folder = made_once(Factory(tmp_path), "data", lambda f: (f / "x").touch())
    assert folder == tmp_path / "data" and (folder / "x").is_file()
