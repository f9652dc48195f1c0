"""Where tar shards live and how their bytes are read: a local folder or an ``s3://`` prefix.

The reader never walks a tar: every shard has a DALI index file (``wds2idx``'s ``v1.2``
format, which ``readers.webdataset`` reads too)::

    v1.2 <samples>
    <ext> <data offset> <size> <member name> [<ext> <offset> <size> <name> ...]   # one sample

so a sample's clip is one ranged read (``os.pread`` on a kept file descriptor; on S3 one ranged
GET). S3 goes through boto3 with short time-outs and one check at start-up: no credentials or
an endpoint that does not answer give a ``UserError`` within seconds instead of a hang.
``AWS_ENDPOINT_URL`` (e.g. a MinIO or moto server) and the usual ``AWS_*`` variables apply.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int
    size: int
    name: str


def format_index(samples: list[list[Member]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: str) -> list[dict[str, Member]]:
    """Per sample, extension -> member. ValueError naming ``where`` for a malformed index."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"{where}: not a {INDEX_VERSION} index (first line {lines[:1]})")
    out = []
    for k, line in enumerate(lines[1:], 2):
        f = line.split()
        if not f:
            continue
        if len(f) % 4:
            raise ValueError(f"{where}:{k}: expected 'ext offset size name' groups")
        out.append({f[j]: Member(f[j], int(f[j + 1]), int(f[j + 2]), f[j + 3])
                    for j in range(0, len(f), 4)})
    if len(out) != int(head[1]):
        raise ValueError(f"{where}: the header says {head[1]} samples, it lists {len(out)}")
    return out


def member_key(name: str) -> str:
    """The sample key of a member name (webdataset rule: up to the first dot of the base name)."""
    base = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(base) + base.find(".")] if "." in base else name


class Store:
    """Read access to the folder or prefix a manifest sits in."""

    remote = False  # True: each read is a network round trip (read a batch's clips at once)

    def __init__(self, root: str):
        self.root = root

    @staticmethod
    def of(manifest: str) -> "Store":
        if manifest.startswith("s3://"):
            return S3Store(manifest.rsplit("/", 1)[0])
        if "://" in manifest:
            raise UserError(f"data.data_path = {manifest}: only local paths and s3:// are read "
                            f"(mount other storage, or copy the shards).")
        return LocalStore(str(Path(manifest).parent))

    def where(self, name: str) -> str:
        return posixpath.join(self.root, name) if self.root else name


class LocalStore(Store):
    def __init__(self, root: str):
        super().__init__(root)
        self._fds: dict[str, int] = {}

    def where(self, name: str) -> str:
        return str(Path(self.root) / name)

    def read(self, name: str) -> bytes:
        return Path(self.where(name)).read_bytes()

    def size(self, name: str) -> int:
        return os.stat(self.where(name)).st_size

    def mtime(self, name: str) -> float:
        return os.stat(self.where(name)).st_mtime_ns

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self.where(name), os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.where(name)}: {len(data)} of {size} bytes at {offset} "
                          f"(truncated?)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):
        return {"root": self.root, "_fds": {}}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class S3Store(Store):
    TIMEOUT = 3.0  # seconds to connect / read before an S3 request is tried again (once)
    remote = True

    def __init__(self, root: str):
        super().__init__(root)
        self._client = None
        bucket_key = root[len("s3://"):]
        self.bucket, _, self.prefix = bucket_key.partition("/")

    def _key(self, name: str) -> str:
        return posixpath.join(self.prefix, name) if self.prefix else name

    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise UserError(f"{self.root}: reading shards from S3 needs boto3 "
                                f"(pip install boto3).") from None
            cfg = Config(connect_timeout=self.TIMEOUT, read_timeout=self.TIMEOUT,
                         retries={"max_attempts": 2, "mode": "standard"},
                         max_pool_connections=32)
            # A session of its own: boto3's default one keeps the credentials it found first.
            self._client = boto3.session.Session().client("s3", config=cfg,
                endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
        return self._client

    def _call(self, name: str, fn):
        import botocore.exceptions as bx

        try:
            return fn(self.client())
        except bx.NoCredentialsError:
            raise UserError(f"{self.where(name)}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY (or a profile), and AWS_ENDPOINT_URL for a "
                            f"server other than AWS.") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as e:
            raise UserError(f"{self.where(name)}: the S3 endpoint does not answer ({e}); check "
                            f"AWS_ENDPOINT_URL and the network.") from None
        except bx.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise FileNotFoundError(self.where(name)) from None
            raise OSError(f"{self.where(name)}: S3 error {code}") from None

    def read(self, name: str) -> bytes:
        return self._call(name, lambda c: c.get_object(
            Bucket=self.bucket, Key=self._key(name))["Body"].read())

    def _head(self, name: str) -> dict:
        return self._call(name, lambda c: c.head_object(Bucket=self.bucket, Key=self._key(name)))

    def size(self, name: str) -> int:
        return int(self._head(name)["ContentLength"])

    def mtime(self, name: str) -> str:
        return str(self._head(name).get("ETag", ""))

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        data = self._call(name, lambda c: c.get_object(
            Bucket=self.bucket, Key=self._key(name),
            Range=f"bytes={offset}-{offset + size - 1}")["Body"].read())
        if len(data) != size:
            raise OSError(f"{self.where(name)}: {len(data)} of {size} bytes at {offset}")
        return data

    def close(self) -> None:
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}
