"""The systemd unit: it verifies, and the daemon tells systemd when the mount is ready."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.mounting import PREFIX, MountedDaemon, create_bucket

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("nccidfs") is None,
                    reason="needs systemd-analyze and an installed nccidfs")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "nccidfs.service").read_text()
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
