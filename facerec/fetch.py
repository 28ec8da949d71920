"""Fetching an image by URL without letting the URL reach what it should not (SSRF).

Every hop's host is resolved once, every resolved address must be public (or inside an
explicitly allowed network), and the connection goes to that vetted address — so a DNS
answer cannot change between the check and the connect. Redirects are followed by hand,
each hop checked the same way; connect and read time out, the whole fetch has a deadline
that every single read honours (a server trickling its headers or body a byte at a time
is cut off when it passes), and the body is cut off at the byte cap.
"""

from __future__ import annotations

import http
import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

from facerec.errors import FetchError, ForbiddenURL
from facerec.messages import MAX_NAME_LENGTH

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                             "instance-data", "instance-data.ec2.internal"})
# NAT64's well-known prefix embeds an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Whitespace and control characters: http.client would refuse them with a ValueError.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        # The resolver's own words (errno, "temporary failure"...) describe the network
        # rest runs in: the caller learns only that the name did not resolve.
        raise FetchError(f"cannot resolve {host!r}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (IPv4 embedded in IPv6 checked too)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
        if ip.is_site_local:  # deprecated fec0::/10, still routed inside some networks
            return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def legacy_ipv4_spelling(host: str) -> bool:
    """True for a host that inet_aton reads as an IPv4 address but is not a dotted quad:
    2130706433, 0x7f.1, 017700000001, 127.1 — spellings getaddrinfo would also accept."""
    try:
        packed = socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    return socket.inet_ntoa(packed) != host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return legacy_ipv4_spelling(host)


def check_url(url: str) -> tuple[str, str, int]:
    """Return (scheme, host, port) of an acceptable http(s) URL, else raise ForbiddenURL."""
    if not isinstance(url, str) or not url or len(url) > MAX_NAME_LENGTH:
        raise ForbiddenURL(f"url must be a non-empty string of at most {MAX_NAME_LENGTH} "
                           f"characters")
    if _UNSAFE_URL_CHARS.search(url):
        raise ForbiddenURL("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenURL(f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ForbiddenURL(f"scheme {parts.scheme!r} not allowed: use http or https")
    if not parts.hostname:
        raise ForbiddenURL("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenURL("URLs with credentials are not fetched")
    try:
        # What the resolver will look up: IDNA maps full-width and ideographic digits and
        # dots to ASCII ones, so every check below sees the name the resolver sees.
        host = parts.hostname.encode("idna").decode("ascii").rstrip(".").lower()
    except UnicodeError:
        raise ForbiddenURL("malformed host name") from None
    if host != parts.hostname.rstrip(".").lower() and _is_ip_literal(host):
        raise ForbiddenURL(f"host {host!r} is an IP address in a non-standard spelling")
    if host in _METADATA_HOSTS:
        raise ForbiddenURL(f"host {host!r} is a cloud metadata service")
    if legacy_ipv4_spelling(host):
        # Not a DNS name: refuse it outright rather than trust every resolver to agree.
        raise ForbiddenURL(f"host {host!r} is an IPv4 address in a non-standard spelling")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


class Fetcher:
    def __init__(self, max_bytes: int, timeout: float = 10.0, max_redirects: int = 3,
                 allow_networks: Iterable[Network] = (),
                 resolve: Resolver = system_resolve) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_networks = tuple(allow_networks)
        self.resolve = resolve

    def vet(self, host: str, port: int) -> str:
        """Resolve host and return the address to connect to; refuse internal ones."""
        try:
            addresses = [str(ipaddress.ip_address(host))]  # a literal: nothing to resolve
        except ValueError:
            addresses = self.resolve(host, port)
        if not addresses:
            raise FetchError(f"{host!r} has no address")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not is_public(ip) and not any(ip in net for net in self.allow_networks):
                # The address itself stays unsaid: it would map internal names for anyone.
                raise ForbiddenURL(f"{host!r} resolves to a non-public address")
        return addresses[0]

    def fetch(self, url: str) -> bytes:
        """Return the body of a 200 response, following at most max_redirects redirects."""
        deadline = time.monotonic() + 3 * self.timeout
        for _hop in range(self.max_redirects + 1):
            scheme, host, port = check_url(url)
            address = self.vet(host, port)
            conn = _connection(scheme, host, port, address, self.timeout, deadline)
            try:
                parts = urlsplit(url)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                conn.request("GET", target, headers={"User-Agent": "facerec/0.1",
                                                     "Accept": "image/*"})
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    if not location:
                        raise FetchError(f"HTTP {resp.status} without Location")
                    url = urljoin(url, location)
                    continue
                if resp.status != 200:
                    # The standard phrase, not the server's: its reason line is its own text.
                    raise FetchError(f"HTTP {resp.status} {_phrase(resp.status)}".rstrip())
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise FetchError(f"remote image of {length} bytes exceeds the cap of "
                                     f"{self.max_bytes} bytes")
                return self._read_capped(resp, deadline)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise FetchError(f"fetching failed: {failure_class(exc)}") from None
            finally:
                conn.close()
        raise FetchError(f"more than {self.max_redirects} redirects")

    def _read_capped(self, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read1(_CHUNK)  # each socket read honours the deadline
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(f"remote image exceeds the cap of {self.max_bytes} bytes")
            chunks.append(chunk)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def failure_class(exc: BaseException) -> str:
    """What went wrong, as a class: never the exception's text, which may quote the remote
    server (a banner where a status line should be), name internal hosts (certificates)
    or describe rest's network."""
    if isinstance(exc, TimeoutError):
        # Our own deadline's message says which; a socket timeout says nothing more.
        return str(exc) if "too long" in str(exc) else "timed out"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake or certificate check failed"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "connection closed by the server"
    if isinstance(exc, http.client.IncompleteRead):
        return "the body ended before its announced length"
    if isinstance(exc, http.client.HTTPException):
        return "the answer is not valid HTTP"
    if isinstance(exc, ValueError):  # http.client's own refusals (a control character)
        return "the URL cannot be sent in a request"
    return "network error"


class _DeadlineReader(io.RawIOBase):
    """The response stream http.client reads: every recv gets at most the time left."""

    def __init__(self, sock: socket.socket, timeout: float, deadline: float) -> None:
        super().__init__()
        # The socket's own raw stream: it keeps the descriptor open after the connection
        # object lets go of the socket (http.client hands it to the response that way).
        self._raw = sock.makefile("rb", buffering=0)
        self._sock, self._timeout, self._deadline = sock, timeout, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("fetch took too long (server too slow)")
        self._sock.settimeout(min(self._timeout, left))
        try:
            return self._raw.readinto(buffer) or 0
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise TimeoutError("fetch took too long (server too slow)") from None
            raise

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose makefile() stream honours the fetch's deadline."""

    def __init__(self, sock: socket.socket, timeout: float, deadline: float) -> None:
        self._sock, self._timeout, self._deadline = sock, timeout, deadline

    def makefile(self, mode: str = "rb", *_args: object, **_kwargs: object) -> io.BufferedReader:
        assert mode == "rb", mode
        return io.BufferedReader(_DeadlineReader(self._sock, self._timeout, self._deadline))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _connection(scheme: str, host: str, port: int, address: str, timeout: float,
                deadline: float) -> http.client.HTTPConnection:
    """A connection to the vetted `address` (TLS still verifies the certificate for
    `host`), whose connect and every read are bounded by `timeout` and by `deadline`."""
    base = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection

    class Connection(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(host, port, timeout=timeout)
            # http.client connects through this instance attribute (it would resolve
            # `host` again): connect to the vetted address instead.
            self._create_connection = self._connect_vetted

        @staticmethod
        def _connect_vetted(_address: object, _timeout: float,
                            source: Any = None) -> socket.socket:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("fetch took too long (redirects)")
            # A socket of the address's family, connected to the literal: no lookup at all.
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                                 socket.SOCK_STREAM)
            try:
                sock.settimeout(min(timeout, left))
                if source:
                    sock.bind(source)
                sock.connect((address, port))
            except BaseException:
                sock.close()
                raise
            return sock

        def connect(self) -> None:
            super().connect()
            # http.client types `sock` as a socket; ours only wraps recv with the deadline.
            plain: socket.socket = self.sock  # type: ignore[has-type]
            self.sock = _DeadlineSocket(plain, timeout, deadline)

    return Connection()
