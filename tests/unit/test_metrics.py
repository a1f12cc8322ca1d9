"""Latency histograms and the --metrics-addr value, without a daemon."""

from __future__ import annotations

import pytest

from nccidfs.config import parse_address
from nccidfs.errors import ConfigError
from nccidfs.metrics import LATENCY_BUCKETS, CallStats, Latencies


def test_a_latency_lands_in_the_first_bucket_whose_bound_holds_it() -> None:
    latencies = Latencies()
    for seconds in (0.0001, LATENCY_BUCKETS[1], 0.3, 1000.0):
        latencies.observe("GetObject", seconds)
    counts, total = latencies.snapshot()["GetObject"]
    assert counts[0] == 1 and counts[1] == 1 and counts[LATENCY_BUCKETS.index(0.5)] == 1 and counts[-1] == 1
    assert sum(counts) == 4 and total == pytest.approx(0.0001 + LATENCY_BUCKETS[1] + 0.3 + 1000.0)


def test_errors_are_counted_by_errno_name_and_successes_are_not_errors() -> None:
    calls = CallStats()
    calls.record("read", 0.01, 0)
    calls.record("lookup", 0.001, 2)
    calls.record("lookup", 0.001, 2)
    calls.record("read", 0.01, 5)
    assert calls.errors() == {"ENOENT": 2, "EIO": 1}
    assert sum(calls.latencies.snapshot()["read"][0]) == 2


@pytest.mark.parametrize(("text", "address"), [("9100", ("127.0.0.1", 9100)), (":9100", ("127.0.0.1", 9100)),
                                               ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))])
def test_a_metrics_address_without_a_host_is_loopback(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "host", "host:0", "host:70000", "host:http"])
def test_a_bad_metrics_address_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-addr"):
        parse_address(text)
