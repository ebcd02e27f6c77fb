"""One storage layer for every location of the product: a local folder or an `s3://` prefix.

Writers replace a key atomically and leave it untouched when the bytes are the same, so a
re-run changes no file (not even its modification time). Keys that several writers update
(the registry's manifest, pins and audit log) go through compare-and-swap:
`read_with_token` returns the content with a token, and `write_if_token` writes only while
the key still holds that token.
"""

from __future__ import annotations

import base64
import fcntl
import filecmp
import functools
import hashlib
import mmap
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from recsys_assets.config import S3Connection

_LOCK_SUFFIX = ".lock"
# Bytes of a local file read at a time when it is copied into a store.
_FILE_PART = 64 << 20
# S3 answers a failed If-Match / If-None-Match with 412, a concurrent conditional write with
# 409, and If-Match on a missing key with 404: all mean "not the content you read".
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


class Store(ABC):
    """Keys are `/`-separated paths relative to the store's root."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> bool:
        """Replace the object atomically; returns False when it already held these bytes."""

    def read_buffer(self, key: str) -> Any:
        """The object's bytes as a read-only buffer, or None when it does not exist.

        A local file is mapped rather than copied, so a large object costs no memory of this
        process until it is read.
        """
        return self.read_bytes(key)

    def write_parts(self, key: str, parts: Iterable[Any], *, durable: bool = True) -> None:
        """Replace the object atomically with the concatenation of `parts` (buffers); a local
        file is written part by part, so the whole never exists in memory.

        `durable=False` skips forcing a local file to disk before it replaces the old one:
        for caches that are checked by hash before use, where a crash may lose the new file
        but must not cost a disk flush of hundreds of MB every day.
        """
        self.write_bytes(key, b"".join(parts))

    def write_file(self, key: str, path: Path) -> None:
        """Replace the object atomically with a local file's content, which is read as it
        goes (a day's events can be GBs); the file may be moved into place."""
        with open(path, "rb") as handle:
            self.write_parts(key, iter(functools.partial(handle.read, _FILE_PART), b""))

    @contextmanager
    def local_file(self, key: str, scratch: str | None = None) -> Iterator[Path | None]:
        """The object as a local file for the time of the `with` (None when it does not
        exist): a local store's own file, or a temporary download under `scratch` (default
        the system temp folder)."""
        data = self.read_bytes(key)
        if data is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="recsys-object-", dir=scratch) as folder:
            path = Path(folder) / Path(key).name
            path.write_bytes(data)
            del data
            yield path

    @abstractmethod
    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object unless it exists (first writer wins); True when this call wrote it."""

    def write_parts_if_absent(self, key: str, parts: list[Any]) -> bool:
        """`write_if_absent` of the concatenation of `parts` (buffers); a local file is
        written part by part, so a blob of hundreds of MB is not copied whole first."""
        return self.write_if_absent(key, b"".join(parts))

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where a key lives, as `file:///abs/path` or `s3://bucket/key`."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def read_with_token(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and a token naming this content; (None, None) when absent."""

    @abstractmethod
    def write_if_token(self, key: str, data: bytes, token: str | None) -> bool:
        """Write only if the key still holds `token` (None: only if absent).

        Returns False on a conflict: someone else changed, created or deleted the key since
        the token was read.
        """


class LocalStore(Store):
    """A folder; compare-and-swap holds an exclusive `flock` on a hidden sibling lock file.

    `flock` excludes other processes and, because every call opens the lock file anew, other
    threads of this process too. The token is the SHA-256 of the content.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} escapes the store root {self.root}")
        return path

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def read_buffer(self, key: str) -> Any:
        try:
            with self._path(key).open("rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return b""
                # The mapping outlives the file object; an unlinked or replaced file stays
                # readable through it.
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None

    def write_parts(self, key: str, parts: Iterable[Any], *, durable: bool = True) -> None:
        self._write_atomic(self._path(key), parts, durable=durable)

    def _write_atomic(
        self, path: Path, data: bytes | Iterable[Any], *, durable: bool = True
    ) -> None:
        fd, tmp = _temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                for part in [data] if isinstance(data, bytes) else data:
                    handle.write(part)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        if target.exists() and filecmp.cmp(path, target, shallow=False):
            return  # the same bytes: the file is left as it was, modification time too
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.stat(path).st_dev != os.stat(target.parent).st_dev:
            super().write_file(key, path)
            return
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(path, 0o666 & ~_umask())
        os.replace(path, target)

    @contextmanager
    def local_file(self, key: str, scratch: str | None = None) -> Iterator[Path | None]:
        # A hard link beside the file: a writer replacing the key meanwhile (os.replace)
        # leaves this reader on the bytes it started with, at no copy.
        path = self._path(key)
        fd, link = _temp_beside(path) if path.exists() else (None, None)
        if fd is None:
            yield None
            return
        os.close(fd)
        os.unlink(link)
        try:
            os.link(path, link)
        except FileNotFoundError:  # replaced or deleted between the check and the link
            yield None
            return
        try:
            yield Path(link)
        finally:
            Path(link).unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
        self._write_atomic(path, data)
        return True

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self.write_parts_if_absent(key, [data])

    def write_parts_if_absent(self, key: str, parts: list[Any]) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        fd, tmp = _temp_beside(path)
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp") and not _is_lock_file(p)
        )

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def read_with_token(self, key: str) -> tuple[bytes | None, str | None]:
        data = self.read_bytes(key)
        return data, _sha256(data)

    def write_if_token(self, key: str, data: bytes, token: str | None) -> bool:
        path = self._path(key)
        with self._locked(path):
            current = self.read_bytes(key)
            if _sha256(current) != token:
                return False
            if current != data:
                self._write_atomic(path, data)
        return True

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        # The lock file is never removed: unlinking it would let a later writer lock a new
        # inode while an earlier one still holds the old.
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}{_LOCK_SUFFIX}", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@functools.cache
def _umask() -> int:
    # Reading the umask means setting it: done once, as the first file is written, rather
    # than while background threads may be creating files under a zero umask.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file next to `path`, open for writing, with the mode a plain `open`
    would give (0666 less the umask): `mkstemp` makes it 0600, and the file keeps that mode
    when it is renamed into place, where an online service running as another user must
    read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _is_lock_file(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(_LOCK_SUFFIX)


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


@functools.lru_cache(maxsize=16)
def s3_client(connection: S3Connection, pid: int) -> Any:
    """One boto3 client per connection and process: clients are thread-safe but slow to build,
    and a forked child must not share its parent's sockets (hence the pid in the cache key).
    """
    from dagster_aws.s3 import S3Resource

    return S3Resource(
        endpoint_url=endpoint_url(connection),
        region_name=connection.region,
        use_ssl=connection.use_ssl,
        aws_access_key_id=connection.access_key,
        aws_secret_access_key=connection.secret_key,
    ).get_client()


def endpoint_url(connection: S3Connection) -> str | None:
    """The connection's endpoint as a URL; a bare `host:port` gets https, or http without ssl."""
    endpoint = connection.endpoint
    if not endpoint:
        return None
    if "://" in endpoint:
        return endpoint
    return f"{'https' if connection.use_ssl else 'http'}://{endpoint}"


class S3Store(Store):
    """Keys under `s3://<bucket>/<prefix>/`, through a client built by dagster-aws's S3Resource.

    Conditional writes use S3's own preconditions: `IfNoneMatch="*"` creates only if absent and
    `IfMatch=<ETag>` replaces only the content that was read; the token is the ETag.
    """

    def __init__(self, bucket: str, prefix: str = "", connection: S3Connection | None = None):
        if not bucket:
            raise ValueError("an S3 store needs a bucket name, got an empty one")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.connection = connection or S3Connection()
        self._client = self._connect()

    def __getstate__(self) -> dict[str, Any]:
        # A boto3 client does not pickle; a store sent to another process reconnects there.
        return {"bucket": self.bucket, "prefix": self.prefix, "connection": self.connection}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = self._connect()

    def _connect(self) -> Any:
        client = s3_client(self.connection, os.getpid())
        if self.connection.create_bucket:
            self._ensure_bucket(client)
        return client

    def _ensure_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _http_status(exc) != 404:
                raise
        options: dict[str, Any] = {"Bucket": self.bucket}
        if self.connection.region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.connection.region}
        try:
            client.create_bucket(**options)
        except ClientError as exc:
            if error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(part in {"", ".", ".."} for part in parts):
            raise ValueError(f"key {key!r} is not a plain relative path (empty, '.' or '..' part)")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _get(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if error_code(exc) == "NoSuchKey":  # not NoSuchBucket: that is a config error
                return None, None
            raise
        with response["Body"] as body:
            return body.read(), response["ETag"]

    def _put(self, key: str, data: bytes, **precondition: str) -> bool:
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
                **precondition,
            )
        except ClientError as exc:
            if precondition and error_code(exc) in _CONFLICT_CODES:
                return False
            raise
        return True

    def read_bytes(self, key: str) -> bytes | None:
        return self._get(key)[0]

    def write_bytes(self, key: str, data: bytes) -> bool:
        head = self._head(key)
        md5_etag = f'"{hashlib.md5(data).hexdigest()}"'
        # A single-part upload's ETag is the MD5 of its bytes; other ETags (multipart,
        # SSE-KMS) say nothing about the content, so then the bytes themselves are compared.
        unchanged = (
            head is not None
            and head["ContentLength"] == len(data)
            and (head["ETag"] == md5_etag or self.read_bytes(key) == data)
        )
        return False if unchanged else self._put(key, data)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*")

    def write_file(self, key: str, path: Path) -> None:
        # boto3's managed transfer: a multipart upload of big files, parts in parallel
        self._client.upload_file(str(path), self.bucket, self._key(key))

    @contextmanager
    def local_file(self, key: str, scratch: str | None = None) -> Iterator[Path | None]:
        if self._head(key) is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="recsys-object-", dir=scratch) as folder:
            path = Path(folder) / Path(key).name
            self._client.download_file(self.bucket, self._key(key), str(path))
            yield path

    def read_with_token(self, key: str) -> tuple[bytes | None, str | None]:
        return self._get(key)

    def write_if_token(self, key: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self._put(key, data, IfNoneMatch="*")
        return self._put(key, data, IfMatch=token)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _http_status(exc) == 404:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def list_keys(self, prefix: str) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        # Like a folder: `a/b` lists `a/b/...`, never `a/bc`.
        listed = f"{self._key(prefix.strip('/'))}/" if prefix.strip("/") else root
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=listed):
            keys.extend(item["Key"][len(root) :] for item in page.get("Contents", []))
        return sorted(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(location: str | os.PathLike[str], s3: S3Connection | None = None) -> Store:
    """The store for a configured location: a local path, or `s3://bucket/prefix`.

    An `s3://` location takes its bucket and prefix from the URI and everything else
    (endpoint, keys, region, ssl, create_bucket) from `s3`, the config's `object_store.s3`.
    """
    text = str(location)
    if text.startswith("s3://"):
        parts = urlsplit(text)
        if not parts.netloc:
            raise ValueError(f"S3 location {text!r} names no bucket (expected s3://bucket/prefix)")
        return S3Store(parts.netloc, parts.path.strip("/"), s3)
    return LocalStore(text)
