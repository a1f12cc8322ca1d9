"""Benchmark of the derived views on the full-shape synthetic warehouse (../shared/scale/synths3.py).

    python bench/views.py --latency-ms 20 --scale 0.1 --runs 3

1. A CT series of about 240 slices as one volume, cold (new cache, page cache dropped), time to the last
   byte of ``.nccidfs/volumes/ct/.../<series>.nii`` (its lookup plans it from the twins, its reads make
   it from the images), against ``dcm2niix`` run over the same series in the mount (also cold), each run
   with the daemon's CPU seconds, the ratio and the load average; and the volume read again warm.
2. The catalog: ``nccidfs catalog build`` of the whole mounted warehouse: time, the daemon's CPU time, S3
   requests by kind (from the server's counters) and the daemon's peak RSS; then the same build again
   with nothing changed; then, as after new data arrives, the server restarted on the same port with
   ``--new-patients`` more patients (synths3's patients at a larger scale are those of the smaller one
   and more), ``nccidfs refresh`` and a build; then a build with ``--relist``.

Runs as root (FUSE, drop_caches). Prints one Markdown table per measure; medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# synths3's patients at scale 1.0; at a larger scale, the same patients and more.
FULL_PATIENTS = 19_700
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_synths3(shared: Path, scale: float, latency_ms: int, port: int) -> subprocess.Popen[bytes]:
    """synths3 on ``port``, once it answers."""
    server = subprocess.Popen([sys.executable, str(shared / "scale" / "synths3.py"), "--scale", str(scale),
                               "--port", str(port), "--latency-ms", str(latency_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return server


def stop_synths3(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=10)


@contextmanager
def synths3(shared: Path, scale: float, latency_ms: int) -> Iterator[str]:
    port = free_port()
    server = start_synths3(shared, scale, latency_ms, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_synths3(server)


def stats(endpoint: str, reset: bool = False) -> dict[str, int]:
    url = f"{endpoint}/_stats" + ("?reset=1" if reset else "")
    return dict(json.loads(urllib.request.urlopen(url, timeout=10).read())["requests"])


@contextmanager
def mounted(endpoint: str, workdir: Path) -> Iterator[tuple[Path, int]]:
    """A fresh nccidfs mount (new cache) in the foreground; yields (mount point, daemon pid)."""
    mountpoint, cache = workdir / "mnt", workdir / "cache"
    mountpoint.mkdir(parents=True)
    with open(workdir / "log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "nccidfs", "mount", str(mountpoint), "-f",
                                   "--endpoint-url", endpoint, "--cache-dir", str(cache), "--cache-size", "20G",
                                   "--log-level", "warning"], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "log").read_text())
            time.sleep(0.05)
        yield mountpoint, daemon.pid
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def drop_caches() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pick_series(mountpoint: Path, slices: int) -> str:
    """The CT series (path in the mount) whose slice count is closest to ``slices``, among the first patients."""
    best: tuple[int, str] = (10**9, "")
    for patient in sorted(os.listdir(mountpoint / "ct"))[:40]:
        for study in os.listdir(mountpoint / "ct" / patient):
            for series in os.listdir(mountpoint / "ct" / patient / study):
                count = len(os.listdir(mountpoint / "ct" / patient / study / series))
                best = min(best, (abs(count - slices), f"ct/{patient}/{study}/{series}"))
    return best[1]


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def bench_volume(endpoint: str, runs: int, slices: int) -> None:
    """Each run: the volume cold on a fresh mount, then dcm2niix cold on another, so each ratio compares
    two reads made moments apart (load on a shared machine moves both); the daemon's CPU seconds beside."""
    with tempfile.TemporaryDirectory() as tmp, mounted(endpoint, Path(tmp)) as (mountpoint, _):
        series = pick_series(mountpoint, slices)
    count = 0
    rows: list[tuple[float, float, float, float, float, float]] = []
    cold, warm, reference, peaks = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp, mounted(endpoint, Path(tmp)) as (mountpoint, pid):
            count = len(os.listdir(mountpoint / series))
            volume = mountpoint / ".nccidfs" / "volumes" / f"{series}.nii"
            drop_caches()
            cpu = cpu_seconds(pid)
            cold.append(timed(["cat", str(volume)]))
            cold_cpu = cpu_seconds(pid) - cpu
            drop_caches()
            warm.append(timed(["cat", str(volume)]))
            peaks.append(peak_rss_mib(pid))
        with tempfile.TemporaryDirectory() as tmp, mounted(endpoint, Path(tmp)) as (mountpoint, pid):
            out = Path(tmp) / "out"
            out.mkdir()
            drop_caches()
            cpu = cpu_seconds(pid)
            reference.append(timed(["dcm2niix", "-z", "n", "-o", str(out), str(mountpoint / series)]))
            reference_cpu = cpu_seconds(pid) - cpu
        rows.append((cold[-1], cold_cpu, reference[-1], reference_cpu, reference[-1] / cold[-1], os.getloadavg()[0]))
    print(f"\n### A {count}-slice CT series as one volume, each run\n")
    print("| run | `cat` of the `.nii`, cold: s | daemon CPU s | dcm2niix over the mount, cold: s | daemon CPU s "
          "| dcm2niix / `cat` | load (1 min) |\n|---|---|---|---|---|---|---|")
    for number, row in enumerate(rows, 1):
        print(f"| {number} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.2f} | {row[4]:.2f} | {row[5]:.1f} |")
    print(f"\n### Medians of {runs} runs\n")
    print("| what | seconds | ratio |\n|---|---|---|")
    print(f"| `cat` of the `.nii` view, cold (made from the images) | {statistics.median(cold):.2f} | 1.00 |")
    print(f"| dcm2niix over the same series in the mount, cold | {statistics.median(reference):.2f} | "
          f"{statistics.median(reference) / statistics.median(cold):.2f} |")
    print(f"| `cat` of the `.nii` view again, from the cache | {statistics.median(warm):.2f} | "
          f"{statistics.median(warm) / statistics.median(cold):.2f} |")
    print(f"\ndaemon peak RSS while making it: {statistics.median(peaks):.0f} MiB")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (load on a shared machine stretches wall time, not this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Build = tuple[float, float, dict[str, int], str]


def catalog_build(endpoint: str, mountpoint: Path, pid: int, *options: str) -> Build:
    """One ``nccidfs catalog build``: (seconds, daemon CPU seconds, S3 requests by kind, its summary line)."""
    stats(endpoint, reset=True)
    cpu, started = cpu_seconds(pid), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nccidfs", "catalog", "build", str(mountpoint), *options],
                          env=ENV, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"catalog build {' '.join(options)} exited {done.returncode}: {done.stderr.strip()}")
    return time.monotonic() - started, cpu_seconds(pid) - cpu, stats(endpoint), done.stdout.strip()


def bench_catalog(shared: Path, scale: float, latency_ms: int, runs: int, new_patients: int) -> None:
    """A whole catalog on a fresh mount; again with nothing changed; after new patients arrive and a
    refresh; and with every patient folder listed again (``--relist``)."""
    names = ("whole warehouse, fresh cache", "again, nothing changed",
             f"after a refresh that adds {new_patients} patients", "again with `--relist`")
    results: dict[str, list[Build]] = {name: [] for name in names}
    peaks, loads = [], []
    grown = scale + new_patients / FULL_PATIENTS
    for _ in range(runs):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        server = start_synths3(shared, scale, latency_ms, port)
        try:
            with tempfile.TemporaryDirectory() as tmp, mounted(endpoint, Path(tmp)) as (mountpoint, pid):
                results[names[0]].append(catalog_build(endpoint, mountpoint, pid))
                peaks.append(peak_rss_mib(pid))
                results[names[1]].append(catalog_build(endpoint, mountpoint, pid))
                stop_synths3(server)  # new data arrives: the same endpoint, with more patients
                server = start_synths3(shared, grown, latency_ms, port)
                subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(mountpoint)], env=ENV, cwd=REPO,
                               check=True, stdout=subprocess.DEVNULL)
                results[names[2]].append(catalog_build(endpoint, mountpoint, pid))
                results[names[3]].append(catalog_build(endpoint, mountpoint, pid, "--relist"))
        finally:
            stop_synths3(server)
        loads.append(os.getloadavg()[0])
    print(f"\n### The catalog, `nccidfs catalog build`, medians of {runs} runs\n")
    for name in names:
        print(f"{name}: {results[name][-1][3]}")
    print("\n| build | seconds | daemon CPU s | requests | of which LIST | of which GET |\n|---|---|---|---|---|---|")
    for name in names:
        middle = sorted(results[name], key=lambda r: r[0])[len(results[name]) // 2]
        requests = middle[2]
        print(f"| {name} | {middle[0]:.1f} | {middle[1]:.1f} | {sum(requests.values())} | "
              f"{requests.get('ListObjectsV2', 0)} | "
              f"{requests.get('GetObject', 0) + requests.get('GetObject(range)', 0)} |")
    print(f"\ndaemon peak RSS: {statistics.median(peaks):.0f} MiB; load average (1 min) after each run: "
          f"{', '.join(f'{load:.1f}' for load in loads)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared", help="holds scale/synths3.py")
    parser.add_argument("--scale", type=float, default=0.1, help="synths3 scale for the catalog (default 0.1)")
    parser.add_argument("--latency-ms", type=int, default=20, help="added to every request (default 20)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=240, help="the CT series' size to look for")
    parser.add_argument("--skip", choices=("volume", "catalog"), action="append", default=[])
    parser.add_argument("--new-patients", type=int, default=100,
                        help="patients the warehouse grows by before the refreshed catalog (default 100)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/views.py needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    print(f"synths3 scale {args.scale}, {args.latency_ms} ms per request; machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "volume" not in args.skip:
        with synths3(args.shared_dir, args.scale, args.latency_ms) as endpoint:
            bench_volume(endpoint, args.runs, args.slices)
    if "catalog" not in args.skip:
        bench_catalog(args.shared_dir, args.scale, args.latency_ms, args.runs, args.new_patients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
