"""Bench: cohorts on the warehouse's whole shape (../shared/scale/synths3.py).

    python3 bench/cohort.py parse --objects 1000000     # read a manifest into the daemon's packed tree
    python3 bench/cohort.py mount --objects 1000000     # mount a manifest of synths3 keys: time, daemon RSS, find
    python3 bench/cohort.py create --patients 10000     # catalog (xray, data) built, then cohort create

``parse`` writes a manifest of CT-shaped keys and reads it three times, each in a fresh interpreter,
reporting the time and that process's peak RSS. ``mount`` freezes the first N keys of the synths3 key space
(at ``--scale``, default 1.0) and mounts them with ``--cohort``: the time from the command to a mount that
answers, the daemon's RSS and CPU seconds then and after ``find`` over the mount, and the S3 requests the daemon
counted; then the same manifest mounted again on that cache directory (its packed tree kept there).
``create`` mounts the warehouse, builds the catalog of the X-ray and clinical folders, copies its two
tables out of the mount (timed on its own), and times ``nccidfs cohort create`` of the X-ray series of N
patients (``--where "folder = 'xray'" --patients FILE``) from that copy, three times.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from index_modality import BUCKET, start_synths3  # noqa: E402

from nccidfs.cohort import manifest  # noqa: E402

IMAGES_PER_SERIES = 160
XRAY = "xray"  # create: the X-ray series of the first N patients that have one
PREFIX = "training/"
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_EC2_METADATA_DISABLED="true")


def header(name: str, endpoint: str, rows: list[manifest.Row]) -> manifest.Header:
    return manifest.Header(name=name, warehouse=manifest.Warehouse(endpoint, BUCKET, PREFIX),
                           created=manifest.now_iso(), listed={}, selection={}, objects=len(rows),
                           bytes=sum(r[1] for r in rows), patients=manifest.count_patients(r[0] for r in rows))


# -- parse ---------------------------------------------------------------------------------------------
def make_ct_shaped(path: Path, objects: int) -> None:
    import hashlib
    import random

    rng = random.Random(1)
    rows: list[manifest.Row] = []
    patient = 0
    while len(rows) < objects:
        patient += 1
        study = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(100)}"
        series = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(100)}"
        for _ in range(IMAGES_PER_SERIES):
            image = f"{rng.getrandbits(128):032x}"
            for folder, ext in (("ct", "dcm"), ("ct-metadata", "json")):
                key = f"{folder}/Covid{patient}/{study}/{series}/{image}.{ext}"
                rows.append((key, rng.randrange(1 << 20), hashlib.md5(key.encode()).hexdigest(),
                             1_600_000_000.0 + rng.randrange(10**7)))
    rows = sorted(rows[:objects])
    manifest.write(path, header("bench", "127.0.0.1:9400", rows), rows)


def load(path: Path) -> None:
    from nccidfs.cohort.tree import FrozenTree

    started = time.monotonic()
    tree = FrozenTree(PREFIX)
    manifest.scan(path, tree.add)
    tree.finish()
    print(json.dumps({"objects": tree.objects, "seconds": round(time.monotonic() - started, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def parse(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "bench.nccid-cohort"
        make_ct_shaped(path, args.objects)
        print(json.dumps({"objects": args.objects, "file_mib": round(path.stat().st_size / 1024**2, 1)}))
        for _ in range(3):
            subprocess.run([sys.executable, __file__, "load", str(path)], check=True)


# -- mount ---------------------------------------------------------------------------------------------
def synths3_rows(shared: Path, scale: float, objects: int) -> list[manifest.Row]:
    """The first ``objects`` keys of the synths3 key space, with the size, ETag and time it lists."""
    sys.path.insert(0, str(shared / "scale"))
    import synths3

    warehouse = synths3.Warehouse(seed=1, scale=scale)
    rows: list[manifest.Row] = []
    for key, node, j in warehouse.iter_keys(PREFIX):
        size, etag, when = node.entry(j)
        moment = dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        rows.append((key[len(PREFIX):], size, etag.strip('"'), moment))
        if len(rows) == objects:
            break
    return rows


def vm(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mount(args: argparse.Namespace) -> None:
    server = start_synths3(args.shared, args.scale, args.port)
    endpoint = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="nccidfs-cohort-bench-"))
    try:
        started = time.monotonic()
        rows = synths3_rows(args.shared, args.scale, args.objects)
        path = work / "bench.nccid-cohort"
        manifest.write(path, header("bench", f"127.0.0.1:{args.port}", rows), rows)
        print(json.dumps({"objects": len(rows), "file_mib": round(path.stat().st_size / 1024**2, 1),
                          "made_seconds": round(time.monotonic() - started, 1)}), flush=True)
        for run in range(args.runs):
            print(json.dumps(mount_once(endpoint, work / f"run{run}", path)), flush=True)
            # The same cohort again on that cache directory: its packed tree is kept there.
            print(json.dumps({"again": mount_once(endpoint, work / f"run{run}", path, walk=False)}), flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def mount_once(endpoint: str, work: Path, path: Path, walk: bool = True) -> dict[str, Any]:
    mountpoint = work / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    daemon = subprocess.Popen([sys.executable, "-m", "nccidfs", str(mountpoint), "-f", "--cohort", str(path),
                               "--endpoint-url", endpoint, "--cache-dir", str(work / "cache"),
                               "--log-file", str(work / "daemon.log")], env=ENV, cwd=REPO)
    try:
        while not os.path.ismount(mountpoint):
            if daemon.poll() is not None or time.monotonic() - started > 120:
                raise SystemExit(f"the cohort did not mount: {(work / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.01)
        mounted = time.monotonic() - started
        at_mount, cpu_at_mount = vm(daemon.pid), cpu_seconds(daemon.pid)
        mounted_figures = {"mount_seconds": round(mounted, 2), "cpu_at_mount_seconds": cpu_at_mount,
                           "rss_at_mount_mib": at_mount["VmRSS"], "load": round(os.getloadavg()[0], 1)}
        if not walk:
            return mounted_figures
        found_started = time.monotonic()
        files = subprocess.run(f"find {mountpoint} -type f | wc -l", shell=True, capture_output=True, text=True,
                               check=True).stdout.strip()
        found = time.monotonic() - found_started
        status = json.loads((mountpoint / ".nccidfs" / "status.json").read_text())
        return {**mounted_figures, "find_files": int(files), "find_seconds": round(found, 1),
                "after_find_mib": vm(daemon.pid), "s3_requests": status["s3"]["requests"]}
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


# -- create --------------------------------------------------------------------------------------------
def nccidfs(*args: str, cwd: Path) -> tuple[float, str]:
    """Run a command; its wall time and what it printed (its CPU time is in :func:`children_cpu`)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, env=ENV,
                            cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"nccidfs {' '.join(args)}: {result.stderr}")
    return time.monotonic() - started, result.stdout.strip()


def create(args: argparse.Namespace) -> None:
    server = start_synths3(args.shared, args.scale, args.port)
    endpoint = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="nccidfs-cohort-bench-"))
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    env = dict(ENV, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen([sys.executable, "-m", "nccidfs", str(mountpoint), "-f", "--endpoint-url", endpoint,
                               "--cache-dir", str(work / "cache"), "--log-file", str(work / "daemon.log"),
                               "--no-prefetch"], env=env, cwd=REPO)
    try:
        while not os.path.ismount(mountpoint):
            time.sleep(0.05)
        seconds, out = nccidfs("catalog", "build", str(mountpoint), cwd=work)
        print(json.dumps({"catalog_build_seconds": round(seconds, 1), "catalog": out}), flush=True)
        copied = time.monotonic()
        shutil.copytree(mountpoint / ".nccidfs" / "catalog", work / "catalog")
        print(json.dumps({"catalog_copied_from_the_mount_seconds": round(time.monotonic() - copied, 1)}), flush=True)
        with (work / "catalog" / "series.csv").open(newline="") as table:
            patients = sorted({row["Patient_ID"] for row in csv.DictReader(table) if row["folder"] == XRAY})
        patients = patients[:args.patients]
        (work / "patients.txt").write_text("\n".join(patients) + "\n")
        times = []
        for run in range(3):
            cpu = children_cpu()
            seconds, out = nccidfs("cohort", "create", f"run{run}", str(mountpoint), "--where", f"folder = '{XRAY}'",
                                   "--patients", str(work / "patients.txt"), "--catalog", str(work / "catalog"),
                                   cwd=work)
            times.append(seconds)
            print(json.dumps({"create_seconds": round(seconds, 2), "cpu_seconds": round(children_cpu() - cpu, 2),
                              "load": round(os.getloadavg()[0], 1), "printed": out}), flush=True)
        if args.profile:
            subprocess.run([sys.executable, "-m", "cProfile", "-o", str(work / "create.prof"), "-m", "nccidfs",
                            "cohort", "create", "profiled", str(mountpoint), "--where", f"folder = '{XRAY}'",
                            "--patients", str(work / "patients.txt"),
                            "--catalog", str(work / "catalog")], env=ENV, cwd=work, check=True, capture_output=True)
            import pstats

            pstats.Stats(str(work / "create.prof")).sort_stats("cumulative").print_stats(25)
        print(json.dumps({"patients": len(patients), "create_median_seconds": round(statistics.median(times), 2),
                          "manifest_kib": round((work / "run0.nccid-cohort").stat().st_size / 1024, 1)}))
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    parsing = actions.add_parser("parse")
    parsing.add_argument("--objects", type=int, default=1_000_000)
    loading = actions.add_parser("load")
    loading.add_argument("path", type=Path)
    for name in ("mount", "create"):
        action = actions.add_parser(name)
        action.add_argument("--shared", type=Path, default=REPO.parent / "shared")
        action.add_argument("--scale", type=float, default=1.0)
        action.add_argument("--port", type=int, default=9471)
        action.add_argument("--objects", type=int, default=1_000_000)
        action.add_argument("--patients", type=int, default=10_000)
        action.add_argument("--runs", type=int, default=3)
        action.add_argument("--profile", action="store_true", help="profile one more create (cProfile)")
    args = parser.parse_args()
    if args.action == "load":
        load(args.path)
        return
    {"parse": parse, "mount": mount, "create": create}[args.action](args)


if __name__ == "__main__":
    main()
