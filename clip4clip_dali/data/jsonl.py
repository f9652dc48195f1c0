"""A team's own clips: one line per caption, in JSON Lines (``.jsonl``) or CSV (``.csv``).

    {"video": "clips/cat.mp4", "caption": "a cat jumps on a table", "split": "train"}

``video``: the file, relative to the dataset file's folder (any container; absolute paths work
too). ``caption``: one caption; a video has as many lines as captions. ``split`` (optional):
any name (``train``, ``val``, ``test`` are what the configs read); videos without one are split
by video, seeded (``data.jsonl_val_fraction``, ``jsonl_test_fraction``, ``jsonl_split_seed``).
``video_id`` (optional): the video's name in results (default: ``video`` as written).
``start`` and ``end`` (optional, together): the caption's moment in the video, in seconds
(numbers; sampled in whole seconds by the original's rules, ``sampling.normalise_window``);
each (video, moment) is then its own entry in training and evaluation. A CSV has
the same names as header columns. ``data.data_path`` is the file; training reads one sample per
(video, caption).

The whole file is checked up front and the problems come in one report (counts and the first
lines of each). Refused (nothing is read until they are fixed): lines that are not a JSON
object, unknown keys (a misspelt key would silently lose data), a missing ``video`` or
``caption`` key, non-text values, a video in two splits, one ``video_id`` for two files or two
for one file, a bad ``start``/``end``. Skipped with a warning: empty captions, duplicate lines
(same video, caption and moment; the first is kept), videos whose file is missing (as MSVD's
reader skips them); videos that cannot be decoded are skipped when the split is loaded.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .sampling import normalise_window
from .split import (DatasetError, SplitListing, VideoTextSplit, clean_caption,
                    default_manifest_path, load_listing)
from .tables import loads, read_csv, read_text, text_problem

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger("clip4clip_dali")

KEYS = ("video", "caption", "split", "video_id", "start", "end")
TIMES = ("start", "end")
REQUIRED = ("video", "caption")
EXAMPLES = 3

# Problem kinds: (refuse?, what the count counts)
PROBLEMS = {
    "not_object": (True, "line(s) that are not a JSON object"),
    "unknown_keys": (True, f"line(s) with unknown keys (allowed: {', '.join(KEYS)})"),
    "missing_key": (True, "line(s) without a 'video' or 'caption'"),
    "not_text": (True, "line(s) with a value that is not text"),
    "bad_time": (True, "line(s) with a start/end that is not a time in seconds (both, numbers "
                       "from 0, start <= end)"),
    "two_splits": (True, "video(s) in two splits (one video must stay in one split)"),
    "id_two_files": (True, "video_id(s) naming two different files"),
    "file_two_ids": (True, "file(s) given two different video_ids"),
    "empty_caption": (False, "line(s) with an empty caption: skipped"),
    "duplicate": (False, "duplicate line(s) (same video, caption and moment): the first kept"),
    "missing_file": (False, "video(s) whose file is missing: their lines skipped"),
}


@dataclass
class Line:
    number: int
    video: str
    caption: str
    split: Optional[str]
    video_id: Optional[str]
    window: Optional[tuple[int, int]] = None


@dataclass
class Report:
    """Problems by kind: count and the first examples."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    @property
    def refused(self) -> bool:
        return any(PROBLEMS[k][0] for k in self.counts)

    def text(self, path: Path, n_lines: int) -> str:
        rows = [f"{path}: {n_lines} line(s) read;"]
        for kind, (refuse, what) in PROBLEMS.items():
            if self.counts.get(kind):
                rows.append(f"  {'REFUSED' if refuse else 'skipped'}: {self.counts[kind]} "
                            f"{what} -- e.g. {'; '.join(self.examples[kind])}")
        return "\n".join(rows)


def _seconds(value) -> Optional[float]:
    """A time in seconds from a JSON number or a CSV cell; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _window(raw: dict, number: int, report: Report) -> tuple[bool, Optional[tuple[int, int]]]:
    """(ok, the line's window or None); a bad start/end goes to ``report``."""
    given = {k: raw.get(k) for k in TIMES if raw.get(k) is not None}
    if not given:
        return True, None
    times = {k: _seconds(v) for k, v in given.items()}
    why = None
    if len(given) == 1:
        why = f"{next(iter(given))} without {'end' if 'start' in given else 'start'}"
    elif None in times.values():
        k = next(k for k, t in times.items() if t is None)
        why = f"{k} is {given[k]!r:.40}, not a number of seconds from 0"
    elif times["end"] < times["start"]:
        why = f"end {times['end']:g} s is before start {times['start']:g} s"
    if why is not None:
        report.add("bad_time", f"line {number}: {why}")
        return False, None
    return True, normalise_window(times["start"], times["end"])


def _value(raw: dict, key: str, number: int, report: Report) -> Optional[str]:
    v = raw.get(key)
    if v is None and key not in REQUIRED:  # an optional key written as null: not given
        return None
    why = text_problem(v)
    if why is None:
        return v
    report.add("not_text", f"line {number}: {key} is {why}")
    return None


def parse_records(path: Path, records, report: Report) -> list[Line]:
    """Lines from (line number, dict or parse error) pairs; malformed ones go to ``report``."""
    lines = []
    for number, raw in records:
        if not isinstance(raw, dict):
            report.add("not_object", f"line {number}: {raw}")
            continue
        unknown = sorted(set(raw) - set(KEYS))
        if unknown:
            report.add("unknown_keys", f"line {number}: {', '.join(map(repr, unknown))}")
            continue
        if any(k not in raw for k in REQUIRED) or not raw.get("video"):
            report.add("missing_key", f"line {number}: keys {', '.join(sorted(raw)) or 'none'}")
            continue
        before = report.counts.get("not_text", 0)
        vals = {k: _value(raw, k, number, report) for k in KEYS if k not in TIMES}
        if report.counts.get("not_text", 0) > before:
            continue
        ok, window = _window(raw, number, report)
        if not ok:
            continue
        lines.append(Line(number, vals["video"], clean_caption(vals["caption"]),
                          vals["split"].strip() or None if vals["split"] else None,
                          vals["video_id"].strip() or None if vals["video_id"] else None,
                          window))
    return lines


def read_records(path: Path):
    """(line number, dict | error text) for each record of a .jsonl or .csv file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        _header, rows = read_csv(path, what="dataset file", extra_cells="keep")
        # (spreadsheets often export unnamed empty columns: those are no key)
        return [(line, {k: (v if v != "" else None) for k, v in row.items() if k or v})
                for line, row in rows]
    if suffix not in (".jsonl", ".ndjson", ".json"):
        raise DatasetError(f"{path}: data.dataset=jsonl reads a .jsonl (JSON Lines) or a "
                           f".csv file, not {suffix or 'a file without extension'}.")
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist; set data.data_path to the "
                           f".jsonl or .csv file (one line per caption).")
    out = []
    for number, text in enumerate(read_text(path, "dataset file").splitlines(), 1):
        if not text.strip():
            continue
        try:
            out.append((number, loads(text)))
        except ValueError as e:
            out.append((number, f"not JSON ({e})"))
    return out


@dataclass
class Catalog:
    """The validated file: videos (by id, in order of first appearance), their files, captions
    and splits."""

    path: Path
    order: list[str]
    files: dict[str, Path]
    found: dict[str, Path]
    captions: dict[str, list[str]]
    split_of: dict[str, str]
    windows: dict[str, list] = field(default_factory=dict)  # per caption; empty: none timed

    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.split_of[v] for v in self.order))


def _assign_splits(ids: list[str], data_cfg: "DataConfig") -> dict[str, str]:
    """Seeded split of videos that have no split: test and val fractions, the rest train
    (at least one video in a split with a non-zero fraction when there are 3 or more)."""
    ids = sorted(ids)
    n = len(ids)
    order = np.random.default_rng(data_cfg.jsonl_split_seed).permutation(n)

    def count(frac: float) -> int:
        k = int(round(n * frac))
        return max(k, 1) if frac > 0 and n >= 3 else k

    n_test, n_val = count(data_cfg.jsonl_test_fraction), count(data_cfg.jsonl_val_fraction)
    names = [data_cfg.test_split] * n_test + [data_cfg.val_split] * n_val
    names += [data_cfg.train_split] * (n - len(names))
    return {ids[int(j)]: names[k] for k, j in enumerate(order)}


def validate(path: Path, lines: list[Line], report: Report, data_cfg: "DataConfig") -> Catalog:
    root = path.parent
    files: dict[str, Path] = {}
    id_of_file: dict[str, str] = {}
    order: list[str] = []
    captions: dict[str, list[str]] = defaultdict(list)
    windows: dict[str, list] = defaultdict(list)
    splits: dict[str, dict[str, int]] = defaultdict(dict)  # id -> split -> first line
    seen: set[tuple[str, str]] = set()
    for ln in lines:
        file = Path(os.path.normpath(root / ln.video))
        key = str(file)
        vid = ln.video_id or Path(os.path.normpath(ln.video)).as_posix()
        if vid in files and files[vid] != file:
            report.add("id_two_files", f"line {ln.number}: {vid!r} is {ln.video} and "
                                       f"{files[vid]}")
            continue
        if key in id_of_file and id_of_file[key] != vid:
            report.add("file_two_ids", f"line {ln.number}: {ln.video} is {vid!r} and "
                                       f"{id_of_file[key]!r}")
            continue
        if vid not in files:
            files[vid], id_of_file[key] = file, vid
            order.append(vid)
        if ln.split:
            splits[vid].setdefault(ln.split, ln.number)
        if not ln.caption:
            report.add("empty_caption", f"line {ln.number}")
            continue
        if (vid, ln.caption, ln.window) in seen:
            report.add("duplicate", f"line {ln.number}")
            continue
        seen.add((vid, ln.caption, ln.window))
        captions[vid].append(ln.caption)
        windows[vid].append(ln.window)
    for vid, where in splits.items():
        if len(where) > 1:
            report.add("two_splits", f"{vid!r}: " + ", ".join(
                f"{s} (line {n})" for s, n in where.items()))
    split_of = {v: next(iter(splits[v])) for v in order if splits.get(v)}
    split_of.update(_assign_splits([v for v in order if v not in split_of], data_cfg))
    found = {}
    for vid in order:
        if files[vid].is_file():
            found[vid] = files[vid]
        else:
            report.add("missing_file", f"{files[vid]}")
    timed = any(w is not None for ws in windows.values() for w in ws)
    return Catalog(path, order, files, found, dict(captions), split_of,
                   dict(windows) if timed else {})


_CACHE: dict[tuple, Catalog] = {}


def read_catalog(data_cfg: "DataConfig") -> Catalog:
    """The validated dataset file of ``data_cfg`` (read and reported once per process while the
    file and the split settings stay the same)."""
    path = Path(data_cfg.data_path)
    if path.is_dir():
        raise DatasetError(f"data.data_path {path} is a folder; with data.dataset=jsonl it must "
                           f"be the .jsonl or .csv file (one line per caption).")
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    key = (str(path.resolve()), stamp, data_cfg.jsonl_val_fraction,
           data_cfg.jsonl_test_fraction, data_cfg.jsonl_split_seed, data_cfg.train_split,
           data_cfg.val_split, data_cfg.test_split)
    if key in _CACHE:
        return _CACHE[key]
    report = Report()
    records = read_records(path)
    if not records:
        raise DatasetError(f"{path} holds no lines; write one line per caption, e.g. "
                           f'{{"video": "clips/a.mp4", "caption": "a cat jumps"}}.')
    catalog = validate(path, parse_records(path, records, report), report, data_cfg)
    if report.refused:
        raise DatasetError(report.text(path, len(records)) + "\nNothing was read: fix the lines "
                           "marked REFUSED (README: Datasets) and run again.")
    if report.counts:
        log.warning("%s", report.text(path, len(records)))
    if not catalog.order:
        raise DatasetError(f"{path}: no usable line.")
    _CACHE[key] = catalog
    return catalog


def split_names(data_cfg: "DataConfig") -> list[str]:
    return read_catalog(data_cfg).splits()


def list_split(data_cfg: "DataConfig", split: str) -> SplitListing:
    """What ``split`` lists (no video is opened)."""
    cat = read_catalog(data_cfg)
    listed = [v for v in cat.order if cat.split_of[v] == split]
    if not listed:
        raise DatasetError(f"{cat.path} has no video in split {split!r} (its splits: "
                           f"{', '.join(cat.splits())}); give lines that split, or set "
                           f"data.train_split / val_split / test_split (or "
                           f"train.eval_every_epoch=false, eval.test_at_end=false).")
    return SplitListing(split, listed, {v: cat.found[v] for v in listed if v in cat.found},
                        {v: cat.captions.get(v, []) for v in listed},
                        default_manifest_path(cat.path.parent),
                        f"(paths relative to {cat.path.parent})", str(cat.path),
                        windows={v: cat.windows[v] for v in listed if v in cat.windows})


def load_split(data_cfg: "DataConfig", split: str, probe: bool = True) -> VideoTextSplit:
    """Read one split, check its videos (probed once, cached in the manifest), drop the broken."""
    return load_listing(list_split(data_cfg, split), data_cfg, probe)


def write_prepared(data_cfg: "DataConfig", out_dir: str | Path,
                   outputs: dict[str, str | Path]) -> Path:
    """``<out_dir>/<name>.jsonl``: the dataset's lines pointing at the prepared copies
    (``outputs``: video id -> file), with each video's id and split written out, so the
    prepared dataset keeps the ids and the (possibly drawn) splits of the original."""
    cat = read_catalog(data_cfg)
    out_dir = Path(out_dir)
    path = out_dir / f"{cat.path.stem}.jsonl"
    if not any(vid in outputs for vid in cat.order):
        raise DatasetError(f"no video of {cat.path} was prepared (see the failures above), so "
                           f"no dataset file was written to {out_dir}.")
    if path.exists() and path.resolve() == cat.path.resolve():
        raise DatasetError(f"{path} is the dataset being prepared; choose another --out.")
    lines = []
    for vid in cat.order:
        if vid not in outputs:
            continue
        rel = Path(os.path.relpath(os.path.abspath(outputs[vid]), os.path.abspath(out_dir)))
        caps = cat.captions.get(vid, [])
        for cap, window in zip(caps, cat.windows.get(vid) or [None] * len(caps)):
            rec = {"video": rel.as_posix(), "caption": cap, "split": cat.split_of[vid],
                   "video_id": vid}
            if window is not None:  # whole seconds: normalise_window gives them back as is
                rec["start"], rec["end"] = window
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ spreadsheet -> JSON Lines

def convert_spreadsheet(csv_path: str | Path, videos_dir: str | Path, out: str | Path,
                        video_column: str = "video", caption_columns: tuple[str, ...] = ("caption",),
                        split_column: Optional[str] = None, delimiter: str = ",",
                        replace: bool = False) -> dict:
    """Write ``out`` (JSON Lines) from a spreadsheet saved as CSV: one line per non-empty
    caption cell. A video cell names a file in ``videos_dir`` (a relative path, or a name
    without extension matched to the file of that name). Returns counts."""
    from .split import find_videos

    csv_path, videos_dir, out = Path(csv_path), Path(videos_dir), Path(out)
    if not videos_dir.is_dir():
        raise DatasetError(f"{videos_dir} is not a folder; pass the folder of clips as --videos.")
    if len(delimiter) != 1:
        raise DatasetError(f"--delimiter {delimiter!r}: give one character (e.g. ';' or a tab).")
    wanted = [video_column, *caption_columns] + ([split_column] if split_column else [])
    try:
        _header, numbered = read_csv(csv_path, tuple(wanted), delimiter, "spreadsheet")
    except DatasetError as e:
        if "no column" not in str(e):
            raise
        raise DatasetError(f"{e} Name them with --video-column, --caption-column, "
                           f"--split-column.") from None
    rows = []
    for line, row in numbered:
        if not (row.get(video_column) or "").strip():
            raise DatasetError(f"{csv_path}, line {line}: no clip in column {video_column!r} "
                               f"(cells: {', '.join(v for v in row.values() if v)[:80]}); "
                               f"name the clip, or delete the row.")
        rows.append(row)
    if out.is_dir():
        raise DatasetError(f"--out {out} is a folder; give the .jsonl file to write.")
    if out.exists() and out.resolve() == csv_path.resolve():
        raise DatasetError(f"--out {out} is the spreadsheet itself; give a new file name.")
    if out.exists() and not replace:
        raise DatasetError(f"--out {out} exists; give a new file name, or pass --replace to "
                           f"write over it.")
    by_stem = None
    not_found: list[str] = []
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            name = (row.get(video_column) or "").strip()
            if not name:
                continue
            file = videos_dir / name
            if not file.is_file():
                by_stem = find_videos(videos_dir) if by_stem is None else by_stem
                file = by_stem.get(Path(name).stem, by_stem.get(name, file))
                if not file.is_file():
                    not_found.append(name)
            rel = Path(os.path.relpath(os.path.abspath(file), os.path.abspath(out.parent)))
            for col in caption_columns:
                caption = clean_caption(row.get(col))
                if not caption:
                    continue
                rec = {"video": rel.as_posix(), "caption": caption}
                split = (row.get(split_column) or "").strip() if split_column else ""
                if split:
                    rec["split"] = split
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                written += 1
    os.replace(tmp, out)
    return {"rows": len(rows), "lines": written, "videos_not_found": len(not_found),
            "not_found_examples": not_found[:EXAMPLES]}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m clip4clip_dali.data.jsonl",
        description="Turn a folder of clips and a captions spreadsheet (saved as CSV) into the "
                    "JSON Lines dataset file (one line per caption).")
    p.add_argument("--csv", required=True, help="the spreadsheet, saved as CSV with a header")
    p.add_argument("--videos", required=True, help="the folder of clips")
    p.add_argument("--out", required=True, help="the .jsonl to write (paths relative to it)")
    p.add_argument("--video-column", default="video", help="column naming the clip file")
    p.add_argument("--caption-column", action="append", default=None,
                   help="caption column (repeat for several captions a row; default caption)")
    p.add_argument("--split-column", default=None, help="column with train/val/test (optional)")
    p.add_argument("--delimiter", default=",", help="cell separator (default ,)")
    p.add_argument("--replace", action="store_true", help="write over an existing --out")
    args = p.parse_args(argv)
    s = convert_spreadsheet(args.csv, args.videos, args.out, args.video_column,
                            tuple(args.caption_column or ["caption"]), args.split_column,
                            args.delimiter, args.replace)
    print(f"wrote {s['lines']} caption line(s) from {s['rows']} row(s) to {args.out}")
    if s["videos_not_found"]:
        print(f"{s['videos_not_found']} row(s) name a clip not found in {args.videos} (e.g. "
              f"{', '.join(s['not_found_examples'])}); training skips them.")
    print(f"check it: python -m clip4clip_dali.data.stats --config <your config> "
          f"(data.dataset: jsonl, data.data_path: {args.out})")
    return 0


if __name__ == "__main__":
    from ..errors import run_cli

    run_cli(main)
