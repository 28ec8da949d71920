"""URL fetching cannot be turned against what sits behind the service (SSRF).

Most cases test the Fetcher directly: internal addresses in every spelling are refused
before any connection is opened (socket.create_connection is replaced by a trap), names
are resolved by a resolver the test controls (the system's is trapped too, so nothing
here sends a DNS query), redirects are checked at every hop, and slow or endless servers
are cut off. A few cases go through POST /scan/url of a real rest process. Every server
is local (127.0.0.1) and stops by itself.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from facerec import fetch as fetch_module
from facerec.errors import FetchError, ForbiddenURL
from facerec.fetch import Fetcher, check_url
from tests.services import FACES, Env, http

IMAGE = (FACES / "obama/obama_small.jpg").read_bytes()
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
CAP = 1_000_000


class NoNetwork(AssertionError):
    pass


@pytest.fixture
def trapped(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any connection or system name lookup the fetcher tries is recorded and refused."""
    attempts: list[object] = []

    def connect(address: object, *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise NoNetwork(f"tried to connect to {address}")

    def lookup(host: object, *args: object, **kwargs: object) -> list[object]:
        attempts.append(host)
        raise NoNetwork(f"tried to resolve {host}")

    monkeypatch.setattr(fetch_module.socket, "create_connection", connect)
    monkeypatch.setattr(fetch_module.socket, "socket", connect)
    monkeypatch.setattr(fetch_module.socket, "getaddrinfo", lookup)
    return attempts


# -- internal addresses, refused before connecting --------------------------------------

INTERNAL_LITERALS = [
    # loopback and "this network"
    "http://127.0.0.1/", "http://127.255.255.254:8080/a.jpg", "http://0.0.0.0/", "http://0.1.2.3/",
    # RFC 1918
    "http://10.0.0.1/", "http://172.16.5.4/", "http://172.31.255.255/", "http://192.168.0.1/",
    # link-local, cloud metadata by address (AWS/GCP/Azure; Alibaba sits in CGNAT)
    "http://169.254.169.254/latest/meta-data/", "http://169.254.0.1/",
    "http://100.100.100.200/latest/meta-data/",
    # CGNAT 100.64/10
    "http://100.64.0.1/", "http://100.127.255.254/",
    # multicast, broadcast, reserved, benchmark, documentation
    "http://224.0.0.1/", "http://239.255.255.250:1900/", "http://255.255.255.255/",
    "http://240.0.0.1/", "http://198.18.0.1/", "http://192.0.2.1/",
    # IPv6 loopback, unspecified, ULA (incl. AWS's IPv6 metadata), link-local, multicast
    "http://[::1]/", "http://[::]/", "http://[fc00::1]/", "http://[fd00:ec2::254]/",
    "http://[fe80::1]/", "http://[ff02::1]/", "http://[fec0::1]/",
    # IPv4 inside IPv6: mapped, NAT64, 6to4, Teredo, IPv4-compatible
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a00:1::]/", "http://[::7f00:1]/",
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",  # Teredo client 10.0.0.1
]

LEGACY_SPELLINGS = [
    "http://2130706433/",      # 127.0.0.1 as one decimal number
    "http://0x7f000001/",      # ... as one hex number
    "http://0x7f.1/",          # hex first byte, rest packed
    "http://017700000001/",    # octal
    "http://0177.0.0.1/",      # octal first byte
    "http://127.1/",           # two-part form
    "http://0/",               # 0.0.0.0
    "http://3232235521/",      # 192.168.0.1
    "http://0xa9fea9fe/latest/meta-data/",  # 169.254.169.254
    "http://012.0.0.1/",       # 10.0.0.1 (octal 012): not 12.0.0.1
]

METADATA_NAMES = [
    "http://metadata.google.internal/computeMetadata/v1/", "http://metadata/",
    "http://metadata.goog/", "http://instance-data/", "http://instance-data.ec2.internal/",
    "http://METADATA.Google.Internal./computeMetadata/v1/",
]

BAD_SCHEMES = [
    "file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://127.0.0.1:6379/_FLUSHALL",
    "dict://127.0.0.1:6379/info", "ldap://example.com/", "data:image/png;base64,iVBORw0K",
    "javascript:alert(1)", "jar:http://example.com/a.jar!/", "//example.com/a.jpg",
    "example.com/a.jpg", "http:///a.jpg",
]

MALFORMED = [
    "http://user:pw@example.com/a.jpg", "http://example.com:99999/", "http://[::1/",
    "http://example.com/a b.jpg", "http://example.com/a\x00.jpg", "http://exa\tmple.com/",
    "http://example.com/\r\nHost: 10.0.0.1", "http://" + "a" * 2100 + ".com/",
]


@pytest.mark.parametrize("url", INTERNAL_LITERALS + LEGACY_SPELLINGS + METADATA_NAMES
                         + BAD_SCHEMES + MALFORMED)
def test_an_internal_or_malformed_url_is_refused_before_any_connection(
        trapped: list[object], url: str) -> None:
    fetcher = Fetcher(CAP, timeout=2)
    with pytest.raises(ForbiddenURL):
        fetcher.fetch(url)
    assert trapped == []


def test_the_loopback_allow_list_does_not_open_legacy_spellings_or_mapped_addresses(
        trapped: list[object]) -> None:
    fetcher = Fetcher(CAP, timeout=2, allow_networks=LOOPBACK)
    for url in ("http://0x7f.1/", "http://2130706433/", "http://[::ffff:127.0.0.1]/",
                "http://[::1]/"):
        with pytest.raises(ForbiddenURL):
            fetcher.fetch(url)
    assert trapped == []


def test_check_url_accepts_ordinary_urls_and_says_which_port() -> None:
    assert check_url("https://Example.COM/a.jpg?x=1") == ("https", "example.com", 443)
    assert check_url("http://example.com:8080/") == ("http", "example.com", 8080)
    assert check_url("http://[2606:4700::1111]/") == ("http", "2606:4700::1111", 80)
    assert check_url("http://8.8.8.8/") == ("http", "8.8.8.8", 80)


# -- names, resolved by a resolver the test controls -------------------------------------

class Resolver:
    def __init__(self, answers: Callable[[str, int, int], list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers(host, port, len(self.calls))


@pytest.mark.parametrize("answer", [
    ["10.1.2.3"], ["127.0.0.1"], ["169.254.169.254"], ["100.64.1.1"], ["::1"],
    ["fd12:3456::1"], ["fe80::1%eth0"], ["::ffff:192.168.1.1"],
    ["93.184.216.34", "192.168.1.1"],  # one bad address among good ones is enough
])
def test_a_public_looking_name_resolving_to_an_internal_address_is_refused(
        trapped: list[object], answer: list[str]) -> None:
    resolver = Resolver(lambda host, port, n: answer)
    with pytest.raises(ForbiddenURL, match="non-public address"):
        Fetcher(CAP, timeout=2, resolve=resolver).fetch("https://photos.example.com/a.jpg")
    assert resolver.calls == [("photos.example.com", 443)]
    assert trapped == []


def test_a_name_without_addresses_is_a_fetch_error_not_a_connection(
        trapped: list[object]) -> None:
    resolver = Resolver(lambda host, port, n: [])
    with pytest.raises(FetchError, match="has no address"):
        Fetcher(CAP, timeout=2, resolve=resolver).fetch("http://nothing.example.com/")
    assert trapped == []


# -- local servers ------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """/image: the photo. /hop?n=N&to=URL: redirect N more times on this server, then to
    URL. Every request's path is recorded."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/image":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)
            return
        if parts.path == "/hop":
            query = parse_qs(parts.query)
            n, to = int(query["n"][0]), query["to"][0]
            location = to if n == 0 else f"/hop?n={n - 1}&to={to}"
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", seen
    httpd.shutdown()
    httpd.server_close()


def test_a_local_image_is_fetched_when_loopback_is_allowed_explicitly(
        server: tuple[str, list[str]]) -> None:
    base, seen = server
    assert Fetcher(CAP, timeout=5, allow_networks=LOOPBACK).fetch(f"{base}/image") == IMAGE
    with pytest.raises(ForbiddenURL):
        Fetcher(CAP, timeout=5).fetch(f"{base}/image")  # not without the allow-list
    assert seen == ["/image"]


@pytest.mark.parametrize("hops", [0, 1, 2])
@pytest.mark.parametrize("target", [
    "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
    "http://metadata.google.internal/", "http://0x7f.1/", "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL", "http://[::ffff:10.0.0.1]/",
])
def test_a_redirect_to_an_internal_address_is_refused_at_every_hop(
        server: tuple[str, list[str]], hops: int, target: str) -> None:
    base, seen = server
    fetcher = Fetcher(CAP, timeout=5, max_redirects=3, allow_networks=LOOPBACK)
    with pytest.raises(ForbiddenURL):
        fetcher.fetch(f"{base}/hop?n={hops}&to={target}")
    assert len(seen) == hops + 1  # the local hops only: the internal one was never asked


def test_redirects_are_followed_a_few_times_and_no_more(server: tuple[str, list[str]]) -> None:
    base, seen = server
    fetcher = Fetcher(CAP, timeout=5, max_redirects=3, allow_networks=LOOPBACK)
    assert fetcher.fetch(f"{base}/hop?n=2&to=/image") == IMAGE
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetcher.fetch(f"{base}/hop?n=3&to=/image")
    assert len(seen) == 4 + 4


def test_the_address_connected_to_is_the_address_checked(
        server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # A rebinding resolver: loopback (allowed here) the first time, internal afterwards.
    # The fetch succeeds only if it connects to the first answer and never asks again;
    # the system resolver is trapped, so a second lookup by anyone else would fail too.
    base, seen = server
    port = int(base.rsplit(":", 1)[1])

    def no_system_lookup(*args: object, **kwargs: object) -> list[object]:
        raise NoNetwork("the system resolver was asked")

    monkeypatch.setattr(fetch_module.socket, "getaddrinfo", no_system_lookup)
    resolver = Resolver(lambda host, p, n: ["127.0.0.1"] if n == 1 else ["10.0.0.1"])
    fetcher = Fetcher(CAP, timeout=5, allow_networks=LOOPBACK, resolve=resolver)
    assert fetcher.fetch(f"http://rebind.example.com:{port}/image") == IMAGE
    assert resolver.calls == [("rebind.example.com", port)]
    assert seen == ["/image"]


# -- slow, silent and endless servers -------------------------------------------------------

class RawServer:
    """A local TCP server that plays `script(conn)` to each client, for at most `life`
    seconds, then stops by itself."""

    def __init__(self, script: Callable[[socket.socket], None], life: float = 60,
                 backlog: int = 8) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/a.jpg"
        self.script = script
        self.until = time.monotonic() + life
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def alive(self) -> bool:
        return not self.stopped.is_set() and time.monotonic() < self.until

    def _serve(self) -> None:
        while self.alive():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._play, args=(conn,), daemon=True).start()
        self.sock.close()

    def _play(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)  # the request
                self.script(conn)
            except OSError:
                pass  # the client gave up: what the test wants

    def close(self) -> None:
        self.stopped.set()


def trickle(prefix: bytes, pause: float,
            server: list[RawServer]) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        conn.sendall(prefix)
        while server[0].alive():
            conn.sendall(b"x")
            time.sleep(pause)
    return script


@pytest.mark.parametrize("what, prefix", [
    ("status line", b"HTTP/1.1 2"),
    ("headers", b"HTTP/1.1 200 OK\r\nX-Slow: "),
    ("body", b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n"),
])
def test_a_server_trickling_bytes_is_cut_off_by_the_deadline(what: str, prefix: bytes) -> None:
    # One byte every 0.3 s never trips the 1 s read timeout: only the deadline (3 x the
    # timeout for the whole fetch) ends it.
    holder: list[RawServer] = []
    holder.append(RawServer(trickle(prefix, 0.3, holder)))
    try:
        with pytest.raises(FetchError, match="too long"):
            Fetcher(CAP, timeout=1, allow_networks=LOOPBACK).fetch(holder[0].url)
    finally:
        holder[0].close()


def test_a_silent_server_times_out() -> None:
    srv = RawServer(lambda conn: time.sleep(20))
    try:
        with pytest.raises(FetchError, match=r"timed out|too long"):
            Fetcher(CAP, timeout=1, allow_networks=LOOPBACK).fetch(srv.url)
    finally:
        srv.close()


def test_a_server_that_never_accepts_times_out_on_connect() -> None:
    # A listening socket that never accepts, its backlog already full: the kernel drops
    # further SYNs, so connecting hangs until the connect timeout.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        with pytest.raises(FetchError, match=r"timed out|too long"):
            Fetcher(CAP, timeout=1, allow_networks=LOOPBACK).fetch(f"http://127.0.0.1:{port}/")
    finally:
        for s in fillers:
            s.close()
        srv.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n",                 # no length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",               # chunked
    b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n",                       # a lie
])
def test_an_endless_body_is_cut_off_at_the_byte_cap(head: bytes) -> None:
    holder: list[RawServer] = []

    def endless(conn: socket.socket) -> None:
        conn.sendall(head)
        chunk = b"\xff" * 65536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if b"chunked" in head else chunk
        for _ in range(10 * CAP // len(chunk)):  # bounded: ten times the cap
            if not holder[0].alive():
                return
            conn.sendall(framed)

    holder.append(RawServer(endless))
    try:
        fetcher = Fetcher(CAP, timeout=5, allow_networks=LOOPBACK)
        if b"Content-Length: 500" in head:
            assert len(fetcher.fetch(holder[0].url)) == 500  # only what was announced
            return
        with pytest.raises(FetchError, match="exceeds the cap"):
            fetcher.fetch(holder[0].url)
    finally:
        holder[0].close()


def test_an_announced_length_over_the_cap_is_refused_before_reading() -> None:
    srv = RawServer(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n" + b"\xff" * 1000))
    try:
        with pytest.raises(FetchError, match="999999999 bytes exceeds the cap"):
            Fetcher(CAP, timeout=5, allow_networks=LOOPBACK).fetch(srv.url)
    finally:
        srv.close()


# -- through the REST route -----------------------------------------------------------------

def test_scan_url_refuses_internal_targets_in_any_spelling_and_queues_nothing(
        env: Env, server: tuple[str, list[str]]) -> None:
    base, seen = server
    port = int(base.rsplit(":", 1)[1])
    rest = env.start_rest()  # no allow-list: loopback is internal like the rest
    for url in (f"{base}/image", f"http://localhost:{port}/image",
                f"http://[::ffff:127.0.0.1]:{port}/image", f"http://0x7f.1:{port}/image",
                f"http://2130706433:{port}/image", "http://169.254.169.254/latest/meta-data/",
                "http://[fd00:ec2::254]/", "http://metadata.google.internal/",
                "http://100.64.0.1/", "gopher://127.0.0.1:6379/_FLUSHALL"):
        reply = http("POST", f"{rest}/scan/url", json_body={"url": url})
        assert reply.status == 400, (url, reply.body)
        assert reply.body["error"]
    assert seen == []  # nothing was fetched
    assert env.queue_depth() == 0 and env.statuses() == {}


def test_scan_url_checks_redirects_and_cuts_off_slow_servers(
        env: Env, server: tuple[str, list[str]]) -> None:
    base, seen = server
    rest = env.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8", FETCH_TIMEOUT="1")
    for target in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[::1]/"):
        reply = http("POST", f"{rest}/scan/url",
                     json_body={"url": f"{base}/hop?n=1&to={target}"})
        assert reply.status == 400 and "non-public" in reply.body["error"], reply.body
    assert len(seen) == 6
    holder: list[RawServer] = []
    holder.append(RawServer(trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", 0.3, holder)))
    try:
        reply = http("POST", f"{rest}/scan/url", json_body={"url": holder[0].url})
        assert reply.status == 422 and "too long" in reply.body["error"], reply.body
    finally:
        holder[0].close()
    assert env.queue_depth() == 0 and env.statuses() == {}


# -- spellings that only IDNA turns into addresses (second round) --------------------------

# Full-width digits and dots (U+FF10-FF19, U+FF0E) and the ideographic full stops (U+3002,
# U+FF61): the resolver's IDNA step maps them to ASCII, so each of these is 127.0.0.1.
IDNA_SPELLINGS = [
    "http://１２７.１/", "http://０ｘ７ｆ.１/", "http://２１３０７０６４３３/",
    "http://１２７．０．０．１/", "http://127。0。0。1/", "http://127｡0｡0｡1/",
    "http://⑫⑦.1/",  # circled numbers: NFKC (IDNA's nameprep) makes them 12 and 7
]


@pytest.mark.parametrize("url", IDNA_SPELLINGS)
def test_full_width_and_ideographic_spellings_of_an_address_are_refused_even_with_an_allow_list(
        trapped: list[object], url: str) -> None:
    fetcher = Fetcher(CAP, timeout=2, allow_networks=LOOPBACK,
                      resolve=Resolver(lambda host, port, n: ["127.0.0.1"]))
    with pytest.raises(ForbiddenURL, match="non-standard spelling"):
        fetcher.fetch(url)
    assert trapped == []


def test_a_unicode_name_is_checked_and_resolved_as_its_idna_form(trapped: list[object]) -> None:
    resolver = Resolver(lambda host, port, n: ["10.0.0.1"])
    with pytest.raises(ForbiddenURL):
        Fetcher(CAP, timeout=2, resolve=resolver).fetch("http://bücher.example/a.jpg")
    assert resolver.calls == [("xn--bcher-kva.example", 80)]
    with pytest.raises(ForbiddenURL, match="metadata service"):
        check_url("http://ｍｅｔａｄａｔａ.google.internal/")


# -- error messages: the reason class, never internal details -------------------------------

def test_a_name_resolving_to_an_internal_address_is_refused_without_saying_the_address(
        trapped: list[object]) -> None:
    resolver = Resolver(lambda host, port, n: ["10.11.12.13"])
    with pytest.raises(ForbiddenURL) as refused:
        Fetcher(CAP, timeout=2, resolve=resolver).fetch("http://db.internal.example/")
    assert "non-public address" in str(refused.value)
    assert "10.11.12.13" not in str(refused.value)


def test_an_unresolvable_name_says_so_without_the_resolvers_words() -> None:
    with pytest.raises(FetchError) as failed:
        fetch_module.system_resolve("no-such-host.invalid", 80)
    assert str(failed.value) == "cannot resolve 'no-such-host.invalid'"


class _Banner(BaseHTTPRequestHandler):
    """/ssh: a banner where a status line should be. /secret: an error status whose reason
    phrase and body are the server's own words."""

    def do_GET(self) -> None:
        if self.path == "/ssh":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6p1 internal-bastion-7\r\n")
            return
        self.send_response(500, "Internal db-primary.corp:5432 refused")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def banner_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Banner)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_errors_name_the_class_of_failure_and_never_echo_the_remote_server(
        banner_server: str) -> None:
    fetcher = Fetcher(CAP, timeout=5, allow_networks=LOOPBACK)
    with pytest.raises(FetchError) as ssh:
        fetcher.fetch(f"{banner_server}/ssh")
    assert str(ssh.value) == "fetching failed: the answer is not valid HTTP"
    with pytest.raises(FetchError) as status:
        fetcher.fetch(f"{banner_server}/secret")
    assert str(status.value) == "HTTP 500 Internal Server Error"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(FetchError) as refused:
        fetcher.fetch(f"http://127.0.0.1:{port}/")
    assert str(refused.value) == "fetching failed: connection refused"


def test_scan_url_answers_with_the_failure_class_only(env: Env, banner_server: str) -> None:
    rest = env.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8")
    reply = http("POST", f"{rest}/scan/url", json_body={"url": f"{banner_server}/ssh"})
    assert (reply.status, reply.body) == (422, {
        "error": "fetching failed: the answer is not valid HTTP"})
    reply = http("POST", f"{rest}/scan/url", json_body={"url": f"{banner_server}/secret"})
    assert (reply.status, reply.body) == (422, {"error": "HTTP 500 Internal Server Error"})
    reply = http("POST", f"{rest}/scan/url", json_body={"url": "http://１２７.１/a.jpg"})
    assert reply.status == 400 and "non-standard spelling" in reply.body["error"]
    assert env.queue_depth() == 0
