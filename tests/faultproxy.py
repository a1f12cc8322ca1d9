"""A fault-injecting HTTP reverse proxy between an S3 client and an S3 server on loopback.

Tests put :class:`FaultProxy` in front of moto and tell it, through rules, to answer some requests with
S3 errors, cut bodies short, stall or refuse, while counting what went through. Standard library only.

- Rules are tried in the order they were added; the first one that matches and has firings left
  applies, and a request no rule takes is forwarded untouched (Host header as the client sent it, so a
  SigV4 signature stays valid). A rule's key filters apply to the object key, or to the ``prefix`` of a
  ListObjectsV2 request.
- Every wait is bounded: upstream sockets time out, idle client connections time out, and stalls and
  throttles wake up as soon as :meth:`FaultProxy.stop` is called, which closes every connection and
  joins every thread.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, TypedDict, Unpack
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024
UPSTREAM_TIMEOUT = 30.0
# A client connection that sends nothing for this long is closed, so no handler thread waits forever.
IDLE_TIMEOUT = 30.0
KINDS = ("ListObjectsV2", "GetObject", "GetObject(range)", "HeadObject", "PutObject", "other")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "expect"})
ERROR_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "AccessDenied": "Access Denied",
    "NoSuchKey": "The specified key does not exist.",
}

Action = Literal["fail", "drop", "stall", "reset", "truncate", "throttle"]
Op = Literal["list", "get"]


class Where(TypedDict, total=False):
    """Which requests a rule applies to; every filter given must match."""

    method: str
    op: Op
    key: str
    pattern: str


@dataclass(frozen=True)
class S3Request:
    method: str
    kind: str
    key: str  # the object key, or the prefix of a listing

    @property
    def op(self) -> Op | None:
        if self.kind == "ListObjectsV2":
            return "list"
        return "get" if self.kind.startswith("GetObject") else None


def classify(method: str, target: str, has_range: bool) -> S3Request:
    """The kind of a path-style S3 request, from its method, path and query."""
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    _bucket, _, key = unquote(url.path).lstrip("/").partition("/")
    if method == "GET" and not key and query.get("list-type") == ["2"]:
        return S3Request(method, "ListObjectsV2", query.get("prefix", [""])[0])
    kinds = {"GET": "GetObject(range)" if has_range else "GetObject", "HEAD": "HeadObject", "PUT": "PutObject"}
    return S3Request(method, kinds.get(method, "other") if key else "other", key)


@dataclass
class Rule:
    """One fault, the requests it matches and how many more times it fires (None: forever)."""

    action: Action
    where: Where
    remaining: int | None
    status: int = 0
    code: str = ""
    amount: float = 0.0  # seconds (stall), bytes (reset) or bytes per second (throttle)
    hits: int = 0

    def matches(self, request: S3Request) -> bool:
        where = self.where
        return (where.get("method", request.method).upper() == request.method
                and where.get("op", request.op) == request.op
                and where.get("key", "") in request.key
                and re.search(where.get("pattern", ""), request.key) is not None)


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so stop() leaves none behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        threading.current_thread().name = "faultproxy-connection"
        if not self.server.proxy._track(self.connection):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: tests read counters, not access logs."""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # the client went away, or stop() shut the socket
            self.close_connection = True

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = classify(self.command, self.path, "Range" in self.headers)
        rule = proxy._take(request)
        if rule is None:
            self._forward(body, None)
        elif rule.action == "fail":
            self._send_error(rule.status, rule.code, request.key)
        elif rule.action == "drop":
            self._abort(reset=True)
        elif rule.action == "stall":
            if proxy._stopping.wait(rule.amount):
                self._abort(reset=True)
            else:
                self._forward(body, None)
        else:
            self._forward(body, rule)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def _send_error(self, status: int, code: str, key: str) -> None:
        message = ERROR_MESSAGES.get(code, code)
        document = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><Key>{key}</Key><RequestId>faultproxy</RequestId></Error>"
                    ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "faultproxy")
        self.send_header("Content-Length", str(len(document)))
        self.end_headers()
        if self.command != "HEAD":
            self._write(document)

    def _forward(self, body: bytes, rule: Rule | None) -> None:
        """Send the request upstream and relay the answer, cut or paced as ``rule`` says."""
        upstream = http.client.HTTPConnection(*self.server.proxy._upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            self._relay(response, rule)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse, rule: Rule | None) -> None:
        chunks: Iterator[bytes]
        declared = response.getheader("Content-Length")
        if declared is None:  # chunked upstream: buffer it, since we always send a Content-Length
            data = response.read()
            length, chunks = len(data), iter([data])
        else:
            length, chunks = int(declared), iter(lambda: response.read(CHUNK), b"")
        limit = length
        if rule is not None and rule.action == "reset":
            limit = min(length, int(rule.amount))
        elif rule is not None and rule.action == "truncate":
            limit, length = length // 2, max(length, 1)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        for chunk in chunks:
            piece = chunk[:limit - sent]
            if rule is not None and rule.action == "throttle":
                self._paced_write(piece, rule.amount)
            else:
                self._write(piece)
            sent += len(piece)
            if sent >= limit:
                break
        if rule is not None and rule.action in ("reset", "truncate"):
            self._abort(reset=rule.action == "reset")

    def _paced_write(self, data: bytes, rate: float) -> None:
        step = max(1, int(rate / 20))
        for start in range(0, len(data), step):
            if self.server.proxy._stopping.wait(step / rate):
                raise ConnectionAbortedError("proxy stopping")
            self._write(data[start:start + step])

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.server.proxy._count_bytes(len(data))

    def _abort(self, reset: bool) -> None:
        """Close the client connection now: with an RST when ``reset``, else with a plain FIN."""
        self.close_connection = True
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """A reverse proxy on a free 127.0.0.1 port that forwards to ``upstream_url`` unless a rule fires."""

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or upstream.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and join every thread; safe to call twice."""
        if self._server is None or self._thread is None:
            return
        with self._lock:
            self._stopping.set()
            connections = list(self._connections)
        self._server.shutdown()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- counters -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Requests seen per kind (faulted ones included) and ``bytes``: response body bytes sent."""
        with self._lock:
            return {kind: self._counts[kind] for kind in (*KINDS, "bytes")}

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    # -- rules ----------------------------------------------------------------------------------
    def fail(self, status: int = 503, code: str = "SlowDown", times: int | None = None,
             **where: Unpack[Where]) -> Rule:
        """Answer with an S3 XML error (503 SlowDown, 500 InternalError, 403 AccessDenied, 404 NoSuchKey)."""
        return self._add(Rule("fail", where, times, status=status, code=code))

    def reset_after(self, nbytes: int, times: int | None = None, **where: Unpack[Where]) -> Rule:
        """Send the headers and ``nbytes`` of the body, then reset the connection (RST)."""
        return self._add(Rule("reset", where, times, amount=nbytes))

    def truncate(self, times: int | None = None, **where: Unpack[Where]) -> Rule:
        """Send the full Content-Length but only half the body, then close the connection (FIN)."""
        return self._add(Rule("truncate", where, times))

    def stall(self, seconds: float, times: int | None = None, **where: Unpack[Where]) -> Rule:
        """Say nothing for ``seconds``, then answer normally (unless the proxy stops first)."""
        return self._add(Rule("stall", where, times, amount=seconds))

    def throttle(self, bytes_per_second: float, times: int | None = None, **where: Unpack[Where]) -> Rule:
        """Relay the body at ``bytes_per_second``: a slow download that can be interrupted."""
        return self._add(Rule("throttle", where, times, amount=bytes_per_second))

    def dead(self) -> Rule:
        """Close every connection at once without answering, until :meth:`clear`."""
        return self._add(Rule("drop", {}, None))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    # -- called by handler threads ----------------------------------------------------------------
    def _take(self, request: S3Request) -> Rule | None:
        """Count the request and consume one firing of the first rule that matches it."""
        with self._lock:
            self._counts[request.kind] += 1
            for rule in self._rules:
                if rule.remaining != 0 and rule.matches(request):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    def _count_bytes(self, nbytes: int) -> None:
        with self._lock:
            self._counts["bytes"] += nbytes

    def _track(self, connection: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._connections.add(connection)
            return True

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
