"""The daemon's control channel: a Unix socket in the cache directory, one JSON request per connection.

``nccidfs refresh`` and ``nccidfs status`` find the socket through the mount's ``.nccidfs/status.json``
and talk to the daemon here; the mount itself is read-only, so it cannot carry commands. The socket is
0600, so only the mounting user (and root) can drive the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nccidfs.errors import NccidfsError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024


class ControlServer:
    """Serves requests on ``path`` from a daemon thread until closed."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._socket.bind(str(path))
        finally:
            os.umask(old_umask)
        self._socket.listen(8)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            with connection:
                connection.settimeout(5)
                try:
                    reply = self._handle(connection.makefile("rb").readline(MAX_REQUEST))
                    connection.sendall(json.dumps(reply).encode() + b"\n")
                except OSError as error:
                    log.debug("control connection failed: %s", error)

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            handler = self._handlers[request["op"]]
        except (ValueError, KeyError, TypeError):
            return {"error": "bad request"}
        try:
            return handler(request)
        except NccidfsError as error:
            return {"error": str(error)}

    def close(self) -> None:
        self._socket.close()
        self.path.unlink(missing_ok=True)


def send(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to the daemon listening at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(client.makefile("rb").readline())
    return reply
