"""netguard: what the scraper may reach, and that refusals happen before any connection.

Private, metadata and IPv6 cases use an injected resolver mapping a made-up host name to the
address under test, and a connector that records every connection: the assertion that nothing
was connected is the point. Real traffic only ever goes to 127.0.0.1 (the fixture site and small
servers started here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagineer_worker.config import load_settings
from imagineer_worker.netguard import (
    AddressRefused,
    FetchError,
    FetchPolicy,
    FetchRefused,
    FetchTimeoutError,
    ResponseTooLarge,
    TooManyRedirects,
    check_url,
    direct_connect,
    fetch,
)
from imagineer_worker.ratelimit import DomainRateLimiter
from imagineer_worker.testing.fixture_site import FixtureSite
from imagineer_worker.testing.services import RedisServer


class ConnectSpy:
    """A connector that records ``(ip, port)`` and then really connects (loopback only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, ip: str, port: int, timeout: float) -> socket.socket:
        self.calls.append((ip, port))
        assert ip in ("127.0.0.1", "::1"), f"test tried to connect to {ip}"
        return direct_connect(ip, port, timeout)


class FakeResolver:
    """Maps made-up host names to addresses; counts lookups (one per hop, never a second one)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.fixture
def spy() -> ConnectSpy:
    return ConnectSpy()


def policy(spy: ConnectSpy, allow: tuple[str, ...] = (), resolver: FakeResolver | None = None,
           **kwargs: object) -> FetchPolicy:
    resolver = resolver or FakeResolver({})
    return FetchPolicy.build(allow, connector=spy, resolver=resolver, **kwargs)  # type: ignore[arg-type]


# --- address policy -------------------------------------------------------------------------------


def test_loopback_is_refused_without_allow_list(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    url = fixture_site.base_url + "/img/1.png"
    with pytest.raises(AddressRefused) as info:
        fetch(url, policy=policy(spy))
    assert str(info.value) == (
        f"refused {url}: 127.0.0.1 is a loopback address (allow it with scraping.allow_networks)")
    assert spy.calls == []


def test_loopback_is_fetched_when_allow_listed(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    response = fetch(fixture_site.base_url + "/img/1.png", policy=policy(spy, ("127.0.0.1/32",)))
    assert (response.status, response.content_type) == (200, "image/png")
    assert response.body == fixture_site.images["/img/1.png"]
    assert spy.calls == [("127.0.0.1", fixture_site.port)]


@pytest.mark.parametrize(("address", "reason"), [
    ("10.0.0.5", "10.0.0.5 is a private address"),
    ("192.168.1.20", "192.168.1.20 is a private address"),
    ("172.16.3.4", "172.16.3.4 is a private address"),
    ("169.254.10.10", "169.254.10.10 is a link-local address"),
    ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
    ("fd00:ec2::254", "fd00:ec2::254 is a cloud metadata address"),
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe is a cloud metadata address"),
    ("::1", "::1 is a loopback address"),
    ("fe80::1", "fe80::1 is a link-local address"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1 is an IPv6 form of 127.0.0.1, a loopback address"),
    ("64:ff9b::a00:5", "64:ff9b::a00:5 is an IPv6 form of 10.0.0.5, a private address"),
    ("100.64.1.1", "100.64.1.1 is a shared (CGNAT) address"),
    ("0.0.0.0", "0.0.0.0 is an unspecified address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("fc00::1", "fc00::1 is a private address"),
])
def test_internal_addresses_are_refused_before_connecting(spy: ConnectSpy, address: str, reason: str) -> None:
    resolver = FakeResolver({"images.example": [address]})
    with pytest.raises(AddressRefused, match=r"^refused http://images\.example/a\.png: ") as info:
        fetch("http://images.example/a.png", policy=policy(spy, resolver=resolver))
    assert reason in str(info.value)
    assert spy.calls == []


def test_literal_private_address_is_refused_without_dns(spy: ConnectSpy) -> None:
    resolver = FakeResolver({})
    with pytest.raises(AddressRefused, match=r"10\.1\.2\.3 is a private address"):
        fetch("http://10.1.2.3:8080/x.png", policy=policy(spy, resolver=resolver))
    with pytest.raises(AddressRefused, match="::1 is a loopback address"):
        fetch("http://[::1]:8080/x.png", policy=policy(spy, resolver=resolver))
    assert (resolver.lookups, spy.calls) == ([], [])


def test_one_private_address_among_public_ones_refuses_the_host(spy: ConnectSpy) -> None:
    # DNS rebinding / split answers: the attacker chooses which address a client would use.
    resolver = FakeResolver({"mixed.example": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(AddressRefused, match=r"10\.0\.0\.5 is a private address"):
        fetch("http://mixed.example/", policy=policy(spy, resolver=resolver))
    assert spy.calls == []


def test_public_addresses_pass_the_check() -> None:
    resolver = FakeResolver({"cdn.example": ["93.184.216.34", "2606:2800:220:1::1"]})
    assert check_url("https://cdn.example/a.png", policy=FetchPolicy(resolver=resolver)) == [
        "93.184.216.34", "2606:2800:220:1::1"]


def test_metadata_needs_an_exact_allow_list_entry() -> None:
    resolver = FakeResolver({"meta.example": ["169.254.169.254"]})
    broad = FetchPolicy.build(["169.254.0.0/16", "meta.example"], resolver=resolver)
    with pytest.raises(AddressRefused, match="cloud metadata address"):
        check_url("http://meta.example/latest", policy=broad)
    assert check_url("http://169.254.169.254/", policy=FetchPolicy.build(["169.254.169.254/32"])) == [
        "169.254.169.254"]


def test_ipv4_allow_list_covers_the_mapped_ipv6_form() -> None:
    resolver = FakeResolver({"mapped.example": ["::ffff:127.0.0.1"]})
    allowed = FetchPolicy.build(["127.0.0.1/32"], resolver=resolver)
    assert check_url("http://mapped.example/", policy=allowed) == ["::ffff:127.0.0.1"]


def test_allow_list_by_host_name_connects_to_the_checked_address(spy: ConnectSpy,
                                                                 header_server: HeaderServer) -> None:
    resolver = FakeResolver({"fixture.internal": ["127.0.0.1"]})
    url = f"http://fixture.internal:{header_server.port}/hello?q=1"
    with pytest.raises(AddressRefused, match="is a loopback address"):
        fetch(url, policy=policy(spy, resolver=resolver))
    response = fetch(url, policy=policy(spy, ("fixture.internal",), resolver=resolver, user_agent="ua-test"))
    assert response.status == 200
    # One lookup per attempt, connection to the address that was checked, original Host header.
    assert resolver.lookups == ["fixture.internal", "fixture.internal"]
    assert spy.calls == [("127.0.0.1", header_server.port)]
    assert header_server.requests[-1] == {
        "path": "/hello?q=1", "host": f"fixture.internal:{header_server.port}", "user-agent": "ua-test"}


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.png", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO",
                                 "http://user:secret@127.0.0.1/a.png"])
def test_only_plain_http_and_https_urls(spy: ConnectSpy, url: str) -> None:
    with pytest.raises(AddressRefused, match=r"only http and https|credentials"):
        fetch(url, policy=policy(spy, ("127.0.0.1/32",)))
    assert spy.calls == []


def test_unresolvable_host_is_a_fetch_error(spy: ConnectSpy) -> None:
    with pytest.raises(FetchError, match=r"cannot resolve nowhere\.invalid") as info:
        fetch("http://nowhere.invalid/", policy=policy(spy))
    assert not isinstance(info.value, FetchRefused)


# --- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "reason"), [
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
])
def test_redirect_to_an_internal_address_is_refused_at_that_hop(
        fixture_site: FixtureSite, spy: ConnectSpy, target: str, reason: str) -> None:
    start = f"{fixture_site.base_url}/redirect?to={target}"
    with pytest.raises(AddressRefused) as info:
        fetch(start, policy=policy(spy, ("127.0.0.1/32",)))
    assert str(info.value).startswith(f"refused {target}: {reason}")
    assert f"(redirected from {start})" in str(info.value)
    assert spy.calls == [("127.0.0.1", fixture_site.port)]  # the fixture site only


def test_relative_redirects_are_followed_and_recorded(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    start = f"{fixture_site.base_url}/redirect?to=/img/2.png"
    response = fetch(start, policy=policy(spy, ("127.0.0.1/32",)))
    assert (response.url, response.redirects) == (fixture_site.base_url + "/img/2.png", (start,))
    assert response.body == fixture_site.images["/img/2.png"]
    assert len(spy.calls) == 2


def test_redirects_are_capped(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    start = f"{fixture_site.base_url}/redirect?to=/img/2.png"
    with pytest.raises(TooManyRedirects, match=r"more than scraping.max_redirects \(0\)"):
        fetch(start, policy=policy(spy, ("127.0.0.1/32",), max_redirects=0))


# --- size and time limits -------------------------------------------------------------------------


def test_announced_size_over_the_limit_is_refused(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    with pytest.raises(ResponseTooLarge, match=r"Content-Length 2097156 exceeds .*\(1048576 bytes\)"):
        fetch(fixture_site.base_url + "/huge.png", policy=policy(spy, ("127.0.0.1/32",), max_bytes=1 << 20))


def test_streamed_body_over_the_limit_is_refused(spy: ConnectSpy) -> None:
    def no_length(conn: socket.socket) -> None:  # no Content-Length: only the stream cap applies
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        for _ in range(40):
            conn.sendall(b"\0" * 65536)

    with raw_server(no_length) as port, pytest.raises(ResponseTooLarge, match="the body exceeds"):
        fetch(f"http://127.0.0.1:{port}/", policy=policy(spy, ("127.0.0.1/32",), max_bytes=1 << 20))


def test_slow_server_times_out(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError, match="timed out fetching"):
        fetch(fixture_site.base_url + "/slow.png?s=1", policy=policy(spy, ("127.0.0.1/32",), timeout=0.3))
    assert time.monotonic() - started < 0.9
    time.sleep(1.1 - (time.monotonic() - started))  # let the server's late write fail inside this test


def test_dripping_server_hits_the_per_response_deadline(spy: ConnectSpy) -> None:
    def drip(conn: socket.socket) -> None:  # every read succeeds within the per-read timeout
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            time.sleep(0.05)
            conn.sendall(b"x")

    started = time.monotonic()
    with raw_server(drip) as port, pytest.raises(FetchTimeoutError):
        fetch(f"http://127.0.0.1:{port}/",
              policy=policy(spy, ("127.0.0.1/32",), timeout=0.3, total_timeout=0.6))
    assert time.monotonic() - started < 1.5


def test_non_image_content_type_is_reported(fixture_site: FixtureSite, spy: ConnectSpy) -> None:
    # fetch reports the media type; the scraper rejects non-image/* (tests/tasks/test_scraping.py).
    response = fetch(fixture_site.base_url + "/notes.txt", policy=policy(spy, ("127.0.0.1/32",)))
    assert (response.status, response.content_type, response.body) == (200, "text/plain", b"not an image\n")


# --- https: SNI and certificate checks on the host name, connection to the checked IP -------------


def test_https_verifies_the_host_name_while_connecting_to_the_checked_ip(tls_server: TLSServer,
                                                                       spy: ConnectSpy) -> None:
    resolver = FakeResolver({"fixture.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    trusting = ssl.create_default_context(cafile=str(tls_server.ca))
    good = policy(spy, ("127.0.0.1/32",), resolver=resolver, ssl_context=trusting)
    response = fetch(f"https://fixture.test:{tls_server.port}/x", policy=good)
    assert (response.status, response.body) == (200, b"tls ok")
    assert tls_server.sni == ["fixture.test"]
    assert tls_server.hosts == [f"fixture.test:{tls_server.port}"]
    with pytest.raises(FetchError, match=r"TLS handshake with other\.test .*Hostname mismatch"):
        fetch(f"https://other.test:{tls_server.port}/x", policy=good)
    with pytest.raises(FetchError, match="certificate verify failed"):  # system CAs do not know our CA
        fetch(f"https://fixture.test:{tls_server.port}/x", policy=dataclasses.replace(good, ssl_context=None))


# --- rate limit -----------------------------------------------------------------------------------


def test_rate_limit_spaces_requests_to_one_domain(fixture_site: FixtureSite, spy: ConnectSpy,
                                                 redis_server: RedisServer) -> None:
    client = redis_server.client()
    limiter = DomainRateLimiter(client, 0.5, prefix=f"imagineer:ratelimit:test-{uuid.uuid4().hex}:")
    resolver = FakeResolver({"other.test": ["127.0.0.1"]})
    limited = policy(spy, ("127.0.0.1/32",), resolver=resolver, rate_limiter=limiter)
    started = time.monotonic()
    fetch(fixture_site.base_url + "/img/1.png", policy=limited)
    assert 0 < client.pttl(limiter.prefix + "127.0.0.1") <= 500
    fetch(f"http://other.test:{fixture_site.port}/img/1.png", policy=limited)  # another domain: no wait
    assert time.monotonic() - started < 0.4
    fetch(fixture_site.base_url + "/img/2.png", policy=limited)
    assert time.monotonic() - started >= 0.5


def test_rate_limit_is_shared_between_clients(redis_server: RedisServer) -> None:
    prefix = f"imagineer:ratelimit:test-{uuid.uuid4().hex}:"
    a = DomainRateLimiter(redis_server.client(), 0.3, prefix=prefix)
    b = DomainRateLimiter(redis_server.client(), 0.3, prefix=prefix)  # another worker's connection
    assert a.acquire("Example.COM") == 0.0  # first caller: no wait
    assert b.acquire("example.com") >= 0.25


def test_policy_from_settings(redis_server: RedisServer) -> None:
    settings = load_settings({"IMAGINEER_SCRAPING_ALLOW_NETWORKS": "10.1.0.0/16,files.internal",
                              "IMAGINEER_SCRAPING_TIMEOUT_SECONDS": "2.5",
                              "IMAGINEER_SCRAPING_MAX_RESPONSE_BYTES": "1000",
                              "IMAGINEER_SCRAPING_MAX_REDIRECTS": "2",
                              "IMAGINEER_SCRAPING_USER_AGENT": "bot/2"})
    with pytest.raises(ValueError, match="needs a Redis client"):
        FetchPolicy.from_settings(settings)
    built = FetchPolicy.from_settings(settings, redis_client=redis_server.client())
    assert (built.timeout, built.max_bytes, built.max_redirects, built.user_agent) == (2.5, 1000, 2, "bot/2")
    assert built.allow_hosts == frozenset({"files.internal"})
    assert [str(n) for n in built.allow_networks] == ["10.1.0.0/16"]
    assert built.rate_limiter is not None
    assert built.rate_limiter.interval == 1.0
    off = load_settings({"IMAGINEER_SCRAPING_DOMAIN_INTERVAL_SECONDS": "0"})
    assert FetchPolicy.from_settings(off).rate_limiter is None


# --- small local servers --------------------------------------------------------------------------


class raw_server:  # noqa: N801 - used as a context manager like a function
    """Accept one connection on 127.0.0.1 and hand the socket to ``handler`` (in a thread)."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):  # the client gave up, which is what the tests expect
                self.handler(conn)

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.thread.join(5)
        self.sock.close()


@dataclasses.dataclass
class HeaderServer:
    port: int
    requests: list[dict[str, str | None]]


def _serve(handler: type[BaseHTTPRequestHandler],
           context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def header_server() -> Iterator[HeaderServer]:
    requests: list[dict[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            requests.append({"path": self.path, "host": self.headers.get("Host"),
                             "user-agent": self.headers.get("User-Agent")})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = _serve(Handler)
    yield HeaderServer(int(server.server_address[1]), requests)
    server.shutdown()
    server.server_close()


@dataclasses.dataclass
class TLSServer:
    port: int
    ca: Path
    sni: list[str | None]
    hosts: list[str | None]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """HTTPS on 127.0.0.1 with a certificate for ``fixture.test`` signed by a throwaway CA."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=fixture.test")
    (d / "ext.cnf").write_text("subjectAltName=DNS:fixture.test\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "1", "-extfile", "ext.cnf")
    sni: list[str | None] = []
    hosts: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hosts.append(self.headers.get("Host"))
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"tls ok")

    server = _serve(Handler, context)
    yield TLSServer(int(server.server_address[1]), d / "ca.pem", sni, hosts)
    server.shutdown()
    server.server_close()
