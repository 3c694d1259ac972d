"""SSRF-safe HTTP(S) fetching for the scraper, with the standard library only.

A scraping payload names arbitrary URLs, and the scraping workers run inside the cluster, so a
naive ``urlopen`` would let any API user read the cloud metadata service, the Redis broker or any
internal admin page. ``fetch`` therefore:

* accepts ``http``/``https`` URLs without credentials only;
* resolves the host once and refuses the request if ANY address is private, loopback,
  link-local, multicast, reserved, unspecified, shared (100.64/10) or not globally routable
  (IPv4-mapped / NAT64 / 6to4 IPv6 forms are judged by the IPv4 address they embed), unless the
  address is inside an allow-listed CIDR or the host name itself is allow-listed;
* refuses cloud metadata addresses even then, unless the allow-list names that exact address:
  a broad ``10.0.0.0/8``-style allowance must not expose instance credentials;
* connects to the address it checked (no second lookup, so DNS rebinding cannot swap it), sends
  the original ``Host`` header and, for https, keeps SNI and certificate verification on the
  host name;
* follows redirects itself, checking every hop the same way;
* streams the body with a size cap and per-read plus per-hop time limits;
* waits for a per-domain slot shared by every scraping worker through Redis
  (:class:`imagineer_worker.ratelimit.DomainRateLimiter`).
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from imagineer_worker.ratelimit import DomainRateLimiter, RedisLike

if TYPE_CHECKING:
    from imagineer_worker.config import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``: the one DNS lookup of a hop (tests inject a fake one)."""
Connector = Callable[[str, int, float], socket.socket]
"""``(ip, port, timeout) -> connected socket``: opens the TCP connection to a checked address."""

ALLOW_HINT = "allow it with scraping.allow_networks"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024

# Instance metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS task metadata, Alibaba).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
SHARED_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64_NETWORK = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


# --- errors ---------------------------------------------------------------------------------------


class FetchError(Exception):
    """A fetch that produced no usable response: bad URL, DNS, connection or protocol failure."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class FetchTimeoutError(FetchError):
    """The server did not answer (or finish answering) within the configured time."""


class FetchRefused(FetchError):  # noqa: N818 - reads as a verdict: "the fetch was refused"
    """The policy forbids this request; retrying cannot help. Nothing was sent to a refused address."""


class AddressRefused(FetchRefused):
    """The URL's scheme, credentials or resolved address is not allowed."""


class TooManyRedirects(FetchRefused):
    """More redirects than ``scraping.max_redirects``."""


class ResponseTooLarge(FetchRefused):
    """The body is (or announces to be) larger than ``scraping.max_response_bytes``."""


# --- address policy -------------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form routes to (mapped, NAT64, 6to4), judged instead of the v6 one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64_NETWORK:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached from inside the cluster ("a private address"), or None."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_NETWORK, "a shared (CGNAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _is_metadata(ip: IPAddress) -> bool:
    if ip in METADATA_ADDRESSES:
        return True
    return isinstance(ip, ipaddress.IPv6Address) and _embedded_ipv4(ip) in METADATA_ADDRESSES


def parse_allow_list(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """Split ``scraping.allow_networks`` entries into CIDRs and (lower-case) host names."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)


# --- policy ---------------------------------------------------------------------------------------


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``getaddrinfo`` gives for ``host`` (the same lookup the OS would use)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def direct_connect(ip: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to a literal address (``create_connection`` does no DNS for literals)."""
    return socket.create_connection((ip, port), timeout=timeout)


@dataclass(frozen=True)
class FetchPolicy:
    """Everything ``fetch`` enforces. Build it with ``from_settings`` (or ``build`` in tests)."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    timeout: float = 10.0  # per socket operation (connect, each read)
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "imagineer-scraper/1.0"
    # Whole-hop limit, so a server dripping one byte per ``timeout`` cannot hold a worker for
    # hours. None: 3 x ``timeout``.
    total_timeout: float | None = None
    rate_limiter: DomainRateLimiter | None = None
    resolver: Resolver = system_resolver
    connector: Connector = direct_connect
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)  # None: system CAs

    @classmethod
    def build(cls, allow: Iterable[str] = (), **kwargs: Any) -> FetchPolicy:
        """A policy from ``scraping.allow_networks``-style entries (CIDRs and host names)."""
        networks, hosts = parse_allow_list(allow)
        return cls(allow_networks=networks, allow_hosts=hosts, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, *, redis_client: RedisLike | None = None,
                      **overrides: Any) -> FetchPolicy:
        """The scraper's policy. A non-zero ``scraping.domain_interval_seconds`` needs Redis:
        the interval holds across all workers, and silently not limiting would be worse than
        failing."""
        limiter = None
        interval = settings.scraping_domain_interval_seconds
        if interval > 0:
            if redis_client is None:
                raise ValueError("scraping.domain_interval_seconds > 0 needs a Redis client")
            limiter = DomainRateLimiter(redis_client, interval, prefix=settings.key(DomainRateLimiter.prefix))
        kwargs: dict[str, Any] = {
            "timeout": settings.scraping_timeout_seconds,
            "max_bytes": settings.scraping_max_response_bytes,
            "max_redirects": settings.scraping_max_redirects,
            "user_agent": settings.scraping_user_agent,
            "rate_limiter": limiter,
            **overrides,
        }
        return cls.build(settings.scraping_allow_networks, **kwargs)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def network_allowed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # 127.0.0.1/32 also allows ::ffff:127.0.0.1
        return any(c in net for c in candidates for net in self.allow_networks if c.version == net.version)

    def metadata_allowed(self, ip: IPAddress) -> bool:
        """Only an allow-list entry that is exactly this address unlocks a metadata endpoint."""
        exact = [ip] + ([ip.ipv4_mapped] if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else [])
        return any(net.num_addresses == 1 and net.network_address in exact for net in self.allow_networks)

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` (an address of ``host``) is refused, or None when allowed."""
        if _is_metadata(ip):
            if self.metadata_allowed(ip):
                return None
            return f"{ip} is a cloud metadata address (only an allow-list entry for exactly {ip} allows it)"
        reason = blocked_reason(ip)
        if reason is None or self.network_allowed(ip) or self.host_allowed(host):
            return None
        return f"{ip} is {reason} ({ALLOW_HINT})"

    @property
    def hop_timeout(self) -> float:
        return self.total_timeout if self.total_timeout is not None else 3 * self.timeout


# --- fetching -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    url: str  # the final URL, after redirects
    status: int
    content_type: str  # media type only, lower case ("image/png"); "" when absent
    body: bytes
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    redirects: tuple[str, ...] = ()  # the URLs that redirected here, in order

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def charset(self) -> str | None:
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip('"').strip()
        return None


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # IDNA/ASCII, no brackets
    port: int
    path: str  # request target: path + query, percent-encoded

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _parse(url: str) -> _Target:
    try:
        parts: SplitResult = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}", url=url) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise AddressRefused(f"refused {url}: only http and https URLs are fetched, not {scheme or 'none'!r}",
                             url=url)
    if parts.username is not None or parts.password is not None:
        raise AddressRefused(f"refused {url}: URLs with credentials are not fetched", url=url)
    if not parts.hostname:
        raise FetchError(f"invalid URL {url!r}: no host", url=url)
    try:
        host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode()
    except UnicodeError:
        raise FetchError(f"invalid URL {url!r}: bad host name", url=url) from None
    if port == 0:
        raise FetchError(f"invalid URL {url!r}: port 0", url=url)
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    return _Target(url=url, scheme=scheme, host=host.lower().rstrip("."),
                   port=port or (443 if scheme == "https" else 80), path=path)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, policy: FetchPolicy) -> list[str]:
    """Resolve ``url``'s host once and return its addresses if every one is allowed.

    Raises ``AddressRefused`` naming the first forbidden address: one bad address is enough,
    because an attacker controlling DNS chooses which one a client would connect to.
    """
    target = _parse(url)
    return _checked_addresses(target, policy)


def _checked_addresses(target: _Target, policy: FetchPolicy) -> list[str]:
    literal = _literal(target.host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(policy.resolver(target.host, target.port))
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"cannot resolve {target.host} for {target.url}: {exc}",
                             url=target.url) from None
        if not addresses:
            raise FetchError(f"cannot resolve {target.host} for {target.url}: no addresses", url=target.url)
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise AddressRefused(f"refused {target.url}: resolver returned {address!r}",
                                 url=target.url) from None
        reason = policy.refusal(target.host, ip)
        if reason is not None:
            raise AddressRefused(f"refused {target.url}: {reason}", url=target.url)
    return addresses


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an already checked IP, speaking for the original host name."""

    def __init__(self, target: _Target, ip: str, policy: FetchPolicy) -> None:
        super().__init__(target.host, target.port, timeout=policy.timeout)
        self._timeout_seconds = policy.timeout
        self._ip = ip
        self._connector = policy.connector
        self._tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            self._tls = policy.ssl_context or ssl.create_default_context()
            self.default_port = 443

    def connect(self) -> None:
        sock = self._connector(self._ip, self.port, self._timeout_seconds)
        if self._tls is not None:
            # SNI and hostname verification use the URL's host, not the IP we connect to.
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def _timeout_error(target: _Target, policy: FetchPolicy) -> FetchTimeoutError:
    return FetchTimeoutError(
        f"timed out fetching {target.url} (scraping.timeout_seconds={policy.timeout:g}s per read, "
        f"{policy.hop_timeout:g}s per response)", url=target.url)


def _too_large(target: _Target, policy: FetchPolicy, detail: str) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"refused {target.url}: {detail} exceeds scraping.max_response_bytes ({policy.max_bytes} bytes)",
        url=target.url)


def _read_body(resp: http.client.HTTPResponse, conn: _PinnedConnection, target: _Target,
               policy: FetchPolicy, deadline: float) -> bytes:
    length = resp.getheader("Content-Length", "").strip()
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _too_large(target, policy, f"Content-Length {length}")
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(target, policy)
        if conn.sock is not None:
            conn.sock.settimeout(min(policy.timeout, remaining))
        chunk = resp.read1(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise _too_large(target, policy, "the body")
        chunks.append(chunk)


def _headers(resp: http.client.HTTPResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in resp.getheaders():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _request(target: _Target, addresses: list[str], policy: FetchPolicy, accept: str) -> Response:
    """One hop: connect to the first reachable checked address, send GET, read a bounded body."""
    deadline = time.monotonic() + policy.hop_timeout
    last_error: OSError | None = None
    for ip in addresses:
        conn = _PinnedConnection(target, ip, policy)
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                raise FetchError(f"TLS handshake with {target.host} ({ip}) failed for {target.url}: "
                                 f"certificate verify failed: {exc.verify_message}", url=target.url) from None
            except ssl.SSLError as exc:
                raise FetchError(f"TLS handshake with {target.host} ({ip}) failed for {target.url}: "
                                 f"{exc.reason or exc}", url=target.url) from None
            except (TimeoutError, OSError) as exc:
                last_error = exc
                continue
            try:
                conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
                for name, value in (("Host", target.host_header), ("User-Agent", policy.user_agent),
                                    ("Accept", accept), ("Accept-Encoding", "identity"),
                                    ("Connection", "close")):
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                headers = _headers(resp)
                if resp.status in REDIRECT_STATUSES and "location" in headers:
                    body = b""  # not read: the next hop is what matters
                else:
                    body = _read_body(resp, conn, target, policy, deadline)
            except TimeoutError:
                raise _timeout_error(target, policy) from None
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"fetching {target.url} failed: {str(exc) or type(exc).__name__}",
                                 url=target.url) from None
            content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            return Response(url=target.url, status=resp.status, content_type=content_type, body=body,
                            headers=headers)
        finally:
            conn.close()
    if isinstance(last_error, TimeoutError):
        raise _timeout_error(target, policy)
    raise FetchError(f"cannot connect to {target.host} ({', '.join(addresses)}) for {target.url}: "
                     f"{last_error}", url=target.url)


def fetch(url: str, *, policy: FetchPolicy, accept: str = "*/*") -> Response:
    """GET ``url`` under ``policy``, following redirects; every hop is checked before connecting.

    Returns the final response whatever its status (callers decide what a 404 means). Raises
    ``FetchRefused`` (policy: address, scheme, size, redirects) or ``FetchError`` (network,
    timeouts as ``FetchTimeoutError``).
    """
    history: list[str] = []
    current = url
    while True:
        try:
            target = _parse(current)
            addresses = _checked_addresses(target, policy)
        except FetchError as exc:
            if not history:
                raise
            # Name the hop that sent us there: the operator sees which page redirected inward.
            raise type(exc)(f"{exc} (redirected from {history[-1]})", url=exc.url) from None
        if policy.rate_limiter is not None:
            waited = policy.rate_limiter.acquire(target.host)
            if waited > 0.05:
                log.debug("waited %.2fs for the %s rate limit", waited, target.host,
                          extra={"operation": "scrape", "domain": target.host, "waited": waited})
        response = _request(target, addresses, policy, accept)
        location = response.headers.get("location")
        if response.status not in REDIRECT_STATUSES or not location:
            return dataclasses.replace(response, redirects=tuple(history))
        if len(history) >= policy.max_redirects:
            raise TooManyRedirects(
                f"refused {url}: more than scraping.max_redirects ({policy.max_redirects}) redirects",
                url=url)
        history.append(current)
        current = urljoin(current, location.strip()).split("#", 1)[0]
