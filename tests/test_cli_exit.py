"""How every command ends (errors.run_cli): main's exit code, a UserError as one ``error:``
paragraph with code 2, and the heap frozen so the interpreter's exit skips its last full
collection (about 1 s of CPU a command once torch and open_clip are loaded)."""
from __future__ import annotations

import gc

import pytest

from clip4clip_dali.errors import UserError, exit_code, run_cli


@pytest.fixture
def unfreeze():
    yield
    gc.unfreeze()  # this test process goes on: its objects are collectable again


def test_run_cli_exits_with_mains_code_and_freezes_the_heap(unfreeze):
    gc.unfreeze()
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: 3)
    assert e.value.code == 3 and gc.get_freeze_count() > 0


def test_a_user_error_is_one_line_and_code_2(unfreeze, capsys):
    def main():
        raise UserError("data.data_path = /nowhere does not exist; pass the folder.")

    with pytest.raises(SystemExit) as e:
        run_cli(main)
    assert e.value.code == 2 and gc.get_freeze_count() > 0
    err = capsys.readouterr().err
    assert err == "error: data.data_path = /nowhere does not exist; pass the folder.\n"


def test_exit_code_runs_main_in_this_process_without_freezing(capsys):
    gc.unfreeze()
    assert exit_code(lambda: None) == 0
    assert exit_code(lambda: (_ for _ in ()).throw(UserError("no"))) == 2
    assert capsys.readouterr().err == "error: no\n" and gc.get_freeze_count() == 0
