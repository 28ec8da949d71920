"""Fetching an image by URL without letting the URL reach what it should not (SSRF).

Every hop's host is resolved once, every resolved address must be public (or inside an
explicitly allowed network), and the connection goes to that vetted address — so a DNS
answer cannot change between the check and the connect. Redirects are followed by hand,
each hop checked the same way; connect and read time out, the whole fetch has a deadline,
and the body is cut off at the byte cap.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
from typing import Callable, Iterable
from urllib.parse import urljoin, urlsplit

from facerec.errors import FetchError, ForbiddenURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                             "instance-data", "instance-data.ec2.internal"})


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (IPv4 embedded in IPv6 checked too)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public(embedded):
            return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def check_url(url: str) -> tuple[str, str, int]:
    """Return (scheme, host, port) of an acceptable http(s) URL, else raise ForbiddenURL."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise ForbiddenURL("url must be a non-empty string of at most 2048 characters")
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
    host = parts.hostname.rstrip(".").lower()
    if host in _METADATA_HOSTS:
        raise ForbiddenURL(f"host {host!r} is a cloud metadata service")
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
        addresses = self.resolve(host, port)
        if not addresses:
            raise FetchError(f"{host!r} has no address")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not is_public(ip) and not any(ip in net for net in self.allow_networks):
                raise ForbiddenURL(f"{host!r} resolves to non-public address {ip}")
        return addresses[0]

    def fetch(self, url: str) -> bytes:
        """Return the body of a 200 response, following at most max_redirects redirects."""
        deadline = time.monotonic() + 3 * self.timeout
        for _hop in range(self.max_redirects + 1):
            scheme, host, port = check_url(url)
            address = self.vet(host, port)
            conn_class = (http.client.HTTPSConnection if scheme == "https"
                          else http.client.HTTPConnection)
            conn = conn_class(host, port, timeout=self.timeout)
            # Connect to the vetted address; TLS still verifies the certificate for `host`.
            conn._create_connection = (  # type: ignore[attr-defined]
                lambda _addr, timeout, source, a=address: socket.create_connection(
                    (a, port), timeout, source))
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
                    raise FetchError(f"HTTP {resp.status} {resp.reason}")
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise FetchError(f"remote image of {length} bytes exceeds the cap of "
                                     f"{self.max_bytes} bytes")
                return self._read_capped(resp, deadline)
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"fetching failed: {exc!r}") from None
            finally:
                conn.close()
        raise FetchError(f"more than {self.max_redirects} redirects")

    def _read_capped(self, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise FetchError("fetch took too long (server too slow)")
            chunk = resp.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(f"remote image exceeds the cap of {self.max_bytes} bytes")
            chunks.append(chunk)
