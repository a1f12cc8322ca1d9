"""The kept-alive connections of the signed GETs, against small servers on loopback: connections the server
closed are not used, a body not read through never leaves its connection to the next request, and an
endpoint behind a proxy is reached through the proxy."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nccidfs.config import S3Config
from nccidfs.s3.http import Connections, ProxiedSession
from nccidfs.s3.store import Boto3Store
from tests.mounting import CREDENTIALS, PREFIX, create_bucket

BODY = b"x" * 100_000


class Server:
    """Answers every GET with BODY on HTTP/1.1 keep-alive; counts connections and requests. With
    ``drop_after`` n, a connection's request after its n-th is read and left unanswered: the connection is
    closed, as a server closes a connection that sat idle too long just as a request arrives."""

    def __init__(self, drop_after: int = 0, tls: ssl.SSLContext | None = None) -> None:
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
        if tls is not None:
            self._http.socket = tls.wrap_socket(self._http.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._http.server_address[1]}/"

    @contextmanager
    def running(self) -> Iterator[Server]:
        thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._http.shutdown()
            self._http.server_close()


def pool(url: str, max_idle: int = 4, verify: str | bool = True) -> Connections:
    return Connections(url, connect_timeout=2, read_timeout=2, max_idle=max_idle, verify=verify, socket_options=[])


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


def certificate(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (host names or IP addresses) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{names[0]}.pem", directory / f"{names[0]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_server(cert: tuple[Path, Path]) -> Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return Server(tls=context)


def test_https_is_verified_against_the_ca_bundle_given(tmp_path: Path) -> None:
    cert = certificate(tmp_path, ["127.0.0.1"])
    with tls_server(cert).running() as server:
        connections = pool(server.url, verify=str(cert[0]))
        assert [get(connections, server.url) for _ in range(3)] == [BODY] * 3
        assert server.connections == 1
        with pytest.raises(ssl.SSLCertVerificationError):
            get(pool(server.url), server.url)  # the default bundle does not know this certificate


def test_https_refuses_a_certificate_for_another_host(tmp_path: Path) -> None:
    cert = certificate(tmp_path, ["s3.example.org"])
    with tls_server(cert).running() as server, pytest.raises(ssl.SSLCertVerificationError,
                                                             match="IP address mismatch|hostname"):
        get(pool(server.url, verify=str(cert[0])), server.url)


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
