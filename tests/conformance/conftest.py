"""The backends the conformance suite runs against: the in-memory store the unit tests use (alone, and
inside a FailingStore with no fault, which must change nothing), and the S3 store over moto's HTTP
server. Each test gets an empty bucket of its own and a store with fresh counters."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from nccidfs.config import S3Config
from nccidfs.s3.store import Boto3Store
from nccidfs.store.protocol import ObjectStore
from tests.fakes import FailingStore, MemoryStore
from tests.mounting import REGION, s3_client

# Short enough that a store retrying what it should not fails the test in seconds, not minutes.
DEADLINE = 5.0
# S3's smallest part of a multipart upload but the last.
MIN_PART = 5 * 1024**2
# Parallel uploads when a test seeds many objects into moto.
SEED_THREADS = 8


@dataclass
class Backend:
    """A store under test and the means to change what it holds behind its back."""

    store: ObjectStore
    put: Callable[[str, bytes], None]
    put_in_parts: Callable[[str, list[bytes]], None]
    delete: Callable[[str], None]

    def put_all(self, objects: Iterable[tuple[str, bytes]]) -> None:
        with ThreadPoolExecutor(SEED_THREADS) as pool:
            list(pool.map(lambda item: self.put(*item), objects))


def memory_backend() -> Backend:
    store = MemoryStore()

    def put_in_parts(key: str, parts: list[bytes]) -> None:
        store.objects[key] = b"".join(parts)
        store.parts[key] = len(parts)

    return Backend(store, store.objects.__setitem__, put_in_parts, store.objects.__delitem__)


def s3_backend(endpoint: str) -> Backend:
    bucket = f"nccid-conformance-{uuid.uuid4().hex[:12]}"
    client: Any = s3_client(endpoint)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body)

    def put_in_parts(key: str, parts: list[bytes]) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = [{"PartNumber": number, "ETag": client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=part)["ETag"]}
            for number, part in enumerate(parts, 1)]
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})

    def delete(key: str) -> None:
        client.delete_object(Bucket=bucket, Key=key)

    store = Boto3Store(S3Config(bucket=bucket, endpoint_url=endpoint, deadline=DEADLINE))
    return Backend(store, put, put_in_parts, delete)


@pytest.fixture(params=["memory", "failing-memory", "s3"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return memory_backend()
    if request.param == "failing-memory":
        memory = memory_backend()
        return Backend(FailingStore(memory.store), memory.put, memory.put_in_parts, memory.delete)
    return s3_backend(request.getfixturevalue("s3_endpoint"))
