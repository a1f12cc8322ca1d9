"""The control socket over a real Unix socket: hostile or broken clients never stop the channel."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nccidfs import control
from nccidfs.control import ANSWER_SECONDS, CONNECTION_SECONDS, MAX_CONNECTIONS, MAX_REQUEST, ControlServer
from nccidfs.errors import NccidfsError
from tests.clock import FakeClock
from tests.mounting import within

# How long a test waits for the server's threads to act on what they were sent: generous, since the
# server's own time limits run on a fake clock and never expire while a loaded machine is slow.
PATIENCE = 30.0


def fail(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[ControlServer]:
    server = ControlServer(tmp_path / "c.sock", {"status": lambda request: {"ok": True}, "fail": fail}, clock)
    server.start()
    yield server
    server.close()


def status_reply(path: Path) -> dict[str, Any]:
    """The reply to a status request, or what broke it: a refusal may close the connection before the request
    is sent, and only a refusal read back counts as one."""
    try:
        return raw(path, b'{"op": "status"}\n')
    except (BrokenPipeError, ConnectionResetError) as error:
        return {"closed": error.strerror}


def raw(path: Path, payload: bytes) -> dict[str, Any]:
    """Send raw bytes, read the one-line reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(PATIENCE)
        client.connect(str(path))
        client.sendall(payload)
        reply: dict[str, Any] = json.loads(client.makefile("rb").readline())
    return reply


def test_deeply_nested_json_is_answered_with_an_error_and_the_channel_lives(server: ControlServer) -> None:
    assert "bad request" in raw(server.path, b"[" * 60_000 + b"\n")["error"]
    assert control.send(server.path, {"op": "status"}, timeout=1) == {"ok": True}


@pytest.mark.parametrize("payload", [b"not json\n", b'{"op": "nope"}\n', b"[1, 2]\n", b'"op"\n', b"\xff\xfe\n"])
def test_malformed_requests_get_an_error_reply(server: ControlServer, payload: bytes) -> None:
    assert "bad request" in raw(server.path, payload)["error"]


def test_an_oversized_request_is_refused(server: ControlServer) -> None:
    assert "longer than" in raw(server.path, b" " * (MAX_REQUEST + 10) + b"\n")["error"]


def test_a_client_holding_its_connection_open_delays_no_one(server: ControlServer, clock: FakeClock) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(server.path))
        idle.sendall(b'{"op": ')  # and then nothing
        assert control.send(server.path, {"op": "status"}, timeout=ANSWER_SECONDS) == {"ok": True}
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):  # answered while the idle connection is still being waited for
            idle.recv(1)
        clock.advance(CONNECTION_SECONDS)
        idle.settimeout(PATIENCE)
        assert "no complete request" in json.loads(idle.makefile("rb").readline())["error"]


def test_a_flood_of_idle_connections_is_refused_beyond_the_limit_and_then_drains(server: ControlServer,
                                                                                  clock: FakeClock) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CONNECTIONS)]
    try:
        for client in idle:
            client.connect(str(server.path))
        # The server takes the idle connections on its own thread: the next request is refused once it has
        # taken them all, and answered once they have timed out. Each is asked again until then.
        assert within(PATIENCE, lambda: "busy" in status_reply(server.path).get("error", ""))
        clock.advance(CONNECTION_SECONDS)
        assert within(PATIENCE, lambda: status_reply(server.path) == {"ok": True})
    finally:
        for client in idle:
            client.close()


def test_a_failing_handler_gives_an_error_reply(server: ControlServer) -> None:
    assert "internal error" in control.send(server.path, {"op": "fail"}, timeout=1)["error"]
    assert control.send(server.path, {"op": "status"}, timeout=1) == {"ok": True}


def test_close_never_unlinks_a_socket_that_another_process_bound_at_the_same_path(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "c.sock", {})
    server.path.unlink()  # e.g. a second daemon took the path over
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(server.path))
        server.close()
        assert server.path.exists()


def test_a_live_socket_is_left_alone_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(NccidfsError, match="another nccidfs daemon"):
            ControlServer(path, {})
        assert path.exists()
    # Closed without unlinking: what a daemon killed with SIGKILL leaves behind.
    server = ControlServer(path, {"status": lambda request: {"ok": True}})
    server.start()
    assert control.send(path, {"op": "status"}, timeout=1) == {"ok": True}
    server.close()
    assert not path.exists()


def test_a_file_in_the_sockets_place_is_not_removed(tmp_path: Path) -> None:
    (tmp_path / "c.sock").write_text("not a socket")
    with pytest.raises(NccidfsError, match="not a socket"):
        ControlServer(tmp_path / "c.sock", {})
    assert (tmp_path / "c.sock").read_text() == "not a socket"
