"""Serving a clip that is a member of a tar shard: its byte range only, streamed, with HTTP
Range support (browsers seek with Range requests).

The member is read in blocks through a file-like window (``pread`` on the shard opened once
per response; on S3 one ranged GET per block), so a shard is never read whole and no byte
outside the member is ever sent. The shard must still be the one indexed: its size and time
(S3: ETag) are compared with the index's record first, and a rewritten shard gets a 404, as a
replaced file does. Werkzeug does the Range, If-Range and 416 logic.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

from ..data.shards_store import Store

BLOCK = 256 * 1024  # bytes per read (per ranged GET on S3)
TYPES = {"webm": "video/webm", "mp4": "video/mp4"}  # the containers shards hold (shards.CLIP_EXT)
_S3: dict[tuple, Store] = {}  # a boto3 client costs tens of ms to make; it is thread-safe


class MemberFile(io.RawIOBase):
    """Read-only, seekable view of ``size`` bytes at ``offset`` of a shard: ``read_at(offset,
    n)`` reads from the shard; reads stop at the member's end."""

    def __init__(self, read_at, offset: int, size: int, close=None):
        super().__init__()
        self._read_at, self._offset, self._size, self._close = read_at, offset, size, close
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = self._read_at(self._offset + self._pos, n)
        if len(data) != n:
            raise OSError(f"short read of a tar member ({len(data)} of {n} bytes): the shard "
                          f"changed while being served")
        self._pos += n
        return data

    def close(self) -> None:
        if not self.closed and self._close is not None:
            self._close()
        super().close()


def open_member(member: dict) -> MemberFile | None:
    """The member (a ``store.members`` row) when its shard is still the one indexed, else
    None (rewritten, truncated or gone)."""
    tar, want = member["tar"], (int(member["tar_size"]), str(member["tar_mtime"]))
    if tar.startswith("s3://"):
        root, name = tar.rsplit("/", 1)
        key = (root, os.environ.get("AWS_ENDPOINT_URL"))
        store = _S3.get(key) or _S3.setdefault(key, Store.of(tar))  # one client per prefix
        try:
            now = (store.size(name), str(store.mtime(name)))
        except OSError:  # gone (S3 errors without credentials or endpoint stay UserErrors)
            return None
        if now != want:
            return None
        return MemberFile(lambda off, n: store.read_range(name, off, n), int(member["offset"]),
                          int(member["size"]))
    try:
        fd = os.open(tar, os.O_RDONLY)
    except OSError:
        return None
    st = os.fstat(fd)  # of the file this response reads, not of whatever the path names later
    if (st.st_size, str(st.st_mtime_ns)) != want:
        os.close(fd)
        return None
    return MemberFile(lambda off, n: os.pread(fd, n, off), int(member["offset"]),
                      int(member["size"]), close=lambda: os.close(fd))


def member_video(index, rid: int, request):
    """The Flask response for record ``rid`` of ``index`` when its clip is a tar member: 200
    with the whole member, 206 with a Range's slice, 416 for a range outside it, 404 when the
    shard is not the one indexed. None when the record is not a tar member (or not there)."""
    from flask import Response
    from werkzeug.exceptions import NotFound
    from werkzeug.wsgi import FileWrapper

    rec = index.record(rid)
    member = index.store.member(rec.path) if rec is not None else None
    if member is None:
        return None
    f = open_member(member)
    if f is None:
        # the shard's own path stays on the server, as every other answer keeps paths there
        raise NotFound(f"video {rid}: its tar shard changed since it was indexed; run the "
                       f"`index` command again.")
    name = rec.path
    size = int(member["size"])
    ext = name.rsplit(".", 1)[-1].lower()
    rv = Response(FileWrapper(f, BLOCK), mimetype=TYPES.get(ext, "application/octet-stream"),
                  direct_passthrough=True)
    rv.content_length = size
    rv.set_etag(hashlib.sha1(json.dumps(member, sort_keys=True).encode()).hexdigest()[:20])
    rv.cache_control.no_cache = True
    try:
        return rv.make_conditional(request, accept_ranges=True, complete_length=size)
    except Exception:
        f.close()
        raise
