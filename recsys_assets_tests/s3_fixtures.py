"""An S3 endpoint for tests: moto's server in a thread, and a fresh bucket per test.

Import both fixtures into a test module:
`from recsys_assets_tests.s3_fixtures import s3_server, s3_connection  # noqa: F401`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from recsys_assets.config import S3Connection

ACCESS_KEY = "testing"
SECRET_KEY = "testing"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on a free local port."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@functools.cache
def _admin_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


@pytest.fixture
def s3_connection(s3_server: str) -> S3Connection:
    """Connection settings (as in `object_store.s3`) for a new, empty bucket."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    _admin_client(s3_server).create_bucket(Bucket=bucket)
    return S3Connection(
        endpoint=s3_server,
        bucket=bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="us-east-1",
        use_ssl=False,
    )
