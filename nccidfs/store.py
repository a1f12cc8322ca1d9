"""The storage seam: what nccidfs needs from S3, as a Protocol, and its boto3 implementation.

Everything above this module sees :class:`ObjectInfo`, :class:`Listing` and the errors of
:mod:`nccidfs.errors`; nothing above it imports boto3. Listings always use a prefix that ends in
``/`` with delimiter ``/`` because the warehouse's IAM policy refuses any other form.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nccidfs.errors import AccessDenied, ConfigError, NccidfsError, NotFound, ObjectChanged, TransientError

if TYPE_CHECKING:
    from nccidfs.config import S3Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as the listing describes it; size and time never need a HEAD."""

    key: str
    size: int
    etag: str
    mtime: float


@dataclass(frozen=True, slots=True)
class Listing:
    """One level of the key space: sub-prefixes (ending in ``/``) and the objects directly in it."""

    prefixes: tuple[str, ...]
    objects: tuple[ObjectInfo, ...]


class ObjectStore(Protocol):
    """What the filesystem asks of S3."""

    def list_dir(self, prefix: str) -> Listing:
        """Every page of one level under ``prefix`` (which ends in ``/``)."""

    def probe(self, prefix: str) -> bool:
        """True when ``prefix`` holds something; raises AccessDenied when it may not be listed."""

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes ``[start, end)`` of the version of ``key`` whose ETag is ``etag``."""


class RequestStats:
    """Thread-safe counters of requests, bytes and errors, for ``status`` and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_fetched = 0

    def record(self, kind: str, nbytes: int = 0, error: str | None = None) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes_fetched += nbytes
            if error:
                self.errors[error] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "errors": dict(self.errors),
                    "bytes_fetched": self.bytes_fetched}


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def classify(error: Exception, what: str) -> NccidfsError:
    """Map a boto3/botocore exception to the nccidfs hierarchy, with a message safe to log."""
    code = _error_code(error)
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFound(f"{what}: not found")
    if code == "NoSuchBucket":
        return NotFound(f"{what}: bucket does not exist")
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return AccessDenied(f"{what}: access denied ({code})")
    if code in ("PreconditionFailed", "412"):
        return ObjectChanged(f"{what}: object changed since it was listed")
    return TransientError(f"{what}: {code}")


class Boto3Store:
    """:class:`ObjectStore` over boto3, with botocore's standard retries and short timeouts."""

    def __init__(self, config: S3Config, max_attempts: int = 4) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = config.bucket
        self.stats = RequestStats()
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(profile_name=config.profile)
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {config.profile!r} not found in the AWS config files") from None
        if session.get_credentials() is None:
            raise ConfigError("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "use --profile, or configure ~/.aws/credentials")
        boto_config = BotoConfig(
            region_name=config.region,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=config.max_connections,
            s3={"addressing_style": "path"} if config.endpoint_url else {},
            tcp_keepalive=True,
        )
        self._client = session.client("s3", endpoint_url=config.endpoint_url, config=boto_config)

    def _pages(self, prefix: str, max_keys: int | None = None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
        if max_keys:
            params["MaxKeys"] = max_keys
        while True:
            started = time.monotonic()
            try:
                page = self._client.list_objects_v2(**params)
            except Exception as error:
                self.stats.record("ListObjectsV2", error=_error_code(error))
                log.debug("LIST %s failed after %.3fs: %s", prefix, time.monotonic() - started,
                          _error_code(error))
                raise classify(error, f"list {prefix}") from None
            self.stats.record("ListObjectsV2")
            log.debug("LIST %s -> %d keys %.3fs", prefix, page.get("KeyCount", 0), time.monotonic() - started)
            yield page
            if max_keys or not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def list_dir(self, prefix: str) -> Listing:
        prefixes: list[str] = []
        objects: list[ObjectInfo] = []
        for page in self._pages(prefix):
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
            objects.extend(
                ObjectInfo(o["Key"], int(o["Size"]), o["ETag"].strip('"'), o["LastModified"].timestamp())
                for o in page.get("Contents", ())
            )
        return Listing(tuple(prefixes), tuple(objects))

    def probe(self, prefix: str) -> bool:
        page = next(self._pages(prefix, max_keys=1))
        return bool(page.get("KeyCount") or page.get("Contents") or page.get("CommonPrefixes"))

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        started = time.monotonic()
        what = f"get {key} [{start}, {end})"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                               IfMatch=f'"{etag}"')
            body: bytes = response["Body"].read()
        except Exception as error:
            self.stats.record("GetObject", error=_error_code(error))
            log.debug("GET %s bytes=%d-%d failed after %.3fs: %s", key, start, end - 1,
                      time.monotonic() - started, _error_code(error))
            raise classify(error, what) from None
        self.stats.record("GetObject", len(body))
        log.debug("GET %s bytes=%d-%d -> %d bytes %.3fs", key, start, end - 1, len(body),
                  time.monotonic() - started)
        if len(body) != end - start:
            raise TransientError(f"{what}: short body ({len(body)} of {end - start} bytes)")
        return body
