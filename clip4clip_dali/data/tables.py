"""The tables users give (CSV files, JSON values), read by one set of rules in every reader:
JSON Lines/CSV datasets, the spreadsheet converter, MSR-VTT's annotations, MSVD's captions.

- Text is UTF-8; a byte-order mark (at the start or before a header cell) is dropped; bytes
  that are not UTF-8 are refused with their line.
- JSON objects may not name a key twice.
- CSV quoting is strict: a quote that is not closed, or text after a closing quote, is refused
  with its line (Python's lenient reader would swallow the following rows into one cell); so is
  a cell that runs over several lines (a quote closed many lines later), a row with more cells
  than the header, and a header naming a column twice. A row with fewer cells has the missing
  ones empty, as spreadsheets write them.
- A value that must be text (a caption, a video name) is refused when it is ``null``, a number,
  a list...: ``text_problem`` says what it is instead.
Every refusal names the file, the line and the fix.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from .split import DatasetError

BOM = "\ufeff"
EXTRA = "<extra cells>"


def read_text(path: Path, what: str) -> str:
    """The file as text (UTF-8, a leading BOM dropped); a DatasetError naming the line of the
    first byte that is not UTF-8, or why the file cannot be read."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist.") from None
    except OSError as e:
        raise DatasetError(f"{what} {path} cannot be read ({e.strerror or e}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: bytes that are not UTF-8 "
                           f"({data[e.start:e.start + 4]!r}); save the file as UTF-8 (in a "
                           f"spreadsheet: 'CSV UTF-8').") from None
    return text[1:] if text.startswith(BOM) else text


def read_csv(path: Path, required: tuple[str, ...] = (), delimiter: str = ",",
             what: str = "CSV file", extra_cells: str = "refuse"
             ) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line, {column: cell})]) of a CSV with a header row. Blank rows are skipped;
    cells are kept as written (not stripped). ``extra_cells="keep"`` puts the cells beyond the
    header under ``EXTRA`` instead of refusing them."""
    text = read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict]] = []
    header: Optional[list[str]] = None
    start = 1
    try:
        for cells in reader:
            end = reader.line_num
            if end - start > 0 and any("\n" in c or "\r" in c for c in cells):
                raise DatasetError(f"{path}, lines {start}-{end}: one cell runs over "
                                   f"{end - start + 1} lines (a quote that is not closed on "
                                   f"its line?); close the quote, or write the cell on one "
                                   f"line.")
            if header is None:
                header = [c.replace(BOM, "").strip() for c in cells]
                twice = sorted({h for h in header if h and header.count(h) > 1})
                if twice:
                    raise DatasetError(f"{path}, line {start}: the header names "
                                       f"{', '.join(map(repr, twice))} more than once; give "
                                       f"every column its own name.")
            elif any(c.strip() for c in cells):
                if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
                    if extra_cells != "keep":
                        raise DatasetError(f"{path}, line {start}: {len(cells)} cells but the "
                                           f"header names {len(header)} columns (a comma in an "
                                           f"unquoted cell?); quote cells holding "
                                           f"{delimiter!r}, or name the extra columns.")
                row = {h: (cells[k] if k < len(cells) else "") for k, h in enumerate(header)}
                if len(cells) > len(header) and extra_cells == "keep":
                    row[EXTRA] = delimiter.join(cells[len(header):])
                rows.append((start, row))
            start = end + 1
    except csv.Error as e:
        where = (f"line {start}" if reader.line_num <= start else
                 f"line {start} (a quote opened there runs to line {reader.line_num})")
        raise DatasetError(f"{path}, {where}: not valid CSV ({e}); a cell holding quotes "
                           f"must be quoted whole with its quotes doubled "
                           f"(\"a \"\"quoted\"\" word\").") from None
    if header is None or not any(header):
        raise DatasetError(f"{path} is empty; it needs a header row naming its columns "
                           f"({', '.join(required) or 'e.g. video,caption'}).")
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{path}: no column {', '.join(map(repr, missing))} in its header "
                           f"({', '.join(map(repr, header))}); expected "
                           f"{', '.join(map(repr, required))}.")
    return header, rows


def _no_repeated_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {', '.join(map(repr, twice))} given twice in one object")
    return dict(pairs)


def loads(text: str):
    """``json.loads``, refusing an object that names a key twice (the standard reader keeps the
    last value without a word)."""
    return json.loads(text, object_pairs_hook=_no_repeated_keys)


def text_problem(value) -> Optional[str]:
    """None when ``value`` is text, else what it is (for a message)."""
    if isinstance(value, str):
        return None
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r:.40}"


def require_text(value, path: Path, where: str, key: str) -> str:
    """``value`` when it is text; a DatasetError naming the file, the place and the fix."""
    why = text_problem(value)
    if why is not None:
        raise DatasetError(f"{path}, {where}: {key} is {why}, not text; write it as a string "
                           f"(in quotes), or remove the entry.")
    return value


def read_json(path: Path, what: str, fix: str):
    """The JSON document in ``path`` (the rules above); a DatasetError naming the file and
    ``fix`` when it is not JSON."""
    try:
        return loads(read_text(Path(path), what))
    except ValueError as e:
        raise DatasetError(f"{path} is not readable JSON ({e}); {fix}") from None
