from __future__ import annotations

import pytest

from nccidfs.cli import from_mount_helper, main
from nccidfs.errors import ConfigError


def test_fstab_options_become_flags() -> None:
    argv = ["nccidfs", "/mnt/nccid", "-o", "rw,_netdev,nofail,profile=nccid,cache_size=100G,allow_other,"
            "endpoint_url=http://127.0.0.1:9000,x-systemd.automount"]
    assert from_mount_helper(argv) == ["/mnt/nccid", "--profile", "nccid", "--cache-size", "100G", "--allow-other",
                                       "--endpoint-url", "http://127.0.0.1:9000"]
    assert from_mount_helper(["my-bucket", "/m", "-o", "ro"]) == ["/m", "--bucket", "my-bucket"]


@pytest.mark.parametrize("argv", [["nccidfs", "/m", "-o", "cache_sise=1G"], ["/m", "-o", "ro"]])
def test_bad_fstab_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        from_mount_helper(argv)


def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["/tmp", "--cache-size"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["nccidfs", "/mnt/x", "-o", "bogus"]) == 2
