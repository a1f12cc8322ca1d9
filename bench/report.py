"""Turn the benchmark's samples into one table of medians and ratios, as Markdown and as JSON.

Every ratio is another system's median time divided by nccidfs's median time for the same workload in the
same invocation (for throughput rows that is nccidfs's MB/s over the other's): above 1, nccidfs is faster.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

PEERS = ("s3fs", "rclone")
# What FUSE costs without Python: bindfs, a FUSE filesystem written in C, over nccidfs's own cache files.
C_FUSE = "C FUSE over cached files"
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class Sample:
    """One timed run of one workload on one system, with the S3 requests it caused."""

    seconds: float | None
    requests: dict[str, int]
    bytes_out: int
    note: str = ""
    bytes_read: int = 0  # what the workload read, when it reports it (throughput rows)
    cpu_seconds: float | None = None  # CPU of the daemon, or of the SDK's own process for a baseline

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


@dataclass(frozen=True)
class Median:
    seconds: float
    requests: float
    bytes_out: float
    runs: int
    bytes_read: float = 0
    cpu_seconds: float | None = None

    def cpu_per_gib(self) -> float | None:
        return self.cpu_seconds / (self.bytes_read / GIB) if self.cpu_seconds is not None and self.bytes_read else None


@dataclass(frozen=True)
class Row:
    workload: str
    label: str
    limits: tuple[str, ...] = ()
    rate: bool = False  # shown as MB/s of the bytes read (of the large object when the workload does not say)
    show_bytes: bool = False
    show_cpu: bool = False  # CPU seconds per GiB read


@dataclass(frozen=True)
class Result:
    markdown: str
    document: dict[str, Any]


Samples = Mapping[str, Mapping[str, list[Sample]]]


def median(samples: list[Sample]) -> Median | None:
    done = [s for s in samples if s.seconds is not None]
    if not done:
        return None
    cpus = [s.cpu_seconds for s in done if s.cpu_seconds is not None]
    return Median(statistics.median(s.seconds for s in done if s.seconds is not None),
                  statistics.median(s.total_requests for s in done), statistics.median(s.bytes_out for s in done),
                  len(done), statistics.median(s.bytes_read for s in done), statistics.median(cpus) if cpus else None)


def rows(context: dict[str, Any], samples: Samples) -> list[Row]:
    reading, wide = context["reading"], context["wide"]
    slices, big = reading["slices"], f"{reading['big_bytes'] / MIB:.0f} MiB"
    loader = context.get("loader", {})
    table = [
        *(Row(name, f"data loader, {loader['files']} whole images at random from {loader['series']} series, "
                    f"{name.split()[1]} reader{'' if name.split()[1] == '1' else 's'}, {name.split()[2]}",
              (f"boto3 {name.split()[1]} threads", f"boto3 {name.split()[1]} threads + MD5 + file", "cached file",
               C_FUSE), rate=True, show_bytes=True, show_cpu=True)
          for name in loader_workloads(samples)),
        Row("header scan", f"header scan, {slices} slices (pydicom stop_before_pixels), cold, nccidfs prefetch off",
            show_bytes=True),
        Row("header scan prefetch", f"header scan, {slices} slices, cold, nccidfs prefetch on (default)",
            show_bytes=True),
        Row("series cat", f"series file by file ({slices} x cat), cold", ("aws s3 sync", "boto3")),
        Row("dcm2niix", f"dcm2niix on the series ({slices} slices), cold"),
        Row("big cold", f"{big} object, dd bs=1M, cold", ("aws s3 cp", "boto3", "boto3 get", "cached file", C_FUSE),
            rate=True, show_cpu=True),
        Row("big warm", f"{big} object, dd bs=1M, warm", ("cached file",), rate=True),
        Row("find cold", f"find -type f, {wide['objects']:,} files, {wide['patients']:,} patients, cold"),
        Row("find warm", "find -type f, warm"),
        Row("find -size +0", "find -type f -size +0 (a stat per file), warm"),
        Row("ls -l widest", f"ls -l data/ ({wide['patients']:,} entries), warm"),
        Row("stat missing", f"stat {wide['missing_names']:,} missing names in data/, warm"),
    ]
    table += [Row(name, f"synths3 scale {name.split()[1]}: find ct-metadata -type f, cold")
              for name in sorted(samples) if name.startswith("synth ")]
    return [row for row in table if row.workload in samples]


def loader_workloads(samples: Samples) -> list[str]:
    """``loader N cold`` and ``loader N warm`` rows, by readers, cold first."""
    names = [name for name in samples if name.startswith("loader ")]
    return sorted(names, key=lambda name: (int(name.split()[1]), name.split()[2] != "cold"))


def rate(stats: Median, big_bytes: int) -> float:
    """MB/s of what the workload read."""
    return (stats.bytes_read or big_bytes) / 1e6 / stats.seconds


def _cell(row: Row, stats: Median | None, samples: list[Sample], big_bytes: int, most_runs: int) -> str:
    """Median value and requests; a timed-out workload shows its bound and the requests made by then."""
    if stats is None:
        if not samples:
            return "-"
        first = samples[0]
        if first.note.startswith("timed out after "):
            return f"> {first.note.split()[3].rstrip('s')} s · {first.total_requests:,} req (timed out)"
        return f"failed ({first.note})"
    value = f"{rate(stats, big_bytes):,.0f} MB/s" if row.rate else f"{stats.seconds:,.2f} s"
    value += f" · {stats.requests:,.0f} req"
    if row.show_bytes:
        value += f" · {stats.bytes_out / 1e6:,.1f} MB"
    cpu = stats.cpu_per_gib()
    if row.show_cpu and cpu is not None:
        value += f" · {cpu:,.1f} CPU s/GiB"
    if stats.runs < len(samples):
        value += f" ({len(samples) - stats.runs} of {len(samples)} failed)"
    elif len(samples) < most_runs:
        value += f" ({len(samples)} run{'s' if len(samples) > 1 else ''})"
    return value


def _ratio(other: Median | None, ours: Median | None, big_bytes: int) -> str:
    """nccidfs's rate over the other's (for rows of equal bytes, the other's time over nccidfs's)."""
    if other is None or ours is None or ours.seconds <= 0 or other.seconds <= 0:
        return "-"
    return f"{rate(ours, big_bytes) / rate(other, big_bytes):.2f}x"


def _memory(memory: Mapping[str, Mapping[str, Mapping[str, int]]], role: str, system: str) -> str:
    values = memory.get(system, {}).get(role)
    if not values:
        return "-"
    return f"{values.get('VmRSS', 0) / 1024:,.0f} / {values.get('VmHWM', 0) / 1024:,.0f} MiB"


def _runs(count: int) -> str:
    return "one run" if count == 1 else f"medians of {count} runs"


def build(context: dict[str, Any], samples: Samples, memory: Mapping[str, Mapping[str, Mapping[str, int]]],
          findings: list[str], log_lines: Mapping[str, list[str]]) -> Result:
    big_bytes = context["reading"]["big_bytes"]
    header = ["workload", "nccidfs", *PEERS, "limits", "vs faster peer", "vs limits"]
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    table: list[dict[str, Any]] = []
    for row in rows(context, samples):
        per = samples[row.workload]
        medians = {system: median(list(found)) for system, found in per.items()}
        ours = medians.get("nccidfs")
        peers = [(medians[p].seconds, p) for p in PEERS if medians.get(p) is not None]  # type: ignore[union-attr]
        best = min(peers)[1] if peers else None
        limits = [limit for limit in row.limits if limit in per]
        most = max(len(found) for found in per.values())
        cells = [_cell(row, medians.get(s), list(per.get(s, [])), big_bytes, most) for s in ("nccidfs", *PEERS)]
        limit_cells = [f"{limit}: {_cell(row, medians[limit], list(per[limit]), big_bytes, most)}" for limit in limits]
        lines.append("| " + " | ".join([
            row.label, *cells, "; ".join(limit_cells) or "-",
            f"{_ratio(medians[best], ours, big_bytes)} ({best})" if best else "-",
            "; ".join(f"{_ratio(medians[limit], ours, big_bytes)} {limit}" for limit in limits) or "-",
        ]) + " |")
        table.append({"workload": row.workload, "label": row.label,
                      "medians": {s: asdict(m) if m else None for s, m in medians.items()},
                      "faster_peer": best})
    for role, label in (("after walk", "daemon memory after the cold walk (VmRSS / VmHWM)"),
                        ("read", "daemon peak memory over the read workloads (VmRSS / VmHWM at the end)")):
        if any(role in memory.get(s, {}) for s in ("nccidfs", *PEERS)):
            lines.append(f"| {label} | " + " | ".join(_memory(memory, role, s) for s in ("nccidfs", *PEERS))
                         + " | - | - | - |")
    for role in sorted(r for r in memory.get("nccidfs", {}) if r.startswith("synth ") and r.endswith("after walk")):
        lines.append(f"| nccidfs memory, {role} | {_memory(memory, role, 'nccidfs')} | - | - | - | - | - |")
    md = [f"## Results {context['date']}, latency {context['latency_ms']:g} ms",
          "",
          f"{context['cores']} cores, Linux {context['kernel']}; {_runs(context['runs'])} of the read workloads, "
          f"{_runs(context['listing_runs'])} of the listings; whole invocation {context['seconds']} s. "
          f"Slices of {context['reading']['slice_bytes']:,} B; large object {big_bytes:,} B. "
          "A ratio is the other's time over nccidfs's: above 1, nccidfs is faster.",
          "", *lines, ""]
    others = "; ".join(f"{name} {version}" for name, version in context["versions"].items() if name != "nccidfs")
    md += [f"Versions: {context['versions']['nccidfs']} at {context['nccidfs_code']}; {others}.", ""]
    if not context["prefetch_flag"]:
        md += ["nccidfs has no --prefetch/--no-prefetch flag yet: every row runs without series prefetch.", ""]
    if context["notes"] or findings:
        md += ["Findings:", "", *(f"- {line}" for line in [*context["notes"], *findings]), ""]
    for system, found in log_lines.items():
        if found:
            md += [f"{system} log, warning and error lines ({len(found)} distinct, first 10):", "", "```",
                   *found[:10], "```", ""]
    document = {"context": context, "rows": table, "memory": memory, "findings": findings,
                "log_lines": dict(log_lines),
                "samples": {w: {s: [asdict(x) for x in xs] for s, xs in per.items()} for w, per in samples.items()}}
    return Result("\n".join(md), document)
