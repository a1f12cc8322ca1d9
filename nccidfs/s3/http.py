"""Kept-alive HTTP/1.1 connections to the bucket's endpoint, for the signed GETs of :mod:`nccidfs.s3.get`.

The standard library's :mod:`http.client` over a small pool: a GET costs about a third of the interpreter
time it costs through botocore's HTTP session and urllib3 (measured 0.12 ms against 0.40 ms a request on
loopback), and every cold read of the mount, every view and every listing page is a GET. An idle connection
that the server closed (or that holds bytes nobody asked for) is dropped before it is used; a request that
a reused connection loses before any answer is sent again, once, on a new connection. An endpoint reached
through a proxy (``HTTP_PROXY``, ``HTTPS_PROXY``) is left to botocore's session, which knows proxies.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from botocore.awsrequest import AWSRequest
from botocore.httpsession import URLLib3Session, get_cert_path

# An answer lost on a reused connection before its status line: the server closed the connection while it
# sat idle. Sent again on a new connection (a GET may be).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Response:
    """An answer whose body is read from its connection; the connection goes back to the pool once the body
    is read through (:meth:`release_conn`), and is closed otherwise."""

    def __init__(self, pool: Connections, connection: http.client.HTTPConnection,
                 answer: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._connection: http.client.HTTPConnection | None = connection
        self._answer = answer
        self.status = answer.status
        self.headers = answer.headers

    def read(self, amount: int) -> bytes:
        """Up to ``amount`` bytes of the body; fewer only at its end (or where the server cut it short)."""
        return self._answer.read(amount)

    def close(self) -> None:
        """Drop the connection: the body was not read through."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def release_conn(self) -> None:
        """Hand the connection back for the next request if the whole body was read, else close it."""
        if self._connection is None:
            return
        if self._answer.isclosed() and self._connection.sock is not None:
            self._pool.give_back(self._connection)
            self._connection = None
        else:
            self.close()


class Connections:
    """A pool of kept-alive connections to one endpoint (scheme, host and port of ``url``), keeping at most
    ``max_idle`` idle; more may be open at once while more threads send."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, max_idle: int,
                 verify: str | bool, socket_options: list[tuple[int, int, int]]) -> None:
        parts = urlsplit(url)
        self._origin = (parts.scheme, parts.netloc)
        self._host, self._port = parts.hostname or "", parts.port
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":  # verify: as botocore's, a CA bundle's path, or True for its own bundle
            self._tls = ssl.create_default_context(cafile=verify if isinstance(verify, str) else get_cert_path(True))
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._socket_options = socket_options
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []

    def send(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """Send a signed request (no body) and read its status and headers; the body is left to the caller."""
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise ValueError(f"{parts.scheme}://{parts.netloc} is not this pool's endpoint")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection, reused = self._take()
        try:
            try:
                return Response(self, connection, self._ask(connection, method, target, headers))
            except _STALE:
                if not reused:
                    raise
                connection.close()
                connection = self._open()
                return Response(self, connection, self._ask(connection, method, target, headers))
        except BaseException:
            connection.close()
            raise

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    @staticmethod
    def _ask(connection: http.client.HTTPConnection, method: str, target: str,
             headers: dict[str, str]) -> http.client.HTTPResponse:
        connection.request(method, target, headers=headers)
        return connection.getresponse()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection that is still good (and True), else a new one (and False)."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._open(), False
            if connection.sock is not None and not _readable(connection.sock):
                return connection, True
            connection.close()  # closed by the server, or it sent what nobody asked for

    def _open(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._tls is not None:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout,
                                                     context=self._tls)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        connection.connect()
        assert connection.sock is not None
        for option in self._socket_options:
            connection.sock.setsockopt(*option)
        connection.sock.settimeout(self._read_timeout)
        return connection


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server's close, or bytes nobody asked for.
    (poll, not select: the daemon's descriptors may number past select's 1024.)"""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class ProxiedSession:
    """botocore's own HTTP session, for an endpoint reached through a proxy; answers as :class:`Response`
    does (urllib3's response has the same methods)."""

    def __init__(self, proxies: dict[str, str], *, connect_timeout: float, read_timeout: float, max_idle: int,
                 verify: str | bool, socket_options: list[tuple[int, int, int]]) -> None:
        # (The type stubs of URLLib3Session are narrower than what botocore itself passes it.)
        options: dict[str, Any] = {"verify": verify, "timeout": (connect_timeout, read_timeout),
                                   "socket_options": socket_options}
        self._session = URLLib3Session(proxies=proxies, max_pool_connections=max_idle, **options)

    def send(self, method: str, url: str, headers: dict[str, str]) -> Any:
        request = AWSRequest(method, url, headers=headers).prepare()
        request.stream_output = True
        return self._session.send(request).raw
