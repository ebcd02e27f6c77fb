"""The storage layer on both backends: atomic no-op rewrites, first-writer-wins, and CAS."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from recsys_assets.config import S3Connection
from recsys_assets.storage import LocalStore, S3Store, Store, endpoint_url, open_store
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "store")
    connection: S3Connection = request.getfixturevalue("s3_connection")
    return open_store(f"s3://{connection.bucket}/some/prefix", connection)


@contextmanager
def _s3_puts(store: Store) -> Iterator[list[str]]:
    """The PutObject calls an S3 store makes inside the block."""
    assert isinstance(store, S3Store)
    calls: list[str] = []

    def count(params: dict, **_: object) -> None:
        calls.append(params["url_path"])

    store._client.meta.events.register("before-call.s3.PutObject", count)
    try:
        yield calls
    finally:
        store._client.meta.events.unregister("before-call.s3.PutObject", count)


def test_write_bytes_replaces_and_skips_identical_bytes(store: Store) -> None:
    assert store.write_bytes("a/b.json", b"one") is True
    if isinstance(store, LocalStore):
        path = store.root / "a" / "b.json"
        before = path.stat().st_mtime_ns
        assert store.write_bytes("a/b.json", b"one") is False
        assert path.stat().st_mtime_ns == before
    else:
        with _s3_puts(store) as puts:
            assert store.write_bytes("a/b.json", b"one") is False
        assert puts == []
    assert store.write_bytes("a/b.json", b"two") is True
    assert store.read_bytes("a/b.json") == b"two"
    assert store.write_bytes("a/b.json", b"owt") is True  # same size, other bytes
    assert store.read_bytes("a/b.json") == b"owt"
    assert store.list_keys("") == ["a/b.json"]  # no temporary file left behind


def test_write_if_absent_first_writer_wins(store: Store) -> None:
    assert store.write_if_absent("k.json", b"first") is True
    assert store.write_if_absent("k.json", b"second") is False
    assert store.read_bytes("k.json") == b"first"

    wins: list[int] = []

    def race(i: int) -> None:
        if store.write_if_absent("raced.json", f"writer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.read_bytes("raced.json") == f"writer {wins[0]}".encode()


def test_a_blob_written_in_parts_is_their_concatenation_and_first_writer_wins(
    store: Store,
) -> None:
    big = memoryview(bytes(range(256)) * 4096)
    assert store.write_parts_if_absent("p.json", [b"[", big, b"]"]) is True
    assert store.write_parts_if_absent("p.json", [b"other"]) is False
    assert store.read_bytes("p.json") == b"[" + bytes(big) + b"]"


def test_compare_and_swap_detects_every_conflict(store: Store) -> None:
    assert store.read_with_token("m.json") == (None, None)
    assert store.write_if_token("m.json", b"v1", None) is True
    assert store.write_if_token("m.json", b"other", None) is False  # created meanwhile

    data, token = store.read_with_token("m.json")
    assert data == b"v1" and token is not None
    assert store.write_if_token("m.json", b"v2", token) is True
    assert store.write_if_token("m.json", b"v3", token) is False  # token is stale now
    assert store.read_bytes("m.json") == b"v2"

    _, token = store.read_with_token("m.json")
    store.delete("m.json")
    assert store.write_if_token("m.json", b"v4", token) is False  # deleted meanwhile
    assert store.read_bytes("m.json") is None


def _increment(store: Store, key: str, times: int) -> None:
    """Add 1 to a counter `times` times by read-modify-write, retrying each conflict."""
    done = 0
    while done < times:
        data, token = store.read_with_token(key)
        if store.write_if_token(key, str(int(data or b"0") + 1).encode(), token):
            done += 1


def test_concurrent_threads_lose_no_increment(store: Store) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _increment(store, "n", 10), range(4)))
    assert store.read_bytes("n") == b"40"


def test_concurrent_processes_lose_no_increment(tmp_path: Path) -> None:
    """The local lock holds across processes (S3 decides on the server, whoever calls)."""
    store = LocalStore(tmp_path)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_increment, [store] * 2, ["n"] * 2, [25] * 2))
    assert store.read_bytes("n") == b"50"


def test_moto_enforces_s3_preconditions(s3_connection: S3Connection) -> None:  # noqa: F811
    """The S3 CAS relies on the server refusing stale If-Match and existing If-None-Match."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_connection.endpoint,
        aws_access_key_id=s3_connection.access_key,
        aws_secret_access_key=s3_connection.secret_key,
        region_name=s3_connection.region,
    )
    bucket = s3_connection.bucket
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")["ETag"]
    client.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch=first)
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": first}):
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=bucket, Key="k", Body=b"3", **condition)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"2"


def test_list_keys_is_sorted_relative_and_folder_like(store: Store) -> None:
    for key in ("b/2.json", "a/1.json", "a/sub/3.json", "ab/4.json"):
        store.write_bytes(key, b"x")
    _, token = store.read_with_token("a/1.json")
    store.write_if_token("a/1.json", b"y", token)  # leaves a lock file on the local backend
    assert store.list_keys("") == ["a/1.json", "a/sub/3.json", "ab/4.json", "b/2.json"]
    assert store.list_keys("a") == ["a/1.json", "a/sub/3.json"]
    assert store.list_keys("missing") == []


def test_exists_delete_and_uri(store: Store, tmp_path: Path) -> None:
    assert not store.exists("x/y.json")
    store.write_bytes("x/y.json", b"1")
    assert store.exists("x/y.json")
    store.delete("x/y.json")
    assert not store.exists("x/y.json")
    store.delete("x/y.json")  # deleting what is gone is fine
    if isinstance(store, S3Store):
        assert store.uri("x/y.json") == f"s3://{store.bucket}/some/prefix/x/y.json"
    else:
        assert store.uri("x/y.json") == (tmp_path / "store" / "x" / "y.json").as_uri()


def test_keys_cannot_escape_the_store(store: Store) -> None:
    with pytest.raises(ValueError, match="escapes|plain relative path"):
        store.write_bytes("../outside.json", b"x")


def test_open_store_takes_bucket_and_prefix_from_the_uri(s3_connection: S3Connection) -> None:  # noqa: F811
    store = open_store(f"s3://{s3_connection.bucket}/deep/er/", s3_connection)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (s3_connection.bucket, "deep/er")
    store.write_bytes("k", b"v")
    other = open_store(f"s3://{s3_connection.bucket}", s3_connection)
    assert other.list_keys("") == ["deep/er/k"]
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3:///prefix", s3_connection)


def test_create_bucket_makes_a_missing_bucket(s3_connection: S3Connection) -> None:  # noqa: F811
    bare = s3_connection.endpoint.removeprefix("http://")
    connection = s3_connection.model_copy(update={"endpoint": bare, "create_bucket": True})
    store = open_store("s3://fresh-bucket-for-test/p", connection)
    assert store.write_bytes("k", b"v") is True
    assert store.read_bytes("k") == b"v"
    open_store("s3://fresh-bucket-for-test/p", connection)  # existing bucket: no error


def test_endpoint_scheme_follows_use_ssl() -> None:
    assert endpoint_url(S3Connection(endpoint="minio:9000")) == "https://minio:9000"
    assert endpoint_url(S3Connection(endpoint="minio:9000", use_ssl=False)) == "http://minio:9000"
    assert endpoint_url(S3Connection(endpoint="http://x:1")) == "http://x:1"
    assert endpoint_url(S3Connection()) is None


def test_a_local_file_goes_in_whole_and_comes_back_as_a_local_file(
    store: Store, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: several parts of a copy, one S3 object
    source = tmp_path / "day.parquet"
    source.write_bytes(data)
    store.write_file("t/s/exposures/2026-01-01.parquet", source)
    assert store.read_bytes("t/s/exposures/2026-01-01.parquet") == data
    with store.local_file("t/s/exposures/2026-01-01.parquet") as path:
        assert path is not None and path.read_bytes() == data
        store.write_bytes("t/s/exposures/2026-01-01.parquet", b"a newer day")
        assert path.read_bytes() == data  # a reader keeps the bytes it started with
    assert store.list_keys("t") == ["t/s/exposures/2026-01-01.parquet"]  # nothing left over
    store.write_file("t/s/exposures/2026-01-01.parquet", _again(source, data))
    with store.local_file("t/s/exposures/2026-01-02.parquet") as path:
        assert path is None
    if isinstance(store, LocalStore):  # the same bytes again: the file is left as it was
        target = store.root / "t/s/exposures/2026-01-01.parquet"
        before = target.stat().st_mtime_ns
        source.write_bytes(data)
        store.write_file("t/s/exposures/2026-01-01.parquet", source)
        assert target.stat().st_mtime_ns == before


def _again(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
