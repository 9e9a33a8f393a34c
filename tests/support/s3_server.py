"""A real S3 server on loopback for tests and benchmarks: moto's standalone server (the S3 REST protocol over
HTTP), on a free port, with dummy credentials and the endpoint in the environment (``AWS_ENDPOINT_URL``),
so s3fs, boto3 and the pipeline scripts' subprocesses all reach it the way they would reach AWS."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-real",
    "AWS_SESSION_TOKEN": "testing-session",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalS3:
    """A running moto server: ``endpoint``, ``env`` (what a client process needs), ``fs()`` (an s3fs client)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {**DUMMY_ENV, "AWS_ENDPOINT_URL": self.endpoint, "NO_PROXY": "127.0.0.1,localhost"}

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def presigned_url(self, bucket: str, key: str, signature_version: str = "s3v4", expires: int = 600) -> str:
        """A GET URL of ``bucket/key`` as boto3's ``generate_presigned_url`` gives it (``s3``: v2, ``s3v4``: v4)."""
        import boto3
        from botocore.config import Config

        config = Config(signature_version=signature_version)
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", config=config)
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


@contextmanager
def local_s3() -> Iterator[LocalS3]:
    """Start moto's ThreadedMotoServer on a free loopback port, point this process's AWS variables at it
    (restored afterwards), and stop it on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = LocalS3(free_port())
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=server.port, verbose=False)
    moto.start()
    saved = {name: os.environ.get(name) for name in server.env}
    proxies = {name: os.environ.pop(name) for name in list(os.environ) if name.lower().endswith("_proxy")}
    os.environ.update(server.env)
    _clear_s3fs_instances()
    try:
        yield server
    finally:
        _clear_s3fs_instances()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.update(proxies)
        moto.stop()


def _clear_s3fs_instances() -> None:
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()
