"""What an output folder of ``prepare_msvd.py`` holds, and whether a run may write there.

A transcoded copy records its options in ``<out>/.clip4clip_prepared.json``; a pre-sampled set
its sampling in ``<out>/.clip4clip_presampled.json`` (``clip4clip_dali.data.presampled``).
Before anything is written, a run is refused when the folder holds the other mode's output,
the same mode made with other options (unless ``--force``: then everything is redone), or
files that no run of ours wrote (they may be the user's: never overwritten).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from clip4clip_dali.data.presampled import read_presampled, sampling_mismatch, sidecar_path
from clip4clip_dali.errors import UserError

RECORD = ".clip4clip_prepared.json"
# the transcode options that decide what the outputs hold
TRANSCODE_KEYS = ("short_side", "fps", "codec", "gop", "crf", "max_duration")


def transcode_options(opts) -> dict:
    return {k: getattr(opts, k) for k in TRANSCODE_KEYS}


def read_record(out_dir: Path) -> dict | None:
    path = out_dir / RECORD
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return dict(doc["options"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a readable record of prepared clips ({e}); choose "
                        f"another --out, or delete that folder if it is an old output of this "
                        f"tool.") from None


def write_record(out_dir: Path, opts) -> Path:
    path = out_dir / RECORD
    fd, tmp = tempfile.mkstemp(prefix=RECORD + ".", suffix=".tmp", dir=out_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"version": 1, "mode": "transcode", "options": transcode_options(opts)}, f,
                  indent=1)
    os.replace(tmp, path)
    return path


def _foreign_files(out_dir: Path) -> list[str]:
    try:
        # (hidden files are never outputs: video names starting with "." are not listed)
        return sorted(e.name for e in os.scandir(out_dir) if not e.name.startswith("."))
    except OSError as e:
        raise UserError(f"--out {out_dir} cannot be listed ({e.strerror}).") from None


def check_out_dir(out_dir: Path, opts, force: bool) -> dict:
    """Refuse (UserError) an output folder this run must not write into; returns the records of
    an earlier pre-sampled run to keep (same sampling, same codec), else {}."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; choose a folder (new or "
                        f"made by this tool).")
    if not out_dir.exists():
        return {}
    presampled = read_presampled(out_dir) if sidecar_path(out_dir).exists() else None
    transcoded = read_record(out_dir)
    mode = "--presample" if opts.presample is not None else "transcode"
    if opts.presample is None and presampled is not None:
        raise UserError(f"--out {out_dir} holds clips pre-sampled with "
                        f"{presampled.sampling.describe()} (--presample); transcoded copies "
                        f"written there would replace them under the same record. Choose "
                        f"another --out.")
    if opts.presample is not None and transcoded is not None:
        raise UserError(f"--out {out_dir} holds transcoded copies (no --presample); pre-sampled "
                        f"clips written there would replace them. Choose another --out.")
    if presampled is None and transcoded is None:
        foreign = _foreign_files(out_dir)
        if foreign:
            raise UserError(f"--out {out_dir} is not empty and holds no record of this tool "
                            f"({len(foreign)} entries, e.g. {', '.join(foreign[:3])}): its files "
                            f"may be yours and would be overwritten. Choose a new or empty "
                            f"folder (a {mode} run into it can then be resumed).")
        return {}
    if transcoded is not None:
        now = transcode_options(opts)
        diff = [f"--{k.replace('_', '-')} {transcoded.get(k)!r} there but {now[k]!r} now"
                for k in TRANSCODE_KEYS if transcoded.get(k) != now[k]]
        if diff and not force:
            raise UserError(f"--out {out_dir} holds copies transcoded with other options "
                            f"({'; '.join(diff)}); choose another --out, or pass --force to "
                            f"redo them all.")
        return {}
    diff = sampling_mismatch(presampled.sampling, opts.presample)
    if presampled.codec != opts.codec:
        diff.append(f"the codec is {presampled.codec} there but {opts.codec} now")
    if diff and not force:
        why = "; ".join(diff).replace("config", "flags")
        raise UserError(f"{out_dir} already holds clips pre-sampled with "
                        f"{presampled.sampling.describe()} ({why}); choose another --out, or "
                        f"pass --force to redo them all.")
    return {} if diff else presampled.videos

