"""Test support: a moto S3 server on loopback and an nccidfs daemon mounted on it as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from nccidfs.demo.warehouse import DemoObject

BUCKET = "nccid-data-warehouse-prod"
PREFIX = "training/"
REGION = "eu-west-2"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Lines from libfuse that are harmless (none today: nccidfs passes valid thread options).
HARMLESS_LOG_LINES: tuple[str, ...] = ()
# A line the daemon's logging wrote ("<date> <time> LEVEL logger: message"), as opposed to a traceback's.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) ")
ERROR_LEVELS = ("ERROR", "CRITICAL")


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def s3_client(endpoint_url: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION, **{
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})


def create_bucket(endpoint_url: str, bucket: str, objects: Iterable[tuple[str, bytes]]) -> Any:
    client = s3_client(endpoint_url)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key, body in objects:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return client


def seed_demo_bucket(endpoint_url: str, bucket: str, objects: Iterable[DemoObject]) -> str:
    """A bucket holding the demo warehouse; each test module seeds its own so that none sees another's edits."""
    create_bucket(endpoint_url, bucket, ((o.key, o.body) for o in objects))
    return bucket


# What docs/semantics.md allows the cache directory beyond --cache-size: a map's last rewrite per
# concurrent write, and the listing index's growth between two looks at it.
CACHE_SLACK = 64 * 1024


def du_bytes(directory: Path) -> int:
    """What ``du -sb`` prints for a directory: the measure the cache's bound is stated in.

    A live daemon renames and evicts files while du walks; a file that vanished under du makes it fail,
    and the walk is then taken again (any other failure is raised at once)."""
    for _attempt in range(5):
        result = subprocess.run(["du", "-sb", str(directory)], capture_output=True, text=True)
        if result.returncode == 0:
            return int(result.stdout.split()[0])
        if "No such file or directory" not in result.stderr:
            break
    raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)


def drop_page_cache() -> None:
    """Make the next read a cold one for the kernel (needs root; a no-op elsewhere)."""
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False,
                   stderr=subprocess.DEVNULL)


def in_mount_table(path: Path) -> bool:
    """Whether ``path`` is in the mount table (a dead FUSE mount counts; os.path.ismount says no to it)."""
    with open("/proc/self/mounts") as table:
        return any(line.split()[1] == str(path) for line in table)


def daemon_env() -> dict[str, str]:
    # No instance-metadata lookups: tests send traffic to loopback only.
    env = dict(os.environ, **CREDENTIALS, AWS_EC2_METADATA_DISABLED="true")
    env.pop("AWS_PROFILE", None)
    return env


def log_errors(text: str, allowed: Sequence[str] = ()) -> list[str]:
    """ERROR and CRITICAL lines and tracebacks in a daemon's log that match none of the ``allowed``
    regular expressions; a traceback goes with the line logged before it."""
    patterns = [re.compile(pattern) for pattern in allowed]
    bad: list[str] = []
    previous_allowed = False
    for line in text.splitlines():
        record = LOG_RECORD.match(line)
        if record is not None:
            previous_allowed = any(pattern.search(line) for pattern in patterns)
            if record["level"] in ERROR_LEVELS and not previous_allowed:
                bad.append(line)
        elif line.startswith("Traceback") and not previous_allowed:
            bad.append(line)
    return bad


@dataclass(frozen=True)
class WatchedLog:
    """The log of a daemon that mounted, for the autouse check once the daemon stopped."""

    path: Path
    running: Callable[[], bool]
    allowed: tuple[str, ...] = ()

    def errors(self) -> list[str]:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return log_errors(text, self.allowed)


# Logs of daemons that mounted, not checked yet.
MOUNTED: list[WatchedLog] = []


class MountedDaemon:
    """``nccidfs MOUNTPOINT -f`` in a subprocess; unmounted and reaped on exit, its log kept for checks.

    Every daemon that mounted has its log in :data:`MOUNTED`; the suite's autouse check then fails a test
    whose daemon logged an error or a traceback that ``allowed_log`` (regular expressions) does not name."""

    def __init__(self, mountpoint: Path, endpoint_url: str, cache_dir: Path, log_path: Path,
                 bucket: str = BUCKET, extra: Sequence[str] = (), allowed_log: Sequence[str] = ()) -> None:
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.allowed_log = tuple(allowed_log)
        self.args = [sys.executable, "-m", "nccidfs", str(mountpoint), "-f", "--bucket", bucket,
                     "--endpoint-url", endpoint_url, "--cache-dir", str(cache_dir), "--log-level", "debug",
                     *extra]
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> MountedDaemon:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=log, env=daemon_env())
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(f"nccidfs exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nccidfs did not mount within 30 s:\n{self.log()}")
            time.sleep(0.05)
        MOUNTED.append(WatchedLog(self.log_path, lambda: self.process is not None, self.allowed_log))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Unmount (SIGTERM makes libfuse unmount cleanly) and reap the daemon we started."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        if in_mount_table(self.mountpoint):  # also a dead mount, which os.path.ismount does not see
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and clear the dead mount."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def unexpected_log_lines(self, allowed: Sequence[str] = ()) -> list[str]:
        """WARNING/ERROR/CRITICAL lines and tracebacks that no test expected."""
        bad = []
        for line in self.log().splitlines():
            if any(marker in line for marker in (*HARMLESS_LOG_LINES, *allowed)):
                continue
            if " WARNING " in line or " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                bad.append(line)
        return bad


def start_demo(mountpoint: Path, state: Path) -> subprocess.Popen[str]:
    """``nccidfs demo MOUNTPOINT`` with its cache and log under ``state``, its output piped; its log is
    checked as a mounted daemon's is."""
    log_path = state / "demo.log"
    process = subprocess.Popen([sys.executable, "-m", "nccidfs", "demo", str(mountpoint), "--cache-dir",
                                str(state / "cache"), "--log-file", str(log_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon_env())
    MOUNTED.append(WatchedLog(log_path, lambda: process.poll() is None))
    return process


def within(seconds: float, check: Callable[[], bool]) -> bool:
    """Whether ``check`` comes true within ``seconds``."""
    give_up = time.monotonic() + seconds
    while not check():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True
