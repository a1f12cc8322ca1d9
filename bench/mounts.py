"""Mount and unmount the filesystems under test (nccidfs, s3fs-fuse, rclone) the same way.

Each mount gets a fresh, empty mount point and cache directory, runs in the foreground as a child of
the benchmark in its own session (so Ctrl-C reaches the benchmark, which then unmounts in order), and
is unmounted with ``fusermount3 -u`` on the way out of the ``with`` block, whatever happened inside.

nccidfs runs from a copy of its package taken when the benchmark starts: the work tree is an editable
install that others change while a run is under way, and one run must measure one version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

SYSTEMS = ("nccidfs", "s3fs", "rclone")
MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 15.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class MountError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """Which bucket and prefix to mount, on which endpoint."""

    endpoint: str
    bucket: str
    prefix: str = "training"


@dataclass(frozen=True)
class Mounted:
    system: str
    path: Path
    pid: int
    cache_dir: Path
    log: Path

    def cpu_seconds(self) -> float:
        """User and system CPU of the daemon so far, all its threads."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM of the daemon, in KiB."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0])
        return values


def tool_env(drop_ca_bundle: bool = False) -> dict[str, str]:
    """The environment for S3 clients: throwaway credentials, no proxy for loopback."""
    env = {**os.environ, **CREDENTIALS}
    if drop_ca_bundle:
        env.pop("AWS_CA_BUNDLE", None)  # rclone refuses to start when it names a bundle it cannot parse
    return env


def package_dir() -> Path:
    """Where ``import nccidfs`` finds the package (the work tree, for an editable install)."""
    spec = importlib.util.find_spec("nccidfs")
    if spec is None or spec.origin is None:
        raise MountError("nccidfs is not installed (pip install -e .)")
    return Path(spec.origin).parent


def fingerprint(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class Nccidfs:
    """The nccidfs under test: a copy of its package in ``source``, run with ``python -m nccidfs``."""

    source: Path

    @classmethod
    def snapshot(cls, destination: Path) -> Nccidfs:
        shutil.copytree(package_dir(), destination / "nccidfs", ignore=shutil.ignore_patterns("__pycache__"))
        return cls(destination)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.source / "nccidfs")

    def argv(self, *arguments: str) -> list[str]:
        # -P: ``python -m`` would otherwise put the working directory first on sys.path, and run from the
        # repository it would import the work tree's nccidfs instead of this copy.
        return [sys.executable, "-P", "-m", "nccidfs", *arguments]

    def env(self) -> dict[str, str]:
        return {**tool_env(), "PYTHONPATH": str(self.source)}

    @cached_property
    def has_prefetch(self) -> bool:
        """Whether this version has the series prefetch switch."""
        result = subprocess.run(self.argv("--help"), capture_output=True, text=True, env=self.env(), check=False)
        return "--no-prefetch" in result.stdout


def command(system: str, target: Target, mountpoint: Path, cache_dir: Path, nccidfs: Nccidfs,
            prefetch: bool, disk_cache: bool = False) -> list[str]:
    """The command line of each system, with its default settings; ``disk_cache`` turns on rclone's full
    disk cache (nccidfs always caches on disk, s3fs only with ``use_cache``, left off)."""
    endpoint = target.endpoint
    if system == "nccidfs":
        argv = nccidfs.argv(str(mountpoint), "-f", "--endpoint-url", endpoint, "--bucket", target.bucket,
                            "--prefix", f"{target.prefix}/", "--cache-dir", str(cache_dir), "--cache-size", "10G",
                            "--log-level", "info")
        return argv if prefetch or not nccidfs.has_prefetch else [*argv, "--no-prefetch"]
    if system == "s3fs":
        passwd = cache_dir / "passwd"
        passwd.write_text(f"{CREDENTIALS['AWS_ACCESS_KEY_ID']}:{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
        passwd.chmod(0o600)
        return ["s3fs", f"{target.bucket}:/{target.prefix}", str(mountpoint), "-f", "-o", f"url={endpoint}",
                "-o", "use_path_request_style", "-o", "ro", "-o", f"passwd_file={passwd}"]
    if system == "rclone":
        return ["rclone", "mount", f":s3:{target.bucket}/{target.prefix}", str(mountpoint), "--read-only",
                "--s3-provider", "Other", "--s3-env-auth", "--s3-endpoint", endpoint, "--s3-force-path-style",
                "--cache-dir", str(cache_dir), *(["--vfs-cache-mode", "full"] if disk_cache else [])]
    raise ValueError(f"unknown system {system!r}")


@contextmanager
def mounted(system: str, target: Target, workdir: Path, nccidfs: Nccidfs, prefetch: bool = True,
            disk_cache: bool = False) -> Iterator[Mounted]:
    """Mount ``system`` on a fresh directory under ``workdir``; unmount and reap it on exit."""
    base = workdir / system
    shutil.rmtree(base, ignore_errors=True)
    mountpoint, cache_dir = base / "mnt", base / "cache"
    mountpoint.mkdir(parents=True)
    cache_dir.mkdir()
    log = base / "daemon.log"
    argv = command(system, target, mountpoint, cache_dir, nccidfs, prefetch, disk_cache)
    env = nccidfs.env() if system == "nccidfs" else tool_env(drop_ca_bundle=system == "rclone")
    with open(log, "wb") as log_file:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        _wait_for_mount(process, mountpoint, log)
        yield Mounted(system, mountpoint, process.pid, cache_dir, log)
    finally:
        unmount(process, mountpoint)


def _wait_for_mount(process: subprocess.Popen[bytes], mountpoint: Path, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mountpoint):
        if process.poll() is not None:
            raise MountError(f"{mountpoint.parent.name} exited with {process.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise MountError(f"{mountpoint.parent.name} did not mount within {MOUNT_TIMEOUT:.0f}s: {tail(log)}")
        time.sleep(0.05)


def unmount(process: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """``fusermount3 -u``; if the mount is busy or the daemon hangs, SIGTERM, then SIGKILL and a lazy unmount."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=EXIT_TIMEOUT)
            break
        except subprocess.TimeoutExpired:
            continue
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
