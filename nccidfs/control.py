"""The daemon's control channel: a Unix socket, one JSON request per connection.

The socket lies in the cache directory, or in the runtime directory when that path is too long for a
socket address (:func:`nccidfs.config.control_socket_path`). ``nccidfs status``, ``refresh``, ``prefetch``,
``metrics`` and ``catalog build`` find it through a record the daemon leaves in the runtime directory
(:func:`publish`), keyed by its mount point, and talk to the daemon here with a time limit: nothing is
read through the mount first, so a daemon that is stopped or stuck makes them fail in seconds rather than
hang in the kernel. The mount itself is read-only, so it cannot carry commands. The socket is 0600, so
only the mounting user (and root) can drive the daemon.

No client can stop the channel: each connection is served in its own short-lived thread, has
:data:`CONNECTION_SECONDS` in all to send one line of at most :data:`MAX_REQUEST` bytes, and gets an
error reply for anything else. At most :data:`MAX_CONNECTIONS` are served at once; more are refused.
The socket file is removed only by the server that bound it, and only if it is still the same file.
The server's time limits read a :class:`~nccidfs.clock.Clock`, so tests can move past them without waiting.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.config import APP_NAME, runtime_dir
from nccidfs.errors import NccidfsError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
CONNECTION_SECONDS = 2.0
MAX_CONNECTIONS = 8
# Connections the kernel holds before the server takes them; each is then served or refused at once.
BACKLOG = MAX_CONNECTIONS
# A request is one short line: one receive nearly always holds it whole.
RECEIVE_BYTES = 16 * 1024
# How long a command waits for the daemon's answer before it says the daemon does not answer.
ANSWER_SECONDS = 5.0
# How long a socket left in the way has to accept a connection before it is taken for a dead daemon's.
STALE_PROBE_SECONDS = 1.0
RECORDS = "mounts"


class ControlServer:
    """Serves requests on ``path`` from daemon threads until closed."""

    def __init__(self, path: Path, handlers: dict[str, Handler], clock: Clock = REAL_CLOCK) -> None:
        self.path = path
        self._handlers = handlers
        self._clock = clock
        _remove_stale_socket(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._socket.bind(str(path))
        finally:
            os.umask(old_umask)
        bound = os.stat(path)
        self._identity = (bound.st_dev, bound.st_ino)
        self._socket.listen(BACKLOG)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                _reply(connection, {"error": "busy: too many control connections, try again"})
                connection.close()
                continue
            threading.Thread(target=self._serve, args=(connection,), name="control-connection", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                try:
                    reply = self._handle(_read_line(connection, self._clock.monotonic() + CONNECTION_SECONDS,
                                                    self._clock))
                except TimeoutError:
                    reply = {"error": f"no complete request within {CONNECTION_SECONDS:.0f}s"}
                except OSError as error:
                    log.debug("control connection failed: %s", error)
                    return
                _reply(connection, reply)
        finally:
            self._slots.release()

    def _handle(self, line: bytes | None) -> dict[str, Any]:
        if line is None:
            return {"error": f"request longer than {MAX_REQUEST} bytes"}
        try:
            request = json.loads(line)
            handler = self._handlers[request["op"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            return {"error": "bad request: send one JSON object with an 'op' on one line"}
        try:
            return handler(request)
        except NccidfsError as error:
            return {"error": str(error)}
        except Exception:
            log.exception("control request %r failed", request.get("op"))
            return {"error": "internal error; see the daemon's log"}

    def close(self) -> None:
        """Stop serving; remove the socket file if it is still the one bound here."""
        self._socket.close()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return
        if (current.st_dev, current.st_ino) == self._identity:
            self.path.unlink(missing_ok=True)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse one that a live daemon still answers on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NccidfsError(f"{path} exists and is not a socket; remove it to enable 'nccidfs status'")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_SECONDS)
        try:
            probe.connect(str(path))
        except OSError as error:
            if error.errno != errno.ECONNREFUSED:
                raise
            path.unlink(missing_ok=True)
            return
    raise NccidfsError(f"another nccidfs daemon answers on {path}; one cache directory serves one mount")


def _read_line(connection: socket.socket, deadline: float, clock: Clock) -> bytes | None:
    """One request line; None when it is longer than MAX_REQUEST. TimeoutError once ``clock`` is past
    ``deadline`` (a receive that times out only makes it look at the clock again)."""
    data = bytearray()
    while b"\n" not in data:
        if len(data) > MAX_REQUEST:
            return None
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise TimeoutError
        connection.settimeout(remaining)
        try:
            chunk = connection.recv(RECEIVE_BYTES)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    line = bytes(data.split(b"\n", 1)[0])
    return None if len(line) > MAX_REQUEST else line


def _reply(connection: socket.socket, reply: dict[str, Any]) -> None:
    try:
        connection.settimeout(CONNECTION_SECONDS)
        connection.sendall(json.dumps(reply).encode() + b"\n")
    except OSError as error:
        log.debug("control reply not sent: %s", error)


def send(path: Path, request: dict[str, Any], timeout: float = ANSWER_SECONDS) -> dict[str, Any]:
    """One request to the daemon listening at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(client.makefile("rb").readline())
    return reply


def _record_name(mountpoint: Path) -> str:
    return hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16] + ".json"


def publish(mountpoint: Path, socket_path: Path) -> Path | None:
    """Record where the daemon of ``mountpoint`` listens; returns the record, or None without a runtime dir
    (commands then read the socket's path through the mount, with the same time limit)."""
    runtime = runtime_dir()
    if runtime is None:
        return None
    record = runtime / RECORDS / _record_name(mountpoint)
    try:
        record.parent.mkdir(mode=0o700 if os.geteuid() else 0o755, parents=True, exist_ok=True)
        staged = record.with_suffix(f".{os.getpid()}")
        staged.write_text(json.dumps({"mountpoint": str(mountpoint), "control_socket": str(socket_path),
                                      "pid": os.getpid()}))
        staged.replace(record)  # never read half written
    except OSError as error:
        log.info("no record of the control socket in %s (%s); commands will find it through the mount",
                 runtime, error)
        return None
    return record


def withdraw(record: Path) -> None:
    """Remove this daemon's record, unless a later daemon of the same mount point replaced it."""
    try:
        if json.loads(record.read_text()).get("pid") == os.getpid():
            record.unlink()
    except (OSError, ValueError):
        pass


def lookup(mountpoint: Path) -> Path | None:
    """The control socket recorded for ``mountpoint``: this user's daemons first, then root's."""
    for runtime in filter(None, (runtime_dir(), Path(platformdirs.site_runtime_dir(APP_NAME)))):
        try:
            record = json.loads((runtime / RECORDS / _record_name(mountpoint)).read_text())
        except (OSError, ValueError):
            continue
        if record.get("mountpoint") == str(mountpoint):
            return Path(record["control_socket"])
    return None
