"""An index folder on disk: records in SQLite, vectors in memory-mapped float16 part files.

    INDEX_DIR/index.sqlite         (WAL) meta (format, kind, root, model, row layout, ANN,
                                   window), one row per video, or per time window of a video
                                   in a moment index (``rid``: a stable record id, never
                                   reused), the unreadable files, the vector parts and their
                                   CRC-32, the files the index wrote
    INDEX_DIR/config.yaml          the config of the model (sampling, resolution, heads)
    INDEX_DIR/vectors/part-N.f16   the vectors of one run, row after row: loose heads an (D,)
                                   float16 L2-normalised embedding; tightTransf (T, D) float16
                                   frame features then a (T,) uint8 frame mask
    INDEX_DIR/ann-N.faiss          the approximate index (optional), ids = record ids
    INDEX_DIR/thumbs/<key>.jpg     a small thumbnail per video
    INDEX_DIR/parts/               staged vectors of an unfinished run (resume)
    INDEX_DIR/.lock                held (flock) by the one ``index`` run writing the folder

A record whose clip is a member of a tar shard (``index --split`` of a ``data.dataset: shards``
set) has a ``members`` row too: the shard (local path or ``s3://`` URL), the member's offset and
size, and the shard's size and time (S3: ETag) when it was indexed, so a rewritten shard is
never served. Its ``path`` is ``<shard>:<member>`` under the manifest's folder, its ``mtime_ns``
a digest of the shard's size, time and the member's offset. An index without the table (older
versions) holds files only.

A run appends one part and changes the records in one transaction that names it, after the
part is written and synced: a reader's snapshot only ever names complete parts. Opening reads
the meta rows only; records, parts and checksums are read when a search needs them.

Format 2 indexes whole videos. Format 3 (``index --window W --stride S``, meta ``window``)
indexes overlapping windows: several rows per file, each with its ``win_start``/``win_end`` in
seconds; older versions refuse it rather than show windows as videos. Both formats are read;
a format-2 store made before windows has no window columns and reads them as NULL.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError

FORMAT = 2
WINDOWED_FORMAT = 3
DB_FILE = "index.sqlite"
LEGACY_FILE = "index.json"
CONFIG_FILE = "config.yaml"
VECTORS = "vectors"
THUMBS = "thumbs"
PARTS = "parts"
LOCK_FILE = ".lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts(name TEXT PRIMARY KEY, rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL, crc32 INTEGER NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos(rid INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL, id TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL NOT NULL, frames INTEGER NOT NULL,
    fps REAL NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, codec TEXT NOT NULL,
    thumb TEXT, part TEXT NOT NULL REFERENCES parts(name), row INTEGER NOT NULL,
    win_start REAL, win_end REAL);
CREATE UNIQUE INDEX IF NOT EXISTS videos_path_window ON videos(path, IFNULL(win_start, -1));
CREATE INDEX IF NOT EXISTS videos_part ON videos(part);
CREATE INDEX IF NOT EXISTS videos_thumb ON videos(thumb);
CREATE TABLE IF NOT EXISTS failed(path TEXT PRIMARY KEY, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owned(name TEXT PRIMARY KEY);
"""
MEMBERS_TABLE = """CREATE TABLE IF NOT EXISTS members(path TEXT PRIMARY KEY, tar TEXT NOT NULL,
    offset INTEGER NOT NULL, size INTEGER NOT NULL, tar_size INTEGER NOT NULL,
    tar_mtime TEXT NOT NULL)"""
MEMBER_COLUMNS = ("tar", "offset", "size", "tar_size", "tar_mtime")


class VideoIndexError(UserError):
    """An index that cannot be used as asked; the message names the folder and the fix."""


@dataclass
class VideoRecord:
    id: str
    path: str  # relative to the index's root, POSIX separators
    size: int
    mtime_ns: int
    duration: float
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    thumb: str | None  # file name under thumbs/, None when no frame could be drawn
    rid: int = 0  # the record id, set by the store
    start: float | None = None  # a moment index's window, in seconds; None: the whole video
    end: float | None = None


@dataclass
class FailedVideo:
    path: str
    size: int
    mtime_ns: int
    error: str


RECORD_COLUMNS = [f.name for f in fields(VideoRecord)]
WINDOW_COLUMNS = {"start": "win_start", "end": "win_end"}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ row layout
def row_dtype(layout: dict) -> np.dtype:
    """The numpy dtype of one row of a part: ``{"dim": D}`` or ``{"frames": T, "dim": D}``."""
    if "frames" in layout:
        return np.dtype([("frames", "<f2", (layout["frames"], layout["dim"])),
                         ("mask", "u1", (layout["frames"],))])
    return np.dtype(("<f2", (layout["dim"],)))


def crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


def check_size(path: Path, recorded: int, fix: str) -> None:
    """Refuse a file of the index that is missing or not of its recorded size."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise VideoIndexError(f"{path} is missing ({e.strerror}); {fix}.") from None
    if size != recorded:
        raise VideoIndexError(f"{path} holds {size} bytes, the index recorded {recorded} "
                              f"(truncated or damaged); {fix}.")


def write_part(path: Path, rows: np.ndarray) -> dict:
    """Write ``rows`` (an array of ``row_dtype``) to ``path`` (synced); its parts-table row."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    data = np.ascontiguousarray(rows).tobytes()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"name": path.name, "rows": len(rows), "bytes": len(data),
            "crc32": zlib.crc32(data), "created": now()}


# ------------------------------------------------------------------------------ the lock
class WriterLock:
    """``INDEX_DIR/.lock`` held with flock by the one run that writes the folder. The kernel
    drops it when the process ends, however it ends: a killed run never blocks the next."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "WriterLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(self.fd)
            self.fd = None
            raise VideoIndexError(
                f"another `index` run is writing {self.path.parent} ({holder or 'pid unknown'});"
                f" wait for it to finish, or index into another --out folder.") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} since {now()}".encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------ the store
class Store:
    """The SQLite side of an index folder. ``Store.open`` for readers (read-only),
    ``Store.create`` / ``Store.open(writable=True)`` for the one writer holding the lock."""

    def __init__(self, folder: Path, db: sqlite3.Connection):
        self.dir = folder
        self.db = db
        have = {r[1] for r in db.execute("PRAGMA table_info(videos)")}
        # a store written before windows existed lacks their columns: read them as NULL
        self.has_windows = set(WINDOW_COLUMNS.values()) <= have
        self._select = ", ".join(
            c if c not in WINDOW_COLUMNS else (WINDOW_COLUMNS[c] if self.has_windows else "NULL")
            for c in RECORD_COLUMNS)

    # -------------------------------------------------------------- opening
    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / DB_FILE).is_file()

    @classmethod
    def open(cls, folder: str | Path, writable: bool = False) -> "Store":
        d = Path(folder)
        path = d / DB_FILE
        if not path.is_file():
            if (d / LEGACY_FILE).is_file():
                raise VideoIndexError(
                    f"{d} is an index of the older format (index.json); convert it once with "
                    f"`python -m clip4clip_dali.index --convert {d}` (or re-run the `index` "
                    f"command that built it, which converts it first).")
            hint = "it holds no index.sqlite" if d.is_dir() else "no such folder"
            raise VideoIndexError(f"{d} is not a video index ({hint}); build one with "
                                  f"`python -m clip4clip_dali.index --checkpoint CKPT --videos "
                                  f"DIR --out {d}`.")
        try:
            if writable:
                db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            else:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                     isolation_level=None, check_same_thread=False)
            store = cls(d, db)
            fmt = store.meta("format")
            if writable and fmt in (FORMAT, WINDOWED_FORMAT):  # an older index gains the table
                db.execute(MEMBERS_TABLE)
        except sqlite3.DatabaseError as e:
            raise VideoIndexError(f"{path} could not be read ({e}); the index is damaged: "
                                  f"rebuild it with `clip4clip_dali.index --rebuild`.") from None
        if fmt not in (FORMAT, WINDOWED_FORMAT):
            raise VideoIndexError(f"{path} is an index of format {fmt}, this version reads "
                                  f"formats {FORMAT} and {WINDOWED_FORMAT}; rebuild it with "
                                  f"this version.")
        return store

    @classmethod
    def create(cls, folder: Path, meta: dict) -> "Store":
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(folder / DB_FILE), timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.execute(MEMBERS_TABLE)
        store = cls(folder, db)
        with store.transaction():
            store.set_meta(format=WINDOWED_FORMAT if meta.get("window") else FORMAT,
                           created=now(), **meta)
        return store

    def close(self) -> None:
        self.db.close()

    # -------------------------------------------------------------- meta
    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                            [(k, json.dumps(v)) for k, v in values.items()])

    def transaction(self):
        return _Transaction(self.db)

    # -------------------------------------------------------------- records
    def count(self) -> int:
        """Records: videos, or windows in a moment index."""
        return self.db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]

    def count_files(self) -> int:
        return self.db.execute("SELECT COUNT(DISTINCT path) FROM videos").fetchone()[0]

    def records(self, rids: Sequence[int] | None = None) -> list[VideoRecord]:
        """The records of ``rids`` in that order (a missing id is left out), or all by id."""
        cols = self._select
        if rids is None:
            rows = self.db.execute(f"SELECT {cols} FROM videos ORDER BY rid").fetchall()
            return [VideoRecord(*r) for r in rows]
        found: dict[int, VideoRecord] = {}
        ids = [int(r) for r in rids]
        for s in range(0, len(ids), 500):
            chunk = ids[s:s + 500]
            q = f"SELECT {cols} FROM videos WHERE rid IN ({','.join('?' * len(chunk))})"
            for r in self.db.execute(q, chunk):
                rec = VideoRecord(*r)
                found[rec.rid] = rec
        return [found[i] for i in ids if i in found]

    def stamps(self) -> dict[str, tuple[int, int, list[int], str | None]]:
        """path -> (size, mtime_ns, record ids, thumb) of every file (several ids: its windows
        in a moment index): what a writer needs to plan, without building a million records."""
        out: dict[str, tuple] = {}
        for path, size, mtime_ns, rid, thumb in self.db.execute(
                "SELECT path, size, mtime_ns, rid, thumb FROM videos ORDER BY rid"):
            if path in out:
                out[path][2].append(rid)
            else:
                out[path] = (size, mtime_ns, [rid], thumb)
        return out

    def record(self, rid: int) -> VideoRecord | None:
        got = self.records([rid])
        return got[0] if got else None

    def failed(self) -> list[FailedVideo]:
        return [FailedVideo(*r) for r in
                self.db.execute("SELECT path, size, mtime_ns, error FROM failed ORDER BY path")]

    def locations(self) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """(record ids, part names, part of each record as an index into the names, row in
        its part), by record id."""
        rows = self.db.execute("SELECT rid, part, row FROM videos ORDER BY rid").fetchall()
        names = sorted({r[1] for r in rows})
        at = {n: i for i, n in enumerate(names)}
        rid = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        part = np.fromiter((at[r[1]] for r in rows), dtype=np.int64, count=len(rows))
        row = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
        return rid, names, part, row

    def locate(self, rids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """Record id -> (part, row) for the ids of ``rids`` that exist."""
        out: dict[int, tuple[str, int]] = {}
        ids = [int(r) for r in rids]
        for s in range(0, len(ids), 500):
            chunk = ids[s:s + 500]
            q = f"SELECT rid, part, row FROM videos WHERE rid IN ({','.join('?' * len(chunk))})"
            out.update((r[0], (r[1], r[2])) for r in self.db.execute(q, chunk))
        return out

    def member(self, path: str) -> dict | None:
        """The tar member a record's clip is (``MEMBER_COLUMNS``), or None for a file."""
        try:
            row = self.db.execute(f"SELECT {', '.join(MEMBER_COLUMNS)} FROM members WHERE "
                                  f"path=?", (path,)).fetchone()
        except sqlite3.OperationalError:  # written by a version without tar members
            return None
        return None if row is None else dict(zip(MEMBER_COLUMNS, row))

    def parts(self) -> dict[str, dict]:
        cur = self.db.execute("SELECT name, rows, bytes, crc32, created FROM parts")
        return {r[0]: dict(zip(("name", "rows", "bytes", "crc32", "created"), r)) for r in cur}

    def owned(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM owned")}

    # -------------------------------------------------------------- writing (in a transaction)
    def add_part(self, part: dict) -> None:
        self.db.execute("INSERT INTO parts(name, rows, bytes, crc32, created) "
                        "VALUES(:name, :rows, :bytes, :crc32, :created)", part)
        self.own([f"{VECTORS}/{part['name']}"])

    def put_records(self, records: Iterable[VideoRecord], part: str, rows: Iterable[int]) -> None:
        """Insert records (the caller dropped those of the same paths first)."""
        cols = [c for c in RECORD_COLUMNS if c != "rid"
                and (c not in WINDOW_COLUMNS or self.has_windows)]
        names = [WINDOW_COLUMNS.get(c, c) for c in cols]
        q = (f"INSERT INTO videos({', '.join(names)}, part, row) "
             f"VALUES({', '.join('?' * (len(cols) + 2))})")
        self.db.executemany(q, ([getattr(r, c) for c in cols] + [part, int(i)]
                                for r, i in zip(records, rows)))

    def put_members(self, members: Iterable[tuple[str, dict]]) -> None:
        """(record path, member dict with ``MEMBER_COLUMNS``) of records that are tar members."""
        q = (f"INSERT OR REPLACE INTO members(path, {', '.join(MEMBER_COLUMNS)}) "
             f"VALUES({', '.join('?' * (len(MEMBER_COLUMNS) + 1))})")
        self.db.executemany(q, ([p] + [m[c] for c in MEMBER_COLUMNS] for p, m in members))

    def drop_paths(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        self.db.executemany("DELETE FROM videos WHERE path=?", ((p,) for p in paths))
        self.db.executemany("DELETE FROM members WHERE path=?", ((p,) for p in paths))

    def set_failed(self, failed: Iterable[FailedVideo], keep: set[str] | None = None) -> None:
        if keep is not None:
            gone = [p for (p,) in self.db.execute("SELECT path FROM failed") if p not in keep]
            self.db.executemany("DELETE FROM failed WHERE path=?", ((p,) for p in gone))
        self.db.executemany("INSERT OR REPLACE INTO failed(path, size, mtime_ns, error) "
                            "VALUES(:path, :size, :mtime_ns, :error)", (asdict(f) for f in failed))

    def own(self, names: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO owned(name) VALUES(?)", ((n,) for n in names))

    def disown(self, names: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM owned WHERE name=?", ((n,) for n in names))

    def drop_parts(self, names: Iterable[str]) -> None:
        names = list(names)
        self.db.executemany("DELETE FROM parts WHERE name=?", ((n,) for n in names))
        self.disown(f"{VECTORS}/{n}" for n in names)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
