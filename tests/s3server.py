"""A real S3-compatible server on 127.0.0.1 (moto's), for models stored by ``s3://`` URL."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's server on a free port; set the AWS environment (endpoint included) that
    boto3, s3fs and subprocesses read; yield the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_clients()  # fsspec caches filesystems, each bound to the endpoint it was made with
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
        _forget_clients()


def _forget_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def new_bucket() -> str:
    """A new, empty bucket on the server the environment points at; its s3:// URL."""
    import boto3

    name = f"semid-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
