"""The kept-alive connections of the signed GETs, against small servers on loopback: connections the server
closed are not used, a body not read through never leaves its connection to the next request, and an
endpoint behind a proxy is reached through the proxy."""

from __future__ import annotations

import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nccidfs.config import S3Config
from nccidfs.s3.http import Connections, ProxiedSession
from nccidfs.s3.store import Boto3Store
from tests.mounting import CREDENTIALS, PREFIX, create_bucket

BODY = b"x" * 100_000


class Server:
    """Answers every GET with BODY on HTTP/1.1 keep-alive; counts connections and requests. With
    ``drop_after`` n, a connection's request after its n-th is read and left unanswered: the connection is
    closed, as a server closes a connection that sat idle too long just as a request arrives."""

    def __init__(self, drop_after: int = 0) -> None:
        self.connections = 0
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.served = 0
                server.connections += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                if drop_after and self.served >= drop_after:
                    self.close_connection = True
                    return
                self.served += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/"

    @contextmanager
    def running(self) -> Iterator[Server]:
        thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._http.shutdown()
            self._http.server_close()


def pool(url: str, max_idle: int = 4) -> Connections:
    return Connections(url, connect_timeout=2, read_timeout=2, max_idle=max_idle, verify=True, socket_options=[])


def get(connections: Connections, url: str, read: int = len(BODY)) -> bytes:
    response = connections.send("GET", url + "object", {})
    try:
        return response.read(read)
    finally:
        response.release_conn()


def test_one_connection_serves_request_after_request() -> None:
    with Server().running() as server:
        connections = pool(server.url)
        assert all(get(connections, server.url) == BODY for _ in range(5))
        assert (server.connections, server.requests) == (1, 5)


def test_a_request_lost_on_a_reused_connection_is_sent_again_on_a_new_one() -> None:
    with Server(drop_after=1).running() as server:
        connections = pool(server.url)
        assert [get(connections, server.url) for _ in range(3)] == [BODY] * 3
        assert server.connections == 3  # each reused connection lost the next request once
        assert server.requests == 5


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    with Server().running() as server:
        connections = pool(server.url)
        assert get(connections, server.url) == BODY
        (idle,) = connections._idle
        assert idle.sock is not None
        idle.sock.shutdown(socket.SHUT_RD)  # reads now see the end, as after the server's FIN
        assert get(connections, server.url) == BODY
        assert server.connections == 2 and server.requests == 2


def test_a_body_not_read_through_closes_its_connection() -> None:
    with Server().running() as server:
        connections = pool(server.url)
        assert get(connections, server.url, read=10) == BODY[:10]
        assert connections._idle == []
        assert get(connections, server.url) == BODY
        assert server.connections == 2


def test_idle_connections_are_kept_up_to_the_bound() -> None:
    with Server().running() as server:
        connections = pool(server.url, max_idle=2)
        answers = [connections.send("GET", server.url + "object", {}) for _ in range(4)]
        for answer in answers:
            assert answer.read(len(BODY)) == BODY
            answer.release_conn()
        assert len(connections._idle) == 2 and server.connections == 4


def test_a_url_of_another_endpoint_is_refused() -> None:
    connections = pool("http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="not this pool's endpoint"):
        connections.send("GET", "http://127.0.0.2:9/object", {})


@contextmanager
def forward_proxy() -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP forward proxy: relays each absolute-form GET and records its URL."""
    seen: list[str] = []
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            hop_by_hop = ("proxy-connection", "connection")
            headers = {name: value for name, value in self.headers.items() if name.lower() not in hop_by_hop}
            request = urllib.request.Request(self.path, headers=headers)
            try:
                answer: Any = direct.open(request, timeout=10)
            except urllib.error.HTTPError as error:
                answer = error
            body = answer.read()
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_behind_a_proxy_is_reached_through_it(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"nccid-test-{uuid.uuid4().hex[:12]}"
    key = f"{PREFIX}ct/Covid1/1.2/1.3/a b.dcm"
    create_bucket(s3_endpoint, bucket, [(key, BODY)])
    with forward_proxy() as (proxy, seen):
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        store = Boto3Store(S3Config(bucket=bucket, endpoint_url=s3_endpoint, deadline=5))
        assert isinstance(store._gets._http, ProxiedSession)
        listed = store.list_dir(f"{PREFIX}ct/Covid1/1.2/1.3/").objects
        assert [obj.key for obj in listed] == [key]
        assert store.get_range(key, 10, 20, listed[0].etag) == BODY[10:20]
        assert len(seen) == 2 and all(url.startswith(s3_endpoint) for url in seen)
