"""The systemd unit: it verifies, rates well in systemd-analyze security, starts without an AWS profile,
and the daemon tells systemd when the mount is ready."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import PREFIX, MountedDaemon, create_bucket

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "nccidfs.service"
MAX_EXPOSURE = 4.0


def env_template() -> dict[str, str]:
    """The settings of systemd/nccidfs.env, as systemd's EnvironmentFile= reads them."""
    lines = (REPO / "systemd" / "nccidfs.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def exec_start(program: str) -> list[str]:
    """The unit's ExecStart= as systemd would run it, with nccidfs replaced by ``program``.

    Lines ending in a backslash are joined and "$$" becomes "$"; the unit leaves every other expansion
    to the shell, so there is no lone "$" for systemd to substitute.
    """
    joined = UNIT.read_text().replace("\\\n", " ")
    value = next(line.split("=", 1)[1] for line in joined.splitlines() if line.startswith("ExecStart="))
    assert not re.search(r"(?<!\$)\$(?!\$)", value.replace("$$", "")), "systemd would expand a variable itself"
    return [word.replace("/usr/local/bin/nccidfs", program) for word in shlex.split(value.replace("$$", "$"))]


def test_the_profile_flag_is_passed_only_when_a_profile_is_set() -> None:
    printed = exec_start("printf '%s\\n'")

    def flags(profile: str) -> list[str]:
        env = {**env_template(), "NCCIDFS_PROFILE": profile, "PATH": "/usr/bin:/bin"}
        return subprocess.run(printed, env=env, capture_output=True, text=True, check=True).stdout.splitlines()

    assert "--profile" not in flags("")
    with_profile = flags("nccid lab")
    assert with_profile[with_profile.index("--profile") + 1] == "nccid lab"
    assert flags("")[:2] == ["/mnt/nccid", "--foreground"]


def _supports_offline_security() -> bool:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return False
    usage = subprocess.run([analyze, "--help"], capture_output=True, text=True).stdout
    return "--offline" in usage


@pytest.mark.skipif(not _supports_offline_security(), reason="needs systemd-analyze with --offline (systemd 250+)")
def test_the_unit_rates_at_most_4_in_systemd_analyze_security(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True,
                            text=True)
    exposure = re.search(r"Overall exposure level for nccidfs.service: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("nccidfs") is None,
                    reason="needs systemd-analyze and an installed nccidfs")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = UNIT.read_text()
    # The unit names the usual install path; point it at this machine's nccidfs so verify can check it.
    unit = unit.replace("/usr/local/bin/nccidfs", str(shutil.which("nccidfs")))
    (tmp_path / "nccidfs.service").write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "nccidfs.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "nccidfs.service" not in result.stderr, result.stderr
    env_file = (REPO / "systemd" / "nccidfs.env").read_text()
    for name in ("MOUNTPOINT", "BUCKET", "PREFIX", "REGION", "PROFILE", "CACHE_DIR", "CACHE_SIZE", "LISTING_TTL"):
        assert f"NCCIDFS_{name}=" in env_file and f"${{NCCIDFS_{name}}}" in unit


@pytest.mark.fuse
def test_daemon_notifies_systemd_when_mounted(tmp_path: Path, s3_endpoint: str, bucket_name: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}data/Covid1/status_2020-05-01.json", b"{}")])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log",
                           bucket=bucket_name) as daemon:
            message = listener.recv(4096)
            assert message.startswith(b"READY=1")
            assert (daemon.mountpoint / "data").is_dir()
        assert listener.recv(4096) == b"STOPPING=1"


@pytest.mark.fuse
@pytest.mark.skipif(shutil.which("mount.fuse3") is None or shutil.which("nccidfs") is None,
                    reason="needs mount.fuse3 (fuse3) and an installed nccidfs")
def test_an_fstab_style_mount_works(tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    import os

    from tests.mounting import daemon_env

    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}data/Covid1/status_2020-05-01.json", b"{}")])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    options = (f"_netdev,nofail,bucket={bucket_name},endpoint_url={s3_endpoint},cache_dir={tmp_path / 'cache'},"
               f"cache_size=1G,listing_ttl=60,log_file={tmp_path / 'log'},no_prefetch")
    # mount(8) runs helpers with a fixed PATH, so the fstab line names the program by its absolute path.
    source = f"{shutil.which('nccidfs')}#{bucket_name}"
    options = options.replace(f"bucket={bucket_name},", "")
    result = subprocess.run(["mount", "-t", "fuse", source, str(mountpoint), "-o", options],
                            capture_output=True, text=True, timeout=60, env=daemon_env())
    try:
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "data" / "Covid1" / "status_2020-05-01.json").read_bytes() == b"{}"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
    assert not os.path.ismount(mountpoint)


@pytest.mark.fuse
def test_the_units_command_mounts_with_env_credentials_and_no_profile(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}data/Covid1/status_2020-05-01.json", b"{}")])
    settings = {**env_template(), "NCCIDFS_MOUNTPOINT": str(tmp_path / "mnt"), "NCCIDFS_BUCKET": bucket_name,
                "NCCIDFS_CACHE_DIR": str(tmp_path / "cache"), "NCCIDFS_OPTIONS": f"--endpoint-url {s3_endpoint}"}
    assert settings["NCCIDFS_PROFILE"] == ""  # the template's default
    for name, value in settings.items():
        monkeypatch.setenv(name, value)  # MountedDaemon runs the command with this environment
    daemon = MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket_name)
    daemon.args = exec_start(f"{sys.executable} -m nccidfs")
    with daemon:
        assert (daemon.mountpoint / "data" / "Covid1" / "status_2020-05-01.json").read_bytes() == b"{}"
    assert daemon.returncode == 0, daemon.log()

