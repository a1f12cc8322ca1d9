"""The commands that talk to a running mount, where it hurts: a daemon that does not answer, paths that are
not under a mount, two mounts at once, and signals to a daemon in the foreground."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.control import ANSWER_SECONDS
from nccidfs.demo.warehouse import DemoObject
from tests.mounting import BUCKET, PREFIX, MountedDaemon, daemon_env, seed_demo_bucket, start_demo
from tests.unit.test_cli import assert_one_line

pytestmark = pytest.mark.fuse

# A command against a daemon that does not answer ends within this long (the answer's bound, plus start-up).
BOUNDED_SECONDS = ANSWER_SECONDS + 5


def nccidfs(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, cwd=cwd,
                          env=daemon_env(), timeout=timeout)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, f"{BUCKET}-commands", warehouse)


@pytest.fixture
def mount(tmp_path: Path, s3_endpoint: str, bucket: str) -> Iterator[MountedDaemon]:
    # The kernel trusts no attributes, so a command that stats the mount point asks the daemon.
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log", bucket=bucket,
                       extra=["--no-prefetch", "--attr-timeout", "0"]) as daemon:
        yield daemon


def a_patient(warehouse: list[DemoObject]) -> str:
    """``ct/<patient>`` of the first CT image."""
    return "/".join(next(o.key for o in warehouse if o.key.startswith(f"{PREFIX}ct/")).split("/")[1:3])


@pytest.mark.parametrize("command", [["status", "{m}"], ["refresh", "{m}"], ["refresh", "{m}", "ct"],
                                     ["prefetch", "{m}/ct"], ["catalog", "build", "{m}"]],
                         ids=["status", "refresh", "refresh-path", "prefetch", "catalog-build"])
def test_a_stopped_daemon_is_reported_within_seconds(mount: MountedDaemon, command: list[str]) -> None:
    assert mount.process is not None
    os.kill(mount.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = nccidfs(*(arg.format(m=mount.mountpoint) for arg in command), timeout=BOUNDED_SECONDS * 3)
        took = time.monotonic() - started
    finally:
        os.kill(mount.process.pid, signal.SIGCONT)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "does not answer" in result.stderr
    assert took < BOUNDED_SECONDS, took
    assert nccidfs("status", str(mount.mountpoint)).returncode == 0  # and answers again once continued


def test_prefetch_refuses_a_path_not_under_a_mount_at_once(mount: MountedDaemon, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "nowhere").symlink_to(tmp_path / "missing")  # a dangling link: once a raw errno
    for index in range(2000):
        (elsewhere / "deep" / f"f{index}").touch()
    started = time.monotonic()
    result = nccidfs("prefetch", str(elsewhere))
    assert result.returncode == 2 and "is not under an nccidfs mount" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 5


def test_prefetch_passes_over_a_dangling_link_in_a_mount(mount: MountedDaemon, tmp_path: Path,
                                                         warehouse: list[DemoObject]) -> None:
    """A link under the patient view whose target is gone (the series was just removed, say) is not a
    failure; the files next to it are still read."""
    from nccidfs.commands import _files

    links = tmp_path / "links"
    links.mkdir()
    (links / "gone").symlink_to(tmp_path / "missing")
    image = mount.mountpoint / next(o.key for o in warehouse if o.key.endswith(".dcm"))[len(PREFIX):]
    (links / "image").symlink_to(image)
    assert [path.name for path, _ in _files([links])] == ["image"]


def test_prefetch_of_a_key_warms_the_mount_the_command_runs_in(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                               warehouse: list[DemoObject]) -> None:
    patient = a_patient(warehouse)
    first = MountedDaemon(tmp_path / "a", s3_endpoint, tmp_path / "cache-a", tmp_path / "a.log", bucket=bucket,
                          extra=["--no-prefetch"])
    second = MountedDaemon(tmp_path / "b", s3_endpoint, tmp_path / "cache-b", tmp_path / "b.log", bucket=bucket,
                           extra=["--no-prefetch"])
    with first, second:
        result = nccidfs("prefetch", f"{PREFIX}{patient}", cwd=second.mountpoint)
        assert result.returncode == 0, result.stderr
        used = {m: nccidfs("status", str(m.mountpoint)).stdout for m in (first, second)}
        assert '"misses": 0' in used[first] and '"misses": 0' not in used[second]
        ambiguous = nccidfs("prefetch", f"{PREFIX}{patient}", cwd=tmp_path)
        assert ambiguous.returncode == 2 and "more than one mount" in ambiguous.stderr, ambiguous.stderr
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGSTOP)  # a mount that does not answer is not the one meant
        try:
            # Other mounts on the machine are asked too; one that is slow to answer a look-up it has taken
            # holds this process's exit in the kernel, so no tight bound here (the stopped-daemon tests have it).
            alone = nccidfs("prefetch", f"{PREFIX}{patient}", cwd=tmp_path, timeout=120)
        finally:
            os.kill(first.process.pid, signal.SIGCONT)
        assert alone.returncode == 0, alone.stderr


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """``nccidfs demo`` once mounted, with the port of its S3 server; stopped and unmounted on exit."""
    mountpoint = tmp_path / "demo"
    process = start_demo(mountpoint, tmp_path)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert os.path.ismount(mountpoint), first
        port = int(first.split("served by S3 at http://127.0.0.1:")[1].split()[0])
        yield process, mountpoint, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)


def answers(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_closing_the_demos_terminal_ends_it_with_its_mount_and_server(
        demo: tuple[subprocess.Popen[str], Path, int]) -> None:
    process, mountpoint, port = demo
    assert answers(port)
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=20) == 0, process.stderr.read() if process.stderr else ""
    assert not os.path.ismount(mountpoint) and not answers(port)


def test_ctrl_c_on_the_demo_exits_130_and_stops_everything(demo: tuple[subprocess.Popen[str], Path, int]) -> None:
    process, mountpoint, port = demo
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 130
    assert not os.path.ismount(mountpoint) and not answers(port)


@pytest.mark.parametrize(("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"])
def test_a_foreground_mount_exits_130_on_ctrl_c_and_0_on_sigterm(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                                  number: int, code: int) -> None:
    daemon = MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket)
    with daemon:
        assert daemon.process is not None
        daemon.process.send_signal(number)
        assert daemon.process.wait(timeout=20) == code, daemon.log()
    assert not os.path.ismount(daemon.mountpoint)
    assert "Traceback" not in daemon.log()


def test_sigusr1_reopens_the_log_file_that_logrotate_moved(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    log_file = tmp_path / "nccidfs.log"
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "stderr", bucket=bucket,
                       extra=["--log-file", str(log_file)]) as daemon:
        assert daemon.process is not None
        assert nccidfs("refresh", str(daemon.mountpoint), "ct").returncode == 0
        rotated = log_file.rename(tmp_path / "nccidfs.log.1")
        daemon.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not log_file.exists():
            assert time.monotonic() < deadline, "SIGUSR1 did not reopen the log file"
            time.sleep(0.05)
        assert nccidfs("refresh", str(daemon.mountpoint), "data").returncode == 0
        time.sleep(0.2)
        assert "refresh /data" in log_file.read_text() and "refresh /data" not in rotated.read_text()
        assert "refresh /ct" in rotated.read_text()
        assert log_file.stat().st_mode & 0o777 == 0o600
        assert os.path.ismount(daemon.mountpoint)  # the signal did not end the mount


def test_cache_stats_of_a_mount_point_is_refused_in_one_line(mount: MountedDaemon) -> None:
    for target in (mount.mountpoint, mount.mountpoint / "ct"):
        result = nccidfs("cache", "stats", "--cache-dir", str(target))
        assert result.returncode == 2 and "is an nccidfs mount, not a cache directory" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert '"objects"' in nccidfs("cache", "stats", "--cache-dir", str(mount.cache_dir)).stdout


def test_mount_options_status_and_refresh_of_a_missing_path(s3_endpoint: str, bucket_name: str,
                                                            tmp_path: Path) -> None:
    from nccidfs.demo.warehouse import generate_warehouse

    seed_demo_bucket(s3_endpoint, bucket_name, generate_warehouse(ct_slices=2))
    # Long enough that "<cache dir>/control.sock" cannot be a Unix socket address (108 bytes).
    cache_dir = tmp_path / ("c" * 60) / ("d" * 60)
    mount = MountedDaemon(tmp_path / "mnt", s3_endpoint, cache_dir, tmp_path / "log", bucket=bucket_name,
                          extra=["--uid", "4321", "--gid", "8765", "--umask", "027", "--attr-timeout", "1"])
    with mount:
        status = nccidfs("status", str(mount.mountpoint))
        assert status.returncode == 0, status.stderr
        assert '"ListObjectsV2"' in status.stdout  # the start-up probe is counted
        assert str(cache_dir) not in status.stdout.split('"control_socket": ')[1].splitlines()[0]
        assert_one_line(nccidfs("refresh", str(mount.mountpoint), "nosuch/dir"), 2, "not in the mount")
        assert nccidfs("refresh", str(mount.mountpoint), "ct").returncode == 0
        top = os.stat(mount.mountpoint / "ct")
        image = next(p for p in (mount.mountpoint / "ct").rglob("*.dcm"))
        assert (top.st_uid, top.st_gid, top.st_mode & 0o777) == (4321, 8765, 0o550)
        assert os.stat(image).st_mode & 0o777 == 0o440
    assert "Ignoring invalid max threads value" not in mount.log()


def test_demo_prints_its_endpoint_once_mounted_and_refuses_a_second_demo(tmp_path: Path) -> None:
    mountpoint = tmp_path / "demo"
    demo = start_demo(mountpoint, tmp_path)
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert os.path.ismount(mountpoint), first  # printed only once the mount answers
        lines = [first] + [demo.stdout.readline() for _ in range(6)]
        boto3_line = next(line for line in lines if "boto3" in line).strip()
        assert any("aws --region eu-west-2 --endpoint-url http://127.0.0.1:" in line for line in lines)
        # Pasted into a shell whose python3 is the system's, which has no boto3 on a fresh machine.
        listed = subprocess.run(["sh", "-c", boto3_line], capture_output=True, text=True,
                                env={**daemon_env(), "PATH": "/usr/bin:/bin"}, timeout=30)
        assert "training/ct/" in listed.stdout, listed.stderr
        started = time.monotonic()
        assert_one_line(nccidfs("demo", str(mountpoint)), 2, "already mounted")
        assert time.monotonic() - started < 3
        assert "nccidfs.daemon" in (tmp_path / "demo.log").read_text()  # --log-file is honoured
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=20)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
