"""Listing pages sent without botocore's machinery ask what botocore itself would ask."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.awsrequest import AWSResponse

from nccidfs.config import S3Config
from nccidfs.errors import CorruptData
from nccidfs.s3.store import Boto3Store
from tests.mounting import CREDENTIALS

PAGE = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>training/ct/</Prefix><IsTruncated>false</IsTruncated></ListBucketResult>")


class _Body:
    status = 200

    def read(self, limit: int) -> bytes:
        return PAGE

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield PAGE

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", None])
@pytest.mark.parametrize("call", [
    {"Prefix": "training/ct/", "Delimiter": "/"},
    {"Prefix": "training/ct/P 1+/", "StartAfter": "training/ct/P 1+/a&b", "MaxKeys": 1},
    {"Prefix": "training/ct/", "Delimiter": "/", "ContinuationToken": "to/k+en=="},
])
def test_a_listing_page_asks_what_botocore_asks(call: dict[str, Any], endpoint: str | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    store = Boto3Store(S3Config(bucket="nccid-data-warehouse-prod", endpoint_url=endpoint, region="eu-west-2"))
    ours: list[Any] = []
    store._gets._http = SimpleNamespace(send=lambda method, url, headers: ours.append((url, headers)) or _Body())
    theirs: list[Any] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        theirs.append(request)
        return AWSResponse(request.url, 200, {}, _Body())

    store._client.meta.events.register_first("before-send.s3.ListObjectsV2", answer)
    store._client.list_objects_v2(Bucket="nccid-data-warehouse-prod", **call)
    names = {"Prefix": "prefix", "Delimiter": "delimiter", "StartAfter": "start-after", "MaxKeys": "max-keys",
             "ContinuationToken": "continuation-token"}
    store._list_page({names[name]: str(value) for name, value in call.items()})
    ((url, headers),), (botocores,) = ours, theirs
    # Without an endpoint both go to the bucket's own host: botocore names its region there, the GETs'
    # presigned form does not (S3 answers both), so the host is compared where an endpoint fixes it.
    parts = slice(0, 3) if endpoint else slice(2, 3)
    assert urlsplit(url)[parts] == urlsplit(botocores.url)[parts]
    assert urlsplit(url).hostname.startswith("nccid-data-warehouse-prod.") or endpoint  # type: ignore[union-attr]
    assert parse_qs(urlsplit(url).query) == parse_qs(urlsplit(botocores.url).query)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert "/eu-west-2/s3/aws4_request" in headers["Authorization"]


def test_a_listing_page_past_the_bound_is_corrupt_and_not_asked_for_again(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("nccidfs.s3.get.PAGE_LIMIT", len(PAGE) - 1)
    store = Boto3Store(S3Config(bucket="nccid-data-warehouse-prod", endpoint_url="http://127.0.0.1:9", deadline=5))
    sent: list[Any] = []
    store._gets._http = SimpleNamespace(send=lambda method, url, headers: sent.append(url) or _Body())
    with pytest.raises(CorruptData, match="listing page of more than"):
        store.list_dir("training/ct/")
    assert len(sent) == 1
