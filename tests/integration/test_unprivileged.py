"""nccidfs run by a user who is not root, as on a shared HPC node: each FUSE prerequisite that is missing
ends in one line naming it and exit 2, from the foreground, the background, the demo and the Slurm wrapper.

The user is uid 65534 (``setpriv``), in a private mount namespace where the FUSE files are replaced by
copies with the mode under test: the machine's own /dev/fuse, fusermount3 and /etc/fuse.conf are never
changed, and each case is the same whatever their modes are here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from nccidfs.demo.warehouse import DemoObject
from tests.mounting import daemon_env, seed_demo_bucket

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "deploy" / "slurm" / "nccidfs-job-wrapper.sh"
USER = 65534
SETPRIV = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups"]
# Only to read this interpreter where it lies under a directory closed to other users (a pyenv in /root):
# the capability grants reading and searching, never writing, so /dev/fuse (opened read-write) stays closed.
READ_ANYWHERE = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
ONE_LINE_SECONDS = 10
NOWHERE = "http://127.0.0.1:9"  # a closed port: the one S3 endpoint these commands may reach

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare") or not os.path.exists("/dev/fuse")
    or not shutil.which("fusermount3"),
    reason="needs root (to become a second user in a private mount namespace), setpriv, unshare, /dev/fuse "
           "and fusermount3")


def user_prefix() -> list[str]:
    """setpriv to the second user, with the read capability only if this interpreter needs it."""
    # Through a shell: setpriv itself still resolves the program it starts with root's rights.
    probe = subprocess.run([*SETPRIV, "sh", "-c", f"{shlex.quote(sys.executable)} -c 'import nccidfs'"],
                           capture_output=True, env=daemon_env(), cwd="/")
    return SETPRIV if probe.returncode == 0 else [*SETPRIV, *READ_ANYWHERE]


@pytest.fixture
def home() -> Iterator[Path]:
    """A private home for the second user (pytest's tmp is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="nccidfs-user-", dir="/tmp"))
    os.chown(path, USER, USER)
    (path / "mnt").mkdir()
    os.chown(path / "mnt", USER, USER)
    yield path
    shutil.rmtree(path)


def as_user(home: Path, command: Sequence[str], device_mode: int = 0o600, fusermount_mode: int = 0o4755,
            fuse_conf: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` as the second user, in a mount namespace whose /dev/fuse, fusermount3 and /etc/fuse.conf
    are copies with these modes and this text."""
    stage = home.parent / f"{home.name}-stage"
    stage.mkdir()
    device = os.stat("/dev/fuse").st_rdev
    fusermount = os.path.realpath(shutil.which("fusermount3") or "")
    setup = (f"set -e; mount -t tmpfs -o mode=0755 nccidfs-test {stage}; "
             f"mknod -m {device_mode:o} {stage}/fuse c {os.major(device)} {os.minor(device)}; "
             f"mount --bind {stage}/fuse /dev/fuse; "
             f"cp {fusermount} {stage}/fusermount3; chmod {fusermount_mode:o} {stage}/fusermount3; "
             f"mount --bind {stage}/fusermount3 {fusermount}; "
             f"printf %s {shlex.quote(fuse_conf)} > {stage}/fuse.conf; "
             f"touch /etc/fuse.conf; mount --bind {stage}/fuse.conf /etc/fuse.conf; "
             f"exec \"$@\"")
    environment = {**daemon_env(), "HOME": str(home), "XDG_RUNTIME_DIR": str(home), **(env or {})}
    environment.pop("XDG_CACHE_HOME", None)
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh",
                               *user_prefix(), *command], capture_output=True, text=True, cwd=home,
                              env=environment, timeout=60)
    finally:
        stage.rmdir()


def nccidfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "nccidfs", *args]


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [["demo", "mnt"], ["mnt", "-f"], ["mnt"]], ids=["demo", "foreground",
                                                                                   "background"])
def test_a_user_who_cannot_open_dev_fuse_gets_one_line(home: Path, command: list[str]) -> None:
    started = time.monotonic()
    result = as_user(home, nccidfs(*command, "--endpoint-url", NOWHERE)
                     if command[0] != "demo" else nccidfs(*command))
    assert_refused(result, "cannot open /dev/fuse", "0666")
    assert time.monotonic() - started < ONE_LINE_SECONDS
    assert not os.path.ismount(home / "mnt")


def test_the_slurm_wrapper_as_a_user_who_cannot_open_dev_fuse_fails_with_that_line(home: Path) -> None:
    env = {"NCCIDFS_CMD": f"{sys.executable} -m nccidfs", "NCCIDFS_STATE_DIR": str(home / "state"),
           "NCCIDFS_CACHE_DIR": str(home / "cache"), "NCCIDFS_OPTIONS": f"--endpoint-url {NOWHERE}",
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    result = as_user(home, [str(WRAPPER), "true"], env=env)
    assert result.returncode == 2, result.stderr
    assert "cannot open /dev/fuse" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "state" / "mounted").exists()


@pytest.mark.parametrize(("mode", "needle"), [(0o644, "fusermount3 is not installed"),
                                              (0o755, "is not setuid root")], ids=["missing", "not-setuid"])
def test_a_user_mount_without_a_usable_fusermount3_is_refused(home: Path, mode: int, needle: str) -> None:
    result = as_user(home, nccidfs("mnt", "-f", "--endpoint-url", NOWHERE), device_mode=0o666,
                     fusermount_mode=mode)
    assert_refused(result, needle)


def test_allow_other_without_user_allow_other_is_refused(home: Path) -> None:
    commented = "# user_allow_other\nmount_max = 1000\n"
    result = as_user(home, nccidfs("mnt", "--allow-other", "--endpoint-url", NOWHERE), device_mode=0o666,
                     fuse_conf=commented)
    assert_refused(result, "--allow-other needs the line user_allow_other in /etc/fuse.conf")
    # With the line, the same command passes the check and gets as far as the (unreachable) endpoint.
    allowed = as_user(home, nccidfs("mnt", "--allow-other", "--endpoint-url", NOWHERE),
                      device_mode=0o666, fuse_conf="user_allow_other\n")
    assert allowed.returncode == 1 and f"cannot reach {NOWHERE}" in allowed.stderr, allowed.stderr


# -- the cluster recipes run by a user, where FUSE is open to users (/dev/fuse 0666, setuid fusermount3) --


@pytest.fixture(scope="module")
def user_bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, "nccid-user-recipes", warehouse)


def recipe_env(home: Path, s3_endpoint: str, bucket: str) -> dict[str, str]:
    return {"NCCIDFS_CMD": f"{sys.executable} -m nccidfs", "NCCIDFS_STATE_DIR": str(home / "state"),
            "NCCIDFS_MOUNTPOINT": str(home / "warehouse"), "NCCIDFS_CACHE_DIR": str(home / "cache"),
            "NCCIDFS_BUCKET": bucket, "NCCIDFS_OPTIONS": f"--endpoint-url {s3_endpoint} --no-prefetch",
            "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}


def test_the_slurm_wrapper_mounts_runs_and_unmounts_as_a_user(home: Path, s3_endpoint: str,
                                                             user_bucket: str) -> None:
    command = 'echo "$(id -u) $(find "$NCCIDFS_MOUNTPOINT/xray" -name "*.dcm" | wc -l)"'
    result = as_user(home, [str(WRAPPER), "sh", "-c", command], device_mode=0o666,
                     env=recipe_env(home, s3_endpoint, user_bucket))
    assert result.returncode == 0, result.stderr + (home / "state" / "nccidfs.log").read_text(errors="replace")
    uid, images = result.stdout.split()
    assert uid == str(USER) and int(images) > 0
    assert not (home / "state" / "mounted").exists()  # unmounted on the way out
    assert (home / "cache").stat().st_uid == USER and (home / "cache").stat().st_mode & 0o777 == 0o700


def test_the_container_entrypoint_mounts_and_unmounts_on_sigterm_as_a_user(home: Path, s3_endpoint: str,
                                                                          user_bucket: str) -> None:
    script = ('"$0" & daemon=$!; for _ in $(seq 150); do [ -d "$NCCIDFS_MOUNTPOINT/xray" ] && break; '
              'sleep 0.2; done; ls "$NCCIDFS_MOUNTPOINT"; kill -TERM "$daemon"; wait "$daemon"; echo "exit $?"; '
              'grep -c " $NCCIDFS_MOUNTPOINT " /proc/self/mounts')
    result = as_user(home, ["sh", "-c", script, str(REPO / "deploy" / "entrypoint.sh")], device_mode=0o666,
                     env=recipe_env(home, s3_endpoint, user_bucket))
    lines = result.stdout.split()
    assert "xray" in lines and lines[-3:] == ["exit", "0", "0"], result.stdout + result.stderr
