"""A real S3 API for tests without network: moto's server mode on loopback, holding a shard set."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_with_shards(folder: Path, bucket: str = "clips", prefix: str = "set"):
    """(endpoint URL, boto3 client) of a moto server holding the files of ``folder`` (a shard
    set) under ``s3://bucket/prefix/``; the server is stopped on exit."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket=bucket)
        for f in Path(folder).iterdir():
            if f.is_file() and not f.name.startswith("."):
                client.upload_file(str(f), bucket, f"{prefix}/{f.name}")
        yield endpoint, client
    finally:
        proc.terminate()
        proc.wait(10)
