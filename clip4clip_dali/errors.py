"""User-facing errors: the command-line entry points print these as one paragraph, no traceback."""
from __future__ import annotations

import gc
import sys
from typing import Callable


class UserError(Exception):
    """Something the user can fix (a path, a file, an option); the message says what and how."""


def exit_code(main: Callable[[], int | None]) -> int:
    """``main()``'s exit code as a command's: a UserError is printed as one ``error:`` paragraph
    (no traceback) and gives 2."""
    try:
        return main() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command's ``main`` and end the process with its exit code."""
    code = exit_code(main)
    skip_the_last_collection()
    raise SystemExit(code)


def skip_the_last_collection() -> None:
    """Spare the process's exit the interpreter's last garbage collection, which walks every
    object torch and open_clip made at import (about 1 s of CPU per command, measured on the
    2-core CI machine). Frozen objects are still freed by reference counting and atexit
    handlers still run; only objects in reference cycles are left to the operating system,
    and the commands close what they write (files, loaders, process groups) themselves."""
    gc.freeze()
