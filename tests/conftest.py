"""Shared fixtures: a moto S3 server over HTTP on 127.0.0.1, buckets seeded per test, mounts."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.demo.warehouse import DemoObject, generate_warehouse
from tests.core import Cores
from tests.mounting import CREDENTIALS, MOUNTED, PREFIX, fuse_available


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the whole run (a bucket per test keeps tests apart)."""
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket_name() -> str:
    return f"nccid-test-{uuid.uuid4().hex[:12]}"


def pytest_configure(config: pytest.Config) -> None:
    """Put the ``nccidfs`` installed beside this interpreter on PATH: the service tests run it as the
    systemd unit and an fstab line do, and ``.venv/bin/python -m pytest`` does not put ``.venv/bin`` there."""
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, (scripts, os.environ.get("PATH"))))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mounted tests (marked ``fuse``) belong in tests/integration, so tests/unit runs without FUSE; where
    FUSE is missing they are skipped."""
    misplaced = [item.nodeid for item in items if "fuse" in item.keywords and item.nodeid.startswith("tests/unit/")]
    if misplaced:
        raise pytest.UsageError("mounted tests belong in tests/integration: " + ", ".join(misplaced))
    if fuse_available():
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount3")
    for item in items:
        if "fuse" in item.keywords:
            item.add_marker(skip)


def _check_daemon_logs(running_too: bool) -> None:
    """Fail on an error or traceback in the log of a daemon that mounted (and has stopped, unless
    ``running_too``) that its test did not declare with ``allowed_log``."""
    found = []
    for watched in list(MOUNTED):
        if watched.running() and not running_too:
            continue
        MOUNTED.remove(watched)
        found += [f"{watched.path}: {line}" for line in watched.errors()]
    if found:
        pytest.fail("the daemon logged errors that the test did not expect:\n" + "\n".join(found))


@pytest.fixture(autouse=True)
def daemon_logs_clean() -> Iterator[None]:
    """The logs of the daemons a test mounted and stopped hold no error it did not expect."""
    yield
    _check_daemon_logs(running_too=False)


@pytest.fixture(autouse=True, scope="module")
def module_daemon_logs_clean() -> Iterator[None]:
    """The same for daemons that a module's fixture kept mounted across its tests, once they stopped."""
    yield
    _check_daemon_logs(running_too=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A per-test directory holding the mount point, cache directory and daemon log."""
    return tmp_path


@pytest.fixture(scope="session")
def warehouse() -> list[DemoObject]:
    """The demo warehouse, generated once per run."""
    return generate_warehouse(prefix=PREFIX)


@pytest.fixture
def cores(tmp_path: Path) -> Iterator[Cores]:
    """Cores assembled in the test's directory, all closed after it."""
    made = Cores(tmp_path)
    yield made
    for assembly in made.made:
        assembly.close()
