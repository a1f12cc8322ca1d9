"""The daemon's memory over a stat walk of the whole warehouse: does it stay under its ceiling?

A walk that stats every file (``find MNT -type f -size +0``) makes the kernel keep an inode per file,
and the daemon a number for each, up to ``--max-inodes``. This runs ../shared/scale/synths3.py at the
given scale with no added latency, mounts nccidfs on it (a copy of the package, as bench/run.py does)
and walks every folder in turn, sampling the daemon's VmRSS every second. Every ``--every`` seconds it
prints one line: files stat'ed so far, the largest VmRSS, the inode numbers the daemon holds and the
load average, so a walk of hours shows where it is. It reports the files, the seconds, the daemon's CPU
seconds, the peak VmRSS and VmHWM, and whether the walk was whole or stopped at ``--max-minutes``.

    python bench/statwalk.py --scale 1.0 --out statwalk.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_modality import REPO, start_synths3  # noqa: E402
from mounts import Mounted, Nccidfs, tool_env  # noqa: E402
from walk import FOLDERS, RssSampler, fresh_mount  # noqa: E402

MIB = 1024


class Walker:
    """``find FOLDER -type f -size +0`` over each folder in turn, counting the files it prints."""

    def __init__(self, mount: Mounted, folders: list[str]) -> None:
        self._mount, self._folders = mount, folders
        self.files = 0
        self.whole = False
        self._find: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        for folder in self._folders:
            if self._stopped.is_set():
                return
            self._find = subprocess.Popen(["find", str(self._mount.path / folder), "-type", "f", "-size", "+0"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert self._find.stdout is not None
            for _line in self._find.stdout:
                self.files += 1
            if self._find.wait() != 0 and not self._stopped.is_set():
                raise RuntimeError(f"find over {folder} failed")
        self.whole = not self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        if self._find is not None and self._find.poll() is None:
            self._find.terminate()


def inodes_held(mount: Mounted) -> int:
    """The inode numbers the daemon holds for the kernel (status.json)."""
    status = json.loads((mount.path / ".nccidfs" / "status.json").read_text())
    return int(status.get("kernel", {}).get("inodes", -1))


def walk(mount: Mounted, folders: list[str], every: float, max_seconds: float) -> dict[str, object]:
    walker = Walker(mount, folders)
    thread = threading.Thread(target=walker.run, daemon=True)
    cpu, started = mount.cpu_seconds(), time.monotonic()
    with RssSampler(mount.pid) as rss:
        thread.start()
        while thread.is_alive():
            thread.join(every)
            elapsed = time.monotonic() - started
            inodes = inodes_held(mount) if thread.is_alive() else -1
            print(f"{elapsed:7.0f} s  {walker.files:>10,} files  peak VmRSS {rss.peak_kib // MIB} MiB  "
                  f"inodes held {inodes:,}  load {os.getloadavg()[0]:.1f}", flush=True)
            if elapsed > max_seconds and thread.is_alive():
                walker.stop()
                thread.join()
    seconds = time.monotonic() - started
    memory = mount.memory_kib()
    return {"files": walker.files, "whole": walker.whole, "seconds": round(seconds),
            "files_per_second": round(walker.files / seconds), "daemon_cpu_seconds": round(mount.cpu_seconds() - cpu),
            "peak_rss_mib": rss.peak_kib // MIB, "vm_hwm_mib": memory["VmHWM"] // MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--folders", default=",".join(FOLDERS), help="comma-separated; default: all seven")
    parser.add_argument("--every", type=float, default=60, help="seconds between progress lines")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop the walk after this long")
    parser.add_argument("--port", type=int, default=9413)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    os.environ.update(tool_env())
    endpoint = f"http://127.0.0.1:{args.port}"
    server = start_synths3(args.shared, args.scale, args.port)
    try:
        counts = json.loads(urllib.request.urlopen(f"{endpoint}/_count").read())["folders"]
        folders = args.folders.split(",")
        with tempfile.TemporaryDirectory(prefix="nccidfs-statwalk-") as tmp:
            workdir = Path(tmp)
            nccidfs = Nccidfs.snapshot(workdir / "source")
            with fresh_mount(endpoint, workdir, nccidfs) as mount:
                result = walk(mount, folders, args.every, 60 * args.max_minutes)
    finally:
        server.terminate()
        server.wait(10)
    result.update(scale=args.scale, keys=sum(counts[folder]["keys"] for folder in folders),
                  load_average=round(os.getloadavg()[0], 1))
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
