"""The nccidfs benchmark in one command: seed, serve, mount, measure, report.

It seeds the benchmark warehouses once (under bench/.data/), starts bench/s3server.py on 127.0.0.1 with
the chosen latency, and measures the same workloads through nccidfs, s3fs-fuse and rclone mount, next to
the limits (aws s3 cp/sync, boto3, the local disk): cold runs start from a fresh mount with an empty
cache and a dropped page cache. It prints one table of medians and ratios and writes it as Markdown
and JSON. See bench/README.md for what each workload measures.

    python bench/run.py [--latency-ms 20] [--runs 3] [--quick] [--synth] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mounts
import report
import warehouse
from mounts import SYSTEMS, Mounted, Target, tool_env
from report import C_FUSE, Sample

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SYNTH_BUCKET = "nccid-data-warehouse-prod"
LOG_MARKERS = ("WARNING", "ERROR", "CRITICAL", "Traceback", "[ERR]", "[WAN]")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failed(RuntimeError):
    """A workload that did not complete or gave a wrong answer; recorded, not fatal."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_command(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command in its own process group; return (wall seconds, stdout). On a timeout or Ctrl-C the
    whole group is killed, so a pipeline stuck on a mount does not outlive the benchmark."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env or tool_env(), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException as error:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        if isinstance(error, subprocess.TimeoutExpired):
            raise Failed(f"timed out after {timeout:.0f}s") from None
        raise
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        raise Failed(f"{Path(argv[0]).name} exited {process.returncode}: {stderr.strip()[-300:]}")
    return elapsed, stdout


def shell(script: str, *args: str | Path, timeout: float) -> tuple[float, str]:
    return run_command(["bash", "-c", f"set -o pipefail; {script}", "bash", *map(str, args)], timeout)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """An S3 server child on loopback and its counters."""

    url: str
    process: subprocess.Popen[str]

    def stats(self, reset: bool = True) -> dict[str, Any]:
        with _NO_PROXY.open(f"{self.url}/_stats?reset={int(reset)}", timeout=30) as answer:
            return dict(json.load(answer))

    def get(self, path: str) -> dict[str, Any]:
        with _NO_PROXY.open(f"{self.url}/{path}", timeout=120) as answer:
            return dict(json.load(answer))


@contextmanager
def serving(argv: list[str], log_path: Path, port: int | None = None) -> Iterator[Server]:
    """Start a server; with ``port`` None it prints its port as its first line. Stopped on exit."""
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE if port is None else subprocess.DEVNULL,
                                   stderr=log_file, text=True, start_new_session=True)
    try:
        if port is None:
            assert process.stdout is not None
            first = process.stdout.readline().strip()
            if not first.isdigit():
                raise RuntimeError(f"{argv[1]} did not start: {mounts.tail(log_path)}")
            port = int(first)
        server = Server(f"http://127.0.0.1:{port}", process)
        deadline = time.monotonic() + 60
        while True:
            try:
                server.stats(reset=True)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[1]} did not start: {mounts.tail(log_path)}") from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Bench:
    """One benchmark invocation: the samples it took and what it noticed on the way."""

    args: argparse.Namespace
    workdir: Path
    nccidfs: mounts.Nccidfs
    reading: warehouse.ReadingSpec
    layout: warehouse.ReadingLayout
    wide: warehouse.WideSpec
    server: Server | None = None
    etags: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    memory: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    findings: list[str] = field(default_factory=list)
    log_lines: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    run_label: str = ""

    # -- plumbing --------------------------------------------------------------------------------
    def measure(self, workload: str, system: str, action: Callable[[], float | dict[str, Any]], cold: bool = True,
                server: Server | None = None, daemon: Mounted | None = None) -> Sample | None:
        """Time ``action`` and take the server's request counts for it alone.

        An action may return a child's answer instead of seconds: then its ``bytes`` and ``cpu_seconds``
        are kept too; with ``daemon``, the CPU kept is the daemon's over the action instead.

        A measurement whose first run failed or took longer than ``--repeat-limit`` is not repeated:
        its noise is small against its length, and repeating the slow peers would triple the run time.
        """
        server = server or self.server
        assert server is not None
        if not self.wanted(workload, system):
            return None
        if cold:
            drop_caches()
        server.stats(reset=True)
        note = ""
        outcome: dict[str, Any] = {}
        cpu_before = daemon.cpu_seconds() if daemon else 0.0
        try:
            answer = action()
            outcome = answer if isinstance(answer, dict) else {"seconds": answer}
        except Failed as error:
            note = str(error)
            self.findings.append(f"{system}, {workload}, {self.run_label}: {note}")
        if daemon and outcome:
            outcome["cpu_seconds"] = daemon.cpu_seconds() - cpu_before
        stats = server.stats(reset=True)
        seconds = outcome.get("seconds")
        sample = Sample(seconds, stats["requests"], stats["bytes_out"], note, outcome.get("bytes", 0),
                        outcome.get("cpu_seconds"))
        self.samples[workload][system].append(sample)
        shown = f"{seconds:8.2f} s" if seconds is not None else f"  FAILED ({note})"
        log(f"{self.run_label:>9} {system:12} {workload:16} {shown}  {sample.total_requests:6d} req "
            f"{sample.bytes_out / 1e6:9.1f} MB")
        return sample

    def wanted(self, workload: str, system: str) -> bool:
        earlier = self.samples[workload][system]
        return not earlier or (earlier[0].seconds is not None and earlier[0].seconds <= self.args.repeat_limit)

    @contextmanager
    def mount(self, system: str, target: Target, role: str, prefetch: bool = True,
              disk_cache: bool = False) -> Iterator[Mounted]:
        """A fresh mount; on exit its peak memory is kept per role and its log scanned for warnings."""
        with mounts.mounted(system, target, self.workdir, self.nccidfs, prefetch, disk_cache) as mounted:
            try:
                yield mounted
            finally:
                try:
                    memory = mounted.memory_kib()
                except OSError:
                    self.findings.append(f"{system}, {role} mount, {self.run_label}: the daemon had exited")
                    memory = {}
                kept = self.memory[system].get(role)
                if memory and (not kept or memory["VmHWM"] > kept["VmHWM"]):
                    self.memory[system][role] = memory
        for line in mounted.log.read_text(errors="replace").splitlines():
            if any(marker in line for marker in LOG_MARKERS) and line not in self.log_lines[system]:
                self.log_lines[system].append(line)

    def child(self, *arguments: str | Path, timeout: float | None = None) -> dict[str, Any]:
        _, stdout = run_command([sys.executable, str(BENCH / "workloads.py"), *map(str, arguments)],
                                timeout or self.args.timeout)
        return dict(json.loads(stdout.strip().splitlines()[-1]))

    def dd(self, path: Path) -> dict[str, Any]:
        seconds = shell('dd if="$1" of=/dev/null bs=1M status=none', path, timeout=self.args.timeout)[0]
        return {"seconds": seconds, "bytes": path.stat().st_size}

    def count_files(self, expected: int, timeout: float, *find_args: str | Path) -> float:
        seconds, stdout = shell('find "$@" | wc -l', *find_args, timeout=timeout)
        if int(stdout.strip()) != expected:
            raise Failed(f"find counted {stdout.strip()} files, expected {expected}")
        return seconds

    def verify(self, mounted: Mounted, relative: str, workload: str) -> None:
        """Compare the MD5 of bytes read through the mount with the ETags S3 lists (wrong bytes are findings)."""
        try:
            digests = self.child("md5", mounted.path / relative)["md5"]
        except Failed as error:
            self.findings.append(f"{mounted.system}, {workload}: verification read failed: {error}")
            return
        wrong = [path for path, digest in digests.items()
                 if self.etags.get(str(Path(path).relative_to(mounted.path))) != digest]
        if wrong or not digests:
            self.findings.append(f"{mounted.system}, {workload}, {self.run_label}: wrong bytes in {len(wrong)} of "
                                 f"{len(digests)} files, e.g. {Path(wrong[0]).name if wrong else 'none read'}")

    # -- workloads -------------------------------------------------------------------------------
    def reading_target(self) -> Target:
        assert self.server is not None
        return Target(self.server.url, self.reading.bucket)

    def read_round(self, system: str) -> None:
        """Header scan, series file by file, dcm2niix and the large object, each on a fresh mount."""
        series, count = self.layout.series_dir, len(self.layout.slices)
        # Prefetch off shows the bytes a scan costs; on (the default) shows its time. Peers have no such
        # switch, so their two rows are two measurements of the same thing.
        for workload, prefetch in (("header scan", False), ("header scan prefetch", True)):
            with self.mount(system, self.reading_target(), "read", prefetch=prefetch) as mounted:
                def scan(mounted: Mounted = mounted) -> float:
                    result = self.child("headers", mounted.path / series)
                    if (result["files"], result["instances"]) != (count, count):
                        raise Failed(f"header scan read {result['files']} files, {result['instances']} instances")
                    return float(result["seconds"])
                self.measure(workload, system, scan)
        with self.mount(system, self.reading_target(), "read") as mounted:
            self.measure("series cat", system, lambda: shell('for f in "$1"/*; do cat "$f"; done > /dev/null',
                                                             mounted.path / series, timeout=self.args.timeout)[0])
            self.verify(mounted, series, "series cat")
        if shutil.which("dcm2niix") and self.wanted("dcm2niix", system):
            with self.mount(system, self.reading_target(), "read") as mounted:
                output = self.workdir / "dcm2niix"
                shutil.rmtree(output, ignore_errors=True)
                output.mkdir()

                def convert() -> float:
                    seconds = run_command(["dcm2niix", "-o", str(output), "-f", "out", str(mounted.path / series)],
                                          self.args.timeout)[0]
                    if not list(output.glob("out*.nii")):
                        raise Failed("dcm2niix wrote no NIfTI")
                    return seconds
                self.measure("dcm2niix", system, convert)
        with self.mount(system, self.reading_target(), "read") as mounted:
            big = mounted.path / self.layout.big_path
            self.measure("big cold", system, lambda: self.dd(big), daemon=mounted)
            self.measure("big warm", system, lambda: self.dd(big), cold=False)
            self.verify(mounted, self.layout.big_path, "big warm")
            if system == "nccidfs":
                self.cached_file_reads(mounted)

    def cached_file_reads(self, mounted: Mounted) -> None:
        """The local-disk limit: nccidfs's own cache file of the large object, read directly."""
        data_files = sorted(mounted.cache_dir.glob("objects/*/*.data"), key=lambda path: path.stat().st_size)
        if not data_files:
            self.findings.append(f"nccidfs, {self.run_label}: no cache file after reading the large object")
            return
        self.measure("big cold", "cached file", lambda: self.dd(data_files[-1]))
        self.measure("big warm", "cached file", lambda: self.dd(data_files[-1]), cold=False)
        with self.c_fuse_view(mounted.cache_dir) as view:
            if view is not None:
                through = view / data_files[-1].relative_to(mounted.cache_dir)
                self.measure("big cold", C_FUSE, lambda: self.dd(through))

    @contextmanager
    def c_fuse_view(self, directory: Path) -> Iterator[Path | None]:
        """``directory`` through bindfs, a FUSE filesystem written in C: what FUSE itself costs, with no
        Python; None when bindfs is not installed or does not mount (a finding then)."""
        if not shutil.which("bindfs"):
            yield None
            return
        view = self.workdir / "bindfs"
        view.mkdir(exist_ok=True)
        try:
            run_command(["bindfs", "-r", "--multithreaded", str(directory), str(view)], self.args.timeout)
        except Failed as error:
            self.findings.append(f"bindfs, {self.run_label}: {error}")
            yield None
            return
        try:
            yield view
        finally:
            run_command(["fusermount3", "-u", str(view)], self.args.timeout)

    def loader_round(self, system: str) -> None:
        """The data loader: whole images drawn at random across series, read by 1, 16, 64 workers.

        Each reader count on a fresh mount, cold; at the main count the same files again with the page
        cache dropped (the daemon's disk cache warm), and, for nccidfs, its cache files read by the same
        workers directly and through a C FUSE filesystem (the limits). rclone runs with its full disk cache.
        """
        for threads in self.args.loader_threads:
            with self.mount(system, self.reading_target(), "loader", disk_cache=True) as mounted:
                listing = self.workdir / "loader-paths.txt"
                listing.write_text("\n".join(str(mounted.path / key[len(warehouse.PREFIX):])
                                             for key in self.loader_keys))
                run = partial(self.child, "loader", listing, threads)
                self.measure(f"loader {threads} cold", system, run, daemon=mounted)
                if threads != self.args.loader_threads[len(self.args.loader_threads) // 2]:
                    continue
                self.measure(f"loader {threads} warm", system, run, daemon=mounted)
                if system == "nccidfs":
                    self.cached_file_loader(mounted, threads)

    def cached_file_loader(self, mounted: Mounted, threads: int) -> None:
        """The limits of the warm data loader: nccidfs's cache files read by the same workers directly, and
        through a C FUSE filesystem."""
        data_files = list(mounted.cache_dir.glob("objects/*/*.data"))
        cached = self.workdir / "loader-cached.txt"
        cached.write_text("\n".join(map(str, data_files)))
        self.measure(f"loader {threads} warm", "cached file", partial(self.child, "loader", cached, str(threads)))
        with self.c_fuse_view(mounted.cache_dir) as view:
            if view is not None:
                through = self.workdir / "loader-c-fuse.txt"
                through.write_text("\n".join(str(view / path.relative_to(mounted.cache_dir)) for path in data_files))
                self.measure(f"loader {threads} warm", C_FUSE, partial(self.child, "loader", through, str(threads)))

    def loader_limits(self) -> None:
        """The SDK floors for the data loader: the same keys, ``get_object().read()`` by as many threads; and
        the same with each body checked against its MD5 and written to a file, as a verifying cache must."""
        assert self.server is not None
        listing = self.workdir / "loader-keys.txt"
        listing.write_text("\n".join(self.loader_keys))
        kept = self.workdir / "boto3-kept"
        for threads in self.args.loader_threads:
            self.measure(f"loader {threads} cold", f"boto3 {threads} threads", partial(
                self.child, "boto3-loader", self.server.url, self.reading.bucket, listing, threads))
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir()
            self.measure(f"loader {threads} cold", f"boto3 {threads} threads + MD5 + file", partial(
                self.child, "boto3-store-loader", self.server.url, self.reading.bucket, listing, threads, kept))
        shutil.rmtree(kept, ignore_errors=True)

    @property
    def loader_keys(self) -> list[str]:
        """The images the data loader reads: drawn once, the same for every system and run."""
        keys = list(self.layout.image_keys)
        return random.Random(self.reading.seed).sample(keys, min(self.args.loader_files, len(keys)))

    def limits_round(self) -> None:
        """The same objects without a filesystem: aws-cli and boto3 straight to the server."""
        assert self.server is not None
        bucket, url = self.reading.bucket, self.server.url
        scratch = self.workdir / "downloads"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        aws = ["aws", "--endpoint-url", url, "--only-show-errors", "s3"]
        self.measure("series cat", "aws s3 sync", lambda: run_command(
            [*aws, "sync", f"s3://{bucket}/{self.layout.series_prefix}", str(scratch / "sync")], self.args.timeout)[0])
        self.measure("series cat", "boto3", lambda: float(
            self.child("boto3-prefix", url, bucket, self.layout.series_prefix)["seconds"]))
        self.measure("big cold", "aws s3 cp", lambda: run_command(
            [*aws, "cp", f"s3://{bucket}/{self.layout.big_key}", str(scratch / "big-cp")], self.args.timeout)[0])
        self.measure("big cold", "boto3", lambda: float(
            self.child("boto3-file", url, bucket, self.layout.big_key, scratch / "big-boto3")["seconds"]))
        self.measure("big cold", "boto3 get", partial(self.child, "boto3-get", url, bucket, self.layout.big_key))
        shutil.rmtree(scratch, ignore_errors=True)

    def listing_round(self, system: str) -> None:
        """Walk the wide warehouse cold and warm, list its widest directory, stat missing names.

        The peers get ``--peer-timeout`` per workload; when a peer's cold walk does not finish in it, its
        other listing workloads are skipped, since what they would find cached is then unknown.
        """
        assert self.server is not None
        timeout = self.args.timeout if system == "nccidfs" else self.args.peer_timeout
        with self.mount(system, Target(self.server.url, self.wide.bucket), "listing") as mounted:
            widest = mounted.path / "data"

            def find(*tests: str) -> float:
                return self.count_files(self.wide.objects, timeout, mounted.path, "-type", "f", *tests)
            walk = self.measure("find cold", system, find)
            self.memory[system]["after walk"] = mounted.memory_kib()
            if walk is None or walk.seconds is None:
                self.findings.append(f"{system}: listing workloads after the cold walk skipped")
                return
            self.measure("find warm", system, find, cold=False)
            self.measure("find -size +0", system, lambda: find("-size", "+0"), cold=False)
            self.measure("ls -l widest", system, lambda: shell('ls -l "$1" | wc -l', widest, timeout=timeout)[0],
                         cold=False)

            def missing() -> float:
                result = self.child("stat-missing", widest, str(self.args.missing_names), timeout=timeout)
                if result["found"]:
                    raise Failed(f"{result['found']} missing names were found")
                return float(result["seconds"])
            self.measure("stat missing", system, missing, cold=False)

    def synth_round(self, scale: float, shared: Path) -> None:
        """nccidfs over synths3 (the real warehouse's shape, listing of training/ refused): walk ct-metadata."""
        port = free_port()
        argv = [sys.executable, str(shared / "scale" / "synths3.py"), "--scale", str(scale), "--port", str(port),
                "--latency-ms", "0"]
        with serving(argv, self.workdir / f"synths3-{scale}.log", port) as synth:
            expected = synth.get("_count")["folders"]["ct-metadata"]["keys"]
            workload = f"synth {scale}"
            with self.mount("nccidfs", Target(synth.url, SYNTH_BUCKET), workload) as mounted:
                self.measure(workload, "nccidfs", lambda: self.count_files(
                    expected, self.args.timeout, mounted.path / "ct-metadata", "-type", "f"), server=synth)
                self.memory["nccidfs"][f"{workload} after walk"] = mounted.memory_kib()


def _specs(quick: bool) -> tuple[warehouse.ReadingSpec, warehouse.WideSpec]:
    if quick:
        return (warehouse.ReadingSpec("bench-read-quick", slices=40, big_mib=32, clinical_files=50, loader_ct_series=4,
                                      loader_slices=10, loader_xrays=3, xray_mib=2),
                warehouse.WideSpec("bench-wide-quick", patients=100, ct_patients=10, slices_per_series=40))
    return (warehouse.ReadingSpec("bench-read", slices=200, big_mib=100, clinical_files=300, loader_ct_series=16,
                                  loader_slices=48, loader_xrays=12),
            warehouse.WideSpec("bench-wide", patients=2000, ct_patients=250, slices_per_series=400))


def ensure_tools() -> list[str]:
    """Install the peers with apt-get when missing; return a note for each tool still missing."""
    tools = ("s3fs", "rclone", "dcm2niix", "bindfs")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    notes = [f"{tool} is not installed: its rows are skipped" for tool in tools if not shutil.which(tool)]
    return notes


def commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "unknown commit"


def versions(nccidfs: mounts.Nccidfs) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=nccidfs.env())
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"

    return {"nccidfs": first_line(nccidfs.argv("--version")),
            "s3fs": first_line(["s3fs", "--version"]), "rclone": first_line(["rclone", "version"]),
            "aws": first_line(["aws", "--version"]), "dcm2niix": first_line(["dcm2niix", "--version"]),
            "python": platform.python_version()}


def seed(bench: Bench, root: Path) -> None:
    """Seed the reading warehouse through the running server (once; later runs find its marker)."""
    import boto3
    from botocore.config import Config

    assert bench.server is not None
    client = boto3.client("s3", endpoint_url=bench.server.url, region_name=mounts.CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=mounts.CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=mounts.CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
    if not warehouse.is_seeded(root, bench.reading):
        log(f"seeding {bench.reading.bucket} through PutObject (once)")
        count = warehouse.seed_reading(client, root, bench.reading, bench.layout)
        log(f"seeded {count} objects")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bench.reading.bucket,
                                                                 Prefix=warehouse.PREFIX):
        for item in page.get("Contents", ()):
            bench.etags[item["Key"][len(warehouse.PREFIX):]] = item["ETag"].strip('"')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added by the S3 server to every answer")
    parser.add_argument("--runs", type=int, help="runs of each read workload, medians reported (default 3, quick 1)")
    parser.add_argument("--listing-runs", type=int, default=1, help="runs of the listing workloads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a small warehouse and one run: a smoke test")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="filesystems to measure (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: read,loader,limits,listing")
    parser.add_argument("--loader-threads", default="1,16,64",
                        help="reader counts of the data-loader workload; the middle one is also read warm")
    parser.add_argument("--loader-files", type=int, help="images the data loader reads (default 400, quick 60)")
    parser.add_argument("--synth", action="store_true", help="also walk ct-metadata on shared/scale/synths3.py")
    parser.add_argument("--scale-list", default="0.01,0.1", help="synths3 scales for --synth (default 0.01,0.1)")
    parser.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared",
                        help="the project's shared/ folder (default: ../shared beside the repository)")
    parser.add_argument("--data-dir", type=Path, default=BENCH / ".data", help="where the warehouses are kept")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before one workload is abandoned")
    parser.add_argument("--peer-timeout", type=float, default=60.0,
                        help="the same for s3fs and rclone in the listing workloads (default 60)")
    parser.add_argument("--repeat-limit", type=float, default=30.0,
                        help="a measurement longer than this in its first run is not repeated (default 30 s)")
    parser.add_argument("--out", type=Path, help="results directory (default: bench/results/DATE-latN)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.missing_names = 100 if args.quick else 1000
    args.loader_threads = [int(n) for n in args.loader_threads.split(",") if n]
    args.loader_files = args.loader_files or (60 if args.quick else 400)
    args.systems = [s for s in args.systems.split(",") if s]
    args.skip = {s for s in args.skip.split(",") if s}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out = args.out or BENCH / "results" / f"{stamp}-lat{args.latency_ms:g}ms{'-quick' if args.quick else ''}"
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through every finally: block (unmounts, server stops), even when the
    # benchmark was started with SIGINT ignored, as background jobs of a script are.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    notes = ensure_tools()
    systems = [s for s in args.systems if s == "nccidfs" or shutil.which(s)]
    reading, wide = _specs(args.quick)
    root = args.data_dir / "s3root"
    root.mkdir(parents=True, exist_ok=True)
    for spec in (reading, wide):
        warehouse.discard_unfinished(root, spec)
    if not warehouse.is_seeded(root, wide):
        log(f"writing the wide warehouse {wide.bucket} ({wide.patients} patients, {wide.objects} objects, once)")
        warehouse.write_wide(root, wide)
    with tempfile.TemporaryDirectory(prefix="nccidfs-bench-") as scratch:
        nccidfs = mounts.Nccidfs.snapshot(Path(scratch) / "source")
        measured = f"{commit()}, sources {nccidfs.fingerprint}"
        log(f"measuring nccidfs at {measured} (a copy: edits to the work tree from now on are not measured)")
        bench = Bench(args, Path(scratch), nccidfs, reading, warehouse.plan_reading(reading), wide)
        argv_server = [sys.executable, str(BENCH / "s3server.py"), "--root", str(root), "--port", "0",
                       "--latency-ms", str(args.latency_ms)]
        with serving(argv_server, Path(scratch) / "s3server.log") as server:
            bench.server = server
            seed(bench, root)
            log(f"S3 server at {server.url}, latency {args.latency_ms:g} ms; systems: {', '.join(systems)}")
            for run in range(1, args.runs + 1):
                bench.run_label = f"run {run}/{args.runs}"
                if "loader" not in args.skip:
                    for system in systems:
                        bench.loader_round(system)
                    if "limits" not in args.skip:
                        bench.loader_limits()
                if "read" not in args.skip:
                    for system in systems:
                        bench.read_round(system)
                if "limits" not in args.skip:
                    bench.limits_round()
            for run in range(1, args.listing_runs + 1):
                bench.run_label = f"list {run}/{args.listing_runs}"
                if "listing" not in args.skip:
                    for system in systems:
                        bench.listing_round(system)
        if args.synth:
            bench.run_label = "synth"
            for scale in (float(s) for s in args.scale_list.split(",") if s):
                bench.synth_round(scale, args.shared_dir)
        elapsed = time.monotonic() - started
        if mounts.fingerprint(mounts.package_dir()) != nccidfs.fingerprint:
            notes.append(f"the work tree's nccidfs changed during the run (now {commit()}); "
                         "this run measured the copy taken at its start")
        context = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "latency_ms": args.latency_ms, "runs": args.runs,
            "listing_runs": args.listing_runs, "quick": args.quick, "cores": os.cpu_count(),
            "kernel": platform.release(), "seconds": round(elapsed), "nccidfs_code": measured,
            "versions": versions(nccidfs), "prefetch_flag": nccidfs.has_prefetch, "notes": notes,
            "peer_timeout": args.peer_timeout, "repeat_limit": args.repeat_limit,
            "reading": {"bucket": reading.bucket, "slices": len(bench.layout.slices),
                        "slice_bytes": _slice_bytes(root, bench), "big_bytes": _big_bytes(root, bench),
                        "clinical_files": reading.clinical_files},
            "loader": {"files": len(bench.loader_keys), "series": 1 + len(bench.layout.loader_series),
                       "bytes": sum((root / reading.bucket / key).stat().st_size for key in bench.loader_keys),
                       "threads": args.loader_threads},
            "wide": {"bucket": wide.bucket, "patients": wide.patients, "ct_patients": wide.ct_patients,
                     "objects": wide.objects, "missing_names": args.missing_names},
        }
        result = report.build(context, bench.samples, bench.memory, bench.findings, bench.log_lines)
    print(result.markdown, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(result.markdown)
    (args.out / "results.json").write_text(json.dumps(result.document, indent=1))
    try:
        import plot
        plot.draw(result.document, args.out / "results.png")
        log(f"drew {_shown(args.out / 'results.png')}")
    except ImportError:
        log("matplotlib is not installed (pip install -e .[bench]): no plot drawn")
    log(f"wrote {_shown(args.out / 'results.md')} and results.json in {elapsed:.0f}s")
    return 0


def _slice_bytes(root: Path, bench: Bench) -> int:
    return (root / bench.reading.bucket / bench.layout.slices[0].key).stat().st_size


def _big_bytes(root: Path, bench: Bench) -> int:
    return (root / bench.reading.bucket / bench.layout.big_key).stat().st_size


def _shown(path: Path) -> str:
    """A path relative to the working directory when possible (no machine paths in messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every mount and server was stopped", file=sys.stderr)
        sys.exit(130)
