"""Our SigV4 signatures are botocore's, byte for byte, for every request the mount sends."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from nccidfs.s3.sign import Signer, canonical_query

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
SIGNED = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token")
ENDPOINTS = ["http://127.0.0.1:9000/nccid-bucket/", "https://nccid-bucket.s3.eu-west-2.amazonaws.com/",
             "https://s3.example.org:443/nccid-bucket/", "https://s3.example.org:8443/nccid-bucket/",
             "http://[::1]:9000/nccid-bucket/", "http://localhost/nccid-bucket/"]
PLAIN = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SESSION = Credentials("ASIAEXAMPLE", "secret/with+signs", token="FwoGZXIvYXdzE//token+with/slashes==")


def botocores(credentials: Credentials, url: str, headers: dict[str, str], params: dict[str, str] | None,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW)
    request = AWSRequest("GET", url, headers=dict(headers), params=params or {})
    S3SigV4Auth(credentials, "s3", "eu-west-2").add_auth(request)
    return {name: request.headers[name] for name in SIGNED if name in request.headers}


def ours(credentials: Credentials, url: str, headers: dict[str, str]) -> dict[str, str]:
    signed = Signer(credentials, "eu-west-2", now=lambda: NOW).sign("GET", url, headers)
    return {name: signed[name] for name in SIGNED if name in signed}


@pytest.mark.parametrize("credentials", [PLAIN, SESSION])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("key", ["training/ct/Covid1/1.2.840/1.3.6/img.dcm", "training/data/P 1+é/a&b=c~d.json"])
def test_a_ranged_get_is_signed_as_botocore_signs_it(credentials: Credentials, endpoint: str, key: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = endpoint + quote(key, safe="/~")
    headers = {"Range": "bytes=0-1023", "If-Match": '"0123456789abcdef0123456789abcdef"'}
    assert ours(credentials, url, headers) == botocores(credentials, url, headers, None, monkeypatch)


@pytest.mark.parametrize("credentials", [PLAIN, SESSION])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_listing_page_is_signed_as_botocore_signs_it(credentials: Credentials, endpoint: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"list-type": "2", "prefix": "training/ct/P 1+/", "delimiter": "/", "start-after": "a&b=c",
              "continuation-token": "to/k+en==", "encoding-type": "url"}
    listing = endpoint.rstrip("/") if endpoint.count("/") > 3 else endpoint
    url = f"{listing}?{canonical_query(params)}"
    assert ours(credentials, url, {}) == botocores(credentials, listing, {}, params, monkeypatch)


@settings(max_examples=300, deadline=None)
@given(key=st.text(min_size=1, max_size=40), params=st.dictionaries(st.sampled_from(
    ["prefix", "delimiter", "start-after", "continuation-token", "max-keys"]), st.text(max_size=30)))
def test_any_key_and_query_are_signed_as_botocore_signs_them(key: str, params: dict[str, str]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        url = ENDPOINTS[1] + quote(key, safe="/~")
        headers = {"Range": "bytes=5-9"}
        assert ours(SESSION, url, headers) == botocores(SESSION, url, headers, None, monkeypatch)
        query = {"list-type": "2", **params}
        assert (ours(PLAIN, f"{ENDPOINTS[0][:-1]}?{canonical_query(query)}", {})
                == botocores(PLAIN, ENDPOINTS[0][:-1], {}, query, monkeypatch))


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    days = iter([NOW, NOW.replace(day=15)])
    signer = Signer(PLAIN, "eu-west-2", now=lambda: next(days))
    url = ENDPOINTS[0] + "k"
    first, second = signer.sign("GET", url, {}), signer.sign("GET", url, {})
    assert "20260314/eu-west-2" in first["Authorization"] and "20260315/eu-west-2" in second["Authorization"]
    assert second == Signer(PLAIN, "eu-west-2", now=lambda: NOW.replace(day=15)).sign("GET", url, {})

    class Rotating:
        current = PLAIN

        def get_frozen_credentials(self) -> Credentials:
            return self.current

    rotating = Rotating()
    signer = Signer(rotating, "eu-west-2", now=lambda: NOW)
    before = signer.sign("GET", url, {})
    rotating.current = Credentials("AKIDEXAMPLE", "another secret")
    after = signer.sign("GET", url, {})
    assert after != before
    assert after == Signer(rotating.current, "eu-west-2", now=lambda: NOW).sign("GET", url, {})
