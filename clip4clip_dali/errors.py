"""User-facing errors: the command-line entry points print these as one paragraph, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Something the user can fix (a path, a file, an option); the message says what and how."""


def report_and_exit(err: BaseException, code: int = 2) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(code)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a UserError ends the process with its message and exit code 2."""
    try:
        code = main()
    except UserError as err:
        report_and_exit(err)
    raise SystemExit(code or 0)
