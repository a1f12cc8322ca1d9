"""Tests of tests/faultproxy.py: boto3 (no retries) through the proxy to moto sees each fault as S3 would show it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError, ResponseStreamingError

from tests.faultproxy import FaultProxy
from tests.mounting import CREDENTIALS, REGION, create_bucket

KEY = "training/ct/p1/s1/r1/1.dcm"
OTHER = "training/data/p1/status.json"
BODY = os.urandom(200 * 1024)


def proxied_client(proxy: FaultProxy, read_timeout: float = 10.0) -> Any:
    """A boto3 client through the proxy that makes exactly one attempt per call."""
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=read_timeout)
    return boto3.client("s3", endpoint_url=proxy.url, region_name=REGION, config=config,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def proxy(s3_endpoint: str, bucket_name: str) -> Iterator[FaultProxy]:
    create_bucket(s3_endpoint, bucket_name, [(KEY, BODY), (OTHER, b"{}")])
    with FaultProxy(s3_endpoint) as running:
        yield running


@pytest.fixture
def s3(proxy: FaultProxy) -> Any:
    return proxied_client(proxy)


def get(s3: Any, bucket: str, key: str = KEY) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def test_pass_through_and_counters(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    s3.put_object(Bucket=bucket_name, Key="training/ct/new", Body=b"x" * 5000)
    listing = s3.list_objects_v2(Bucket=bucket_name, Prefix="training/ct/", Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["training/ct/p1/"]
    assert s3.head_object(Bucket=bucket_name, Key=KEY)["ContentLength"] == len(BODY)
    assert get(s3, bucket_name, "training/ct/new") == b"x" * 5000
    assert s3.get_object(Bucket=bucket_name, Key=KEY, Range="bytes=10-19")["Body"].read() == BODY[10:20]
    counts = proxy.counts()
    assert counts.pop("bytes") > len("x" * 5000) + 10
    assert counts == {"ListObjectsV2": 1, "GetObject": 1, "GetObject(range)": 1, "HeadObject": 1,
                      "PutObject": 1, "other": 0}
    proxy.reset_counts()
    assert get(s3, bucket_name) == BODY
    assert proxy.counts()["bytes"] == len(BODY)
    assert proxy.counts()["GetObject"] == 1


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"),
                                              (403, "AccessDenied"), (404, "NoSuchKey")])
def test_fail_answers_with_an_s3_error(proxy: FaultProxy, s3: Any, bucket_name: str, status: int,
                                       code: str) -> None:
    rule = proxy.fail(status, code, times=2)
    with pytest.raises(ClientError) as raised:
        get(s3, bucket_name)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert raised.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as raised:
        s3.head_object(Bucket=bucket_name, Key=KEY)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert get(s3, bucket_name) == BODY
    assert (rule.hits, rule.remaining) == (2, 0)
    assert proxy.counts()["GetObject"] == 2


def test_rules_match_by_op_method_key_and_pattern(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    proxy.fail(500, "InternalError", op="list", key="training/data/")
    proxy.fail(403, "AccessDenied", method="HEAD")
    proxy.fail(404, "NoSuchKey", op="get", pattern=r"\.json$")
    assert s3.list_objects_v2(Bucket=bucket_name, Prefix="training/ct/")["KeyCount"] == 1
    with pytest.raises(ClientError, match="InternalError"):
        s3.list_objects_v2(Bucket=bucket_name, Prefix="training/data/")
    with pytest.raises(ClientError, match="403"):
        s3.head_object(Bucket=bucket_name, Key=KEY)
    with pytest.raises(ClientError, match="NoSuchKey"):
        get(s3, bucket_name, OTHER)
    assert get(s3, bucket_name) == BODY
    proxy.clear()
    assert get(s3, bucket_name, OTHER) == b"{}"


def test_reset_after_is_a_connection_error_mid_body(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    proxy.reset_after(10_000, times=1)
    with pytest.raises(ResponseStreamingError, match="reset"):
        get(s3, bucket_name)
    assert 0 < proxy.counts()["bytes"] <= 10_000
    assert get(s3, bucket_name) == BODY


def test_truncate_is_an_incomplete_read(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    proxy.truncate(times=1)
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        get(s3, bucket_name)
    assert proxy.counts()["bytes"] == len(BODY) // 2
    assert get(s3, bucket_name) == BODY


def test_stall_delays_the_answer(proxy: FaultProxy, bucket_name: str) -> None:
    proxy.stall(0.5, times=1)
    started = time.monotonic()
    assert get(proxied_client(proxy), bucket_name) == BODY
    assert time.monotonic() - started >= 0.5
    proxy.stall(30, times=1)
    with pytest.raises(ReadTimeoutError):
        get(proxied_client(proxy, read_timeout=0.5), bucket_name)


def test_throttle_paces_the_body(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    proxy.throttle(1024 * 1024, times=1)
    started = time.monotonic()
    assert get(s3, bucket_name) == BODY
    assert time.monotonic() - started >= 0.9 * len(BODY) / (1024 * 1024)


def test_dead_closes_every_connection_until_clear(proxy: FaultProxy, s3: Any, bucket_name: str) -> None:
    assert get(s3, bucket_name) == BODY  # leaves a keep-alive connection in the client's pool
    proxy.dead()
    for _ in range(3):
        with pytest.raises(ConnectionClosedError):
            s3.list_objects_v2(Bucket=bucket_name, Prefix="training/")
    proxy.clear()
    assert get(s3, bucket_name) == BODY


def test_stop_is_prompt_and_leaves_no_thread(proxy: FaultProxy, bucket_name: str) -> None:
    s3 = proxied_client(proxy, read_timeout=60)
    assert get(s3, bucket_name) == BODY
    proxy.stall(60, times=2)
    proxy.throttle(1024)
    errors: list[Exception] = []

    def stalled_get() -> None:
        try:
            get(s3, bucket_name)
        except Exception as error:
            errors.append(error)

    clients = [threading.Thread(target=stalled_get) for _ in range(3)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 5
    while proxy.counts()["GetObject"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    for thread in clients:
        thread.join(timeout=5)
    assert len(errors) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
