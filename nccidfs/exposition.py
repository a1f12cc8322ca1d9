"""Prometheus metrics of a running daemon, for ``nccidfs metrics MOUNTPOINT`` and ``--metrics-addr``.

Most figures are the counters the daemon keeps anyway for ``status`` (cache, S3 requests, listings), read
when a scraper asks; latencies come from :mod:`nccidfs.metrics`. prometheus_client writes the text format
and serves it over HTTP. The daemon imports this module at its first scrape only (about 10 ms and half a
MiB of memory, measured beside boto3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nccidfs.metrics import FILESYSTEM, LATENCY_BUCKETS, CallStats, Latencies


class DaemonCollector(Collector):
    """Reads the daemon's figures when scraped."""

    def __init__(self, status: Callable[[], dict[str, Any]], s3: Latencies | None,
                 calls: CallStats = FILESYSTEM) -> None:
        self._status = status
        self._s3 = s3
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        cache, s3, listings = status["cache"], status.get("s3") or {}, status["listings"]
        yield InfoMetricFamily("nccidfs", "the mount", value={
            "version": status["version"], "bucket": status["bucket"], "prefix": status["prefix"],
            "mountpoint": status["mountpoint"]})
        yield GaugeMetricFamily("nccidfs_uptime_seconds", "time since the daemon started",
                                value=status["uptime_seconds"])
        requests = CounterMetricFamily("nccidfs_s3_requests", "S3 requests by kind, failed ones included",
                                       labels=["kind"])
        for kind, count in sorted(s3.get("requests", {}).items()):
            requests.add_metric([kind], count)
        yield requests
        failures = CounterMetricFamily("nccidfs_s3_request_errors", "S3 requests that failed, by error code",
                                       labels=["code"])
        for code, count in sorted(s3.get("errors", {}).items()):
            failures.add_metric([code], count)
        yield failures
        yield CounterMetricFamily("nccidfs_s3_received_bytes", "bytes of object bodies received from S3",
                                  value=s3.get("bytes_fetched", 0))
        if self._s3 is not None:
            yield _histogram("nccidfs_s3_request_duration_seconds", "S3 requests by kind, each attempt",
                             "kind", self._s3)
        yield _histogram("nccidfs_fs_request_duration_seconds", "filesystem calls by operation", "operation",
                         self._calls.latencies)
        errors = CounterMetricFamily("nccidfs_fs_errors", "errors returned to filesystem calls, by errno "
                                     "(ENOENT: names that do not exist)", labels=["errno"])
        for name, count in sorted(self._calls.errors().items()):
            errors.add_metric([name], count)
        yield errors
        yield from _families({
            "nccidfs_cache_hits": ("blocks read from the disk cache", cache["hits"]),
            "nccidfs_cache_misses": ("blocks fetched from S3", cache["misses"]),
            "nccidfs_cache_evictions": ("cached objects evicted to stay under the bound", cache["evictions"]),
            "nccidfs_prefetch_bytes": ("bytes fetched ahead of a reader of a series",
                                       (status.get("prefetch") or {}).get("bytes", 0)),
            "nccidfs_derived_blocks_built": ("blocks of derived files (volumes, images) built from their inputs",
                                             status["derived"]["blocks_built"]),
            "nccidfs_derived_blocks_cached": ("blocks of derived files read from the disk cache",
                                              status["derived"]["blocks_cached"]),
        }, CounterMetricFamily)
        yield from _families({
            "nccidfs_cache_used_bytes": ("bytes the disk cache holds", cache["used_bytes"]),
            "nccidfs_cache_bound_bytes": ("the disk cache's bound (--cache-size)", cache["bound_bytes"]),
            "nccidfs_cache_objects": ("objects in the disk cache", cache["objects"]),
            "nccidfs_listing_entries": ("directory entries of listings held in memory",
                                        listings["entries_in_memory"]),
            "nccidfs_listing_directories_indexed": ("directories in the on-disk listing index",
                                                    listings["directories_indexed"]),
            "nccidfs_open_files": ("files open through the mount", status["open_files"]),
            "nccidfs_downloads_in_flight": ("ranged GETs under way", len(status["in_flight"])),
        }, GaugeMetricFamily)


def _families(figures: dict[str, tuple[str, float]], family: Any) -> Iterator[Metric]:
    for name, (documentation, value) in figures.items():
        yield family(name, documentation, value=value)


def _histogram(name: str, documentation: str, label: str, latencies: Latencies) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for kind, (counts, total) in sorted(latencies.snapshot().items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([kind], buckets, total)
    return family


class Exposition:
    """The daemon's metrics in Prometheus's text format, and optionally over HTTP."""

    def __init__(self, collector: DaemonCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> None:
        """Answer scrapes at http://HOST:PORT/metrics from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
