"""How fast a mount walks the warehouse, what it asks of S3, and how it answers other calls meanwhile.

Runs ../shared/scale/synths3.py (the warehouse's whole shape, listing of ``training/`` refused) with an
added latency per request, mounts nccidfs on it (a copy of the package, as bench/run.py does) and
measures, each on a fresh mount and empty cache:

- cold ``stat`` of random series files (chosen beforehand with boto3), one after another: the median
  time and the listings they cost;
- ``find FOLDER -type f`` for each folder: seconds, files per second, listings, FUSE requests per
  directory (the daemon's counters), the daemon's CPU seconds (and per request), the load average, and
  the daemon's largest VmRSS, sampled throughout; meanwhile a ``stat`` every 0.1 s beside a file listed
  before the walk (in another folder), of a name that does not exist and was never asked for, so that
  each reaches the daemon (the kernel keeps the names it was given until their listing's TTL), timed;
  then the same ``find`` again on the same mount;
- boto3's paginator over the same prefix (bench/index_modality.py), stopped after ``--boto3-max-keys``
  keys for the large folders, so its rate is measured without its hours;
- the whole warehouse, extrapolated: each folder's keys at scale 1.0 over the rate measured here.

    python bench/walk.py --scale 1.0 --folders xray-metadata          # the issue's first row
    python bench/walk.py --scale 0.1                                    # every folder, for the extrapolation
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_modality import BUCKET, REPO, boto3_paginator, start_synths3  # noqa: E402
from mounts import Mounted, Nccidfs, Target, mounted, tool_env  # noqa: E402

FOLDERS = ("data", "xray-metadata", "xray", "mri-metadata", "mri", "ct-metadata", "ct")
PROBE_EVERY = 0.1
PROFILE_RATE = 100  # py-spy samples a second


def server_stats(endpoint: str, reset: bool = True) -> dict[str, object]:
    query = "?reset=1" if reset else ""
    return dict(json.loads(urllib.request.urlopen(f"{endpoint}/_stats{query}").read()))


def listings(endpoint: str) -> int:
    requests = server_stats(endpoint)["requests"]
    assert isinstance(requests, dict)
    return int(requests.get("ListObjectsV2", 0))


def random_series_files(endpoint: str, count: int, seed: int) -> list[str]:
    """``count`` keys, each the first file of a random series of a random CT patient (relative to training/)."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="training/ct/", Delimiter="/")
    patients = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", ())]
    chosen = random.Random(seed).sample(patients, count)
    keys = []
    for patient in chosen:
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=patient, MaxKeys=1)
        keys.append(page["Contents"][0]["Key"][len("training/"):])
    return keys


class RssSampler:
    """The daemon's largest VmRSS, sampled every 0.2 s while the block runs."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open(f"/proc/{self._pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Prober:
    """Stats names beside known files while something else runs: each a name never asked for, which the
    kernel cannot answer from its caches, and which the daemon answers (ENOENT) from the listing it holds."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(PROBE_EVERY):
            known = self._paths[index % len(self._paths)]
            started = time.monotonic()
            with suppress(FileNotFoundError):
                os.stat(known.with_name(f"{known.name}.probe{index}"))
            self.seconds.append(time.monotonic() - started)
            index += 1

    def __enter__(self) -> Prober:
        if self._paths:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def p90_ms(self) -> float | None:
        if len(self.seconds) < 2:
            return None
        return 1000 * statistics.quantiles(self.seconds, n=10)[-1]


@contextmanager
def fresh_mount(endpoint: str, workdir: Path, nccidfs: Nccidfs) -> Iterator[Mounted]:
    with mounted("nccidfs", Target(endpoint, BUCKET), workdir, nccidfs, prefetch=False) as mount:
        listings(endpoint)  # start-up probes are not the workload's
        yield mount


def cold_stats(endpoint: str, workdir: Path, nccidfs: Nccidfs, keys: list[str]) -> dict[str, float]:
    with fresh_mount(endpoint, workdir, nccidfs) as mount:
        mnt, seconds = mount.path, []
        for key in keys:
            started = time.monotonic()
            os.stat(mnt / key)
            seconds.append(time.monotonic() - started)
        lists = listings(endpoint)
    return {"stats": len(keys), "median_ms": round(1000 * statistics.median(seconds), 1),
            "listings": lists, "listings_per_stat": round(lists / len(keys), 2)}


def kernel_requests(mnt: Path) -> dict[str, int]:
    """FUSE requests the daemon answered, by kind (versions before the counters: none)."""
    counts = json.loads((mnt / ".nccidfs" / "status.json").read_text()).get("kernel", {})
    return {kind: count for kind, count in counts.items() if kind != "inodes"}


def timed_find(mount: Mounted, folder: str) -> tuple[int, float, float, dict[str, int]]:
    """``find FOLDER -type f``: files, seconds, the daemon's CPU seconds meanwhile (its threads' user and
    system time: far less noisy than wall time on a shared machine), and the FUSE requests it cost by kind."""
    before, cpu = kernel_requests(mount.path), mount.cpu_seconds()
    started = time.monotonic()
    find = subprocess.run(["find", str(mount.path / folder), "-type", "f"], capture_output=True, check=True)
    seconds = time.monotonic() - started
    cpu = mount.cpu_seconds() - cpu
    after = kernel_requests(mount.path)
    spent = {kind: after[kind] - before.get(kind, 0) for kind in after if after[kind] != before.get(kind, 0)}
    return find.stdout.count(b"\n"), seconds, cpu, spent


@contextmanager
def sampled(pid: int, profile: Path | None, folder: str) -> Iterator[None]:
    """With ``profile``, py-spy samples the daemon's threads meanwhile (``--idle``: waits count too) and writes
    their stacks, collapsed, to ``profile/<folder>.txt``."""
    if profile is None:
        yield
        return
    profile.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--nonblocking", "--format", "raw", "--threads",
                            "--idle", "--rate", str(PROFILE_RATE), "--output", str(profile / f"{folder}.txt")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def walk(endpoint: str, workdir: Path, nccidfs: Nccidfs, folder: str, probe_keys: list[str],
         directories: int, profile: Path | None) -> dict[str, object]:
    """A cold walk of ``folder`` with stats meanwhile, then the same walk again on the same mount."""
    with fresh_mount(endpoint, workdir, nccidfs) as mount:
        mnt = mount.path
        probes = [mnt / key for key in probe_keys if not key.startswith(f"{folder}/")]
        for path in probes:
            os.stat(path)  # listed before the walk
        listings(endpoint)
        with RssSampler(mount.pid) as rss, Prober(probes) as prober, sampled(mount.pid, profile, folder):
            files, seconds, cpu, spent = timed_find(mount, folder)
        load = os.getloadavg()[0]
        lists = listings(endpoint)
        held = json.loads((mnt / ".nccidfs" / "status.json").read_text())["listings"]["entries_in_memory"]
        with sampled(mount.pid, profile, f"{folder}-again"):
            _files, again, cpu_again, spent_again = timed_find(mount, folder)
    p90 = prober.p90_ms()
    requests = sum(spent.values())
    return {"files": files, "seconds": round(seconds, 2), "files_per_second": round(files / seconds),
            "load_average": round(load, 2), "daemon_cpu_seconds": round(cpu, 2),
            "cpu_us_per_request": round(1e6 * cpu / max(1, requests), 1),
            "listings": lists, "peak_rss_mib": round(rss.peak_kib / 1024), "probe_stats": len(prober.seconds),
            "probe_p90_ms": round(p90, 1) if p90 is not None else -1,
            "requests_per_directory": round(requests / directories, 2), "requests": spent,
            "listing_names_in_memory": held,
            "second_seconds": round(again, 2), "second_daemon_cpu_seconds": round(cpu_again, 2),
            "second_requests": spent_again,
            "second_speedup": round(seconds / again, 1)}


def boto3_rate(endpoint: str, folder: str, max_keys: int) -> dict[str, float]:
    listings(endpoint)
    started = time.monotonic()
    keys = boto3_paginator(endpoint, f"training/{folder}/", max_keys)
    seconds = time.monotonic() - started
    return {"keys": keys, "seconds": round(seconds, 2), "keys_per_second": round(keys / seconds),
            "listings": listings(endpoint)}


def extrapolate(shared: Path, results: dict[str, object]) -> None:
    """The whole warehouse at scale 1.0: each folder walked measured here, at the rate measured here."""
    counts = json.loads(subprocess.run([sys.executable, str(shared / "scale" / "synths3.py"), "--count",
                                        "--scale", "1.0"], capture_output=True, check=True, text=True).stdout)
    seconds = 0.0
    for folder, entry in results.items():
        if isinstance(entry, dict) and "nccidfs" in entry:
            rate = entry["nccidfs"]["files_per_second"]
            seconds += counts["folders"][folder]["keys"] / rate
    print(f"walked folders at scale 1.0, extrapolated: {seconds / 60:.1f} min", flush=True)
    results["extrapolated_minutes_at_scale_1"] = round(seconds / 60, 1)


def shown(name: str, result: dict[str, Any]) -> dict[str, Any]:
    print(f"{name:40s} {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--folders", default=",".join(FOLDERS), help="comma-separated; default: all seven")
    parser.add_argument("--stats", type=int, default=50, help="cold stats of random series files (0: none)")
    parser.add_argument("--boto3-max-keys", type=int, default=200_000, help="boto3's rate is measured on this many")
    parser.add_argument("--skip-boto3", action="store_true")
    parser.add_argument("--port", type=int, default=9412)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--profile", type=Path, help="sample the daemon with py-spy (on PATH) during each find; "
                                                     "collapsed stacks to PROFILE/<folder>.txt and <folder>-again.txt")
    args = parser.parse_args()
    os.environ.update(tool_env())
    endpoint = f"http://127.0.0.1:{args.port}"
    server = start_synths3(args.shared, args.scale, args.port, args.latency_ms)
    results: dict[str, object] = {"scale": args.scale, "latency_ms": args.latency_ms}
    try:
        with tempfile.TemporaryDirectory(prefix="nccidfs-walk-") as tmp:
            workdir = Path(tmp)
            nccidfs = Nccidfs.snapshot(workdir / "source")  # not workdir itself: each mount takes workdir/<system>
            keys = random_series_files(endpoint, max(args.stats, 10), seed=7)
            if args.stats:
                results["cold_stat"] = shown("cold stat", cold_stats(endpoint, workdir, nccidfs, keys[:args.stats]))
            counts = json.loads(urllib.request.urlopen(f"{endpoint}/_count").read())["folders"]
            for folder in args.folders.split(","):
                entry: dict[str, object] = {"keys": counts[folder]["keys"]}
                shape = counts[folder]
                directories = 1 + shape["patients"] + shape.get("studies", 0) + shape.get("series", 0)
                entry["nccidfs"] = shown(f"find {folder}", walk(endpoint, workdir, nccidfs, folder, keys,
                                                                directories, args.profile))
                if not args.skip_boto3:
                    entry["boto3"] = shown(f"boto3 {folder}", boto3_rate(endpoint, folder, args.boto3_max_keys))
                results[folder] = entry
    finally:
        server.terminate()
        server.wait(10)
    extrapolate(args.shared, results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
