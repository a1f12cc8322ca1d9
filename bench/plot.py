"""Draw a benchmark's results.json as one PNG: a panel per workload, a bar per filesystem and baseline.

Throughput rows (the data loader, the large object) are drawn as MB/s, higher is better; the others as
seconds, lower is better. Needs matplotlib (``pip install -e .[bench]``).

    python bench/plot.py RESULTS.json [OUT.png]
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import report

COLOURS = {"nccidfs": "tab:blue", "s3fs": "tab:orange", "rclone": "tab:green"}


def _bars(row: dict[str, Any], big_bytes: int, throughput: bool) -> list[tuple[str, float]]:
    bars = []
    for system, found in row["medians"].items():
        if found is None:
            continue
        stats = report.Median(**found)
        bars.append((system, report.rate(stats, big_bytes) if throughput else stats.seconds))
    order = {name: n for n, name in enumerate(("nccidfs", *report.PEERS))}
    return sorted(bars, key=lambda bar: (order.get(bar[0], len(order)), bar[0]))


def draw(document: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in document["rows"] if any(row["medians"].values())]
    big_bytes = document["context"]["reading"]["big_bytes"]
    columns = 3
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 3.6 * lines), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        throughput = row["workload"].startswith(("loader ", "big "))
        bars = _bars(row, big_bytes, throughput)
        names = [name for name, _ in bars]
        ax.barh(names, [value for _, value in bars], color=[COLOURS.get(name, "tab:gray") for name in names])
        ax.invert_yaxis()
        ax.set_title(textwrap.fill(row["label"], 60), fontsize=8)
        ax.set_xlabel("MB/s (higher is better)" if throughput else "seconds (lower is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        for index, (_, value) in enumerate(bars):
            ax.text(value, index, f" {value:,.0f}" if throughput else f" {value:,.2f}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    context = document["context"]
    figure.suptitle(f"nccidfs benchmark, {context['date']}, {context['latency_ms']:g} ms per request, "
                    f"{context['cores']} cores", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def main(argv: list[str]) -> int:
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else source.with_name("results.png")
    draw(json.loads(source.read_text()), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
