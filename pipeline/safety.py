"""Untrusted data from the web: which addresses a download may reach, how much it may read, and
what web strings may become.

- `AddressPolicy` refuses URLs whose host resolves to a loopback, private, link-local (169.254/16,
  where cloud metadata lives), multicast, reserved or otherwise non-global address, unless an
  explicit allow-list names the host or its network. The check runs when the socket connects, on
  the address it connects to (so a name that resolves twice, first public then private, cannot
  slip through), for the first request and for every redirect.
- `fetch` is one guarded HTTP(S) GET: only http/https, no proxies from the environment, at most
  `max_redirects` redirects, at most `max_bytes` of body and `timeout` seconds in all.
- `safe_key` turns a key into a file or tar member stem; `clean_text` makes a web string valid,
  printable UTF-8.
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import socket
import threading
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from models.errors import CapfiltError

SCHEMES = ("http", "https")
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # what the tests and the demo allow, by name
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """A URL the policy does not let through; its message starts with "refused: ".

    Not an OSError on purpose: urllib wraps those in URLError, and retries would retry it."""

    def __init__(self, why: str):
        super().__init__(f"refused: {why}")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, Teredo client), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: _Address) -> str | None:
    """Why `ip` is not a public internet address ("loopback", "private", ...), or None if it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            kind = address_kind(inner)
            return f"{kind} (inside IPv6 {ip})" if kind else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata services live here)" if ip.version == 4 else "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # shared address space 100.64/10, documentation ranges, ...
        return "non-global"
    return None


def _parse_entry(entry: str) -> tuple[str | None, _Network | None]:
    text = str(entry).strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise CapfiltError("allow_hosts holds an empty entry: give host names, addresses or networks (CIDR)")
    try:
        return None, ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    if "/" in text or not re.fullmatch(r"[a-z0-9._-]+", text):
        raise CapfiltError(f"allow_hosts entry {entry!r} is neither a host name, an address nor a network (CIDR)")
    return text.rstrip("."), None


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts a download may reach. `allow`: host names (matched exactly, case-insensitive),
    addresses and networks ("10.0.0.0/8") that are let through though not public."""

    allow: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False, repr=False)
    networks: tuple[_Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.allow, str):
            raise CapfiltError(f"allow_hosts must be a list of hosts, not the string {self.allow!r}")
        parsed = [_parse_entry(e) for e in self.allow]
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "names", frozenset(n for n, _ in parsed if n))
        object.__setattr__(self, "networks", tuple(w for _, w in parsed if w))

    def _host_allowed(self, host: str) -> bool:
        return host.lower().strip("[]").rstrip(".") in self.names

    def check_address(self, ip: str | _Address, host: str | None = None) -> None:
        """Raise Refused unless a connection to `ip` (reached through `host`) is allowed."""
        addr = ipaddress.ip_address(str(ip).split("%", 1)[0]) if isinstance(ip, str) else ip
        if host is not None and self._host_allowed(host):
            return
        kind = address_kind(addr)
        if kind is None or any(addr in net for net in self.networks if net.version == addr.version):
            return
        via = f"{host} resolves to {addr}" if host and host.strip("[]") != str(addr) else str(addr)
        raise Refused(f"{via}, a {kind} address; add it to allow_hosts if it is meant to be reached")

    def check_url(self, url: str) -> tuple[str, int]:
        """The URL's host and port, or Refused for a scheme other than http(s) or no host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise Refused(f"malformed URL ({err})") from None
        if parts.scheme.lower() not in SCHEMES:
            raise Refused(f"scheme {parts.scheme or '(none)'}: is not http or https")
        if not parts.hostname:
            raise Refused("the URL has no host")
        return parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80)

    def resolve(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo results for (host, port) whose address is allowed; Refused if none is."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise OSError(f"cannot resolve {host}: {err.strerror or err}") from None
        allowed, refusals = [], []
        for info in infos:
            try:
                self.check_address(info[4][0], host)
                allowed.append(info)
            except Refused as refusal:
                refusals.append(refusal)
        if not allowed:
            raise refusals[0] if refusals else OSError(f"{host} resolves to no address")
        return allowed

    def create_connection(self, address: tuple[str, int], timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                          source_address=None) -> socket.socket:
        """socket.create_connection, connecting only to checked addresses (no second lookup)."""
        host, port = address
        error: OSError | None = None
        for family, type_, proto, _, sockaddr in self.resolve(host, port):
            sock = socket.socket(family, type_, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                error = err
                sock.close()
        raise error or OSError(f"cannot connect to {host}:{port}")


def _connection(base: type[http.client.HTTPConnection], policy: AddressPolicy, sockets: list | None):
    def connect(*args, **kwargs) -> socket.socket:
        sock = policy.create_connection(*args, **kwargs)
        if sockets is not None:
            sockets.append(sock)
        return sock

    class Guarded(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = connect  # http.client's hook for connect()

    return Guarded


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: AddressPolicy, sockets: list | None):
        super().__init__()
        self.policy, self.sockets = policy, sockets

    def http_open(self, req):
        return self.do_open(_connection(http.client.HTTPConnection, self.policy, self.sockets), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: AddressPolicy, sockets: list | None):
        super().__init__()
        self.policy, self.sockets = policy, sockets

    def https_open(self, req):
        return self.do_open(_connection(http.client.HTTPSConnection, self.policy, self.sockets), req,
                            context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: AddressPolicy, max_redirects: int):
        super().__init__()
        self.policy = policy
        self.max_redirections = max_redirects

    def http_error_302(self, req, fp, code, msg, headers):
        # before urllib's own check, which refuses some schemes with a less plain message
        location = headers.get("location") or headers.get("uri")
        if location:
            self.policy.check_url(urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.policy.check_url(newurl)  # the address is checked when its connection opens
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(policy: AddressPolicy, max_redirects: int = 5, sockets: list | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener with only guarded HTTP(S), error and redirect handlers: no proxies from the
    environment (the guard would check the proxy, not the site), no file:, ftp: or data:. Each
    socket it opens is appended to `sockets` when given."""
    director = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(policy, sockets), _HTTPSHandler(policy, sockets),
                    _RedirectHandler(policy, max_redirects), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        director.add_handler(handler)
    return director


def fetch(url: str, *, policy: AddressPolicy, timeout: float, max_bytes: int, headers: dict | None = None,
          max_redirects: int = 5):
    """GET `url` under `policy`: (body bytes, response headers).

    Raises Refused for what the policy refuses and for a body over `max_bytes`; TimeoutError when
    the whole fetch (connects, redirects, headers, body) takes over `timeout` seconds: a watchdog
    shuts its sockets then, so a server dripping bytes cannot hold it; urllib's errors for the rest.
    """
    policy.check_url(url)
    sockets: list[socket.socket] = []
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        for sock in list(sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener(policy, max_redirects, sockets).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > max_bytes:
                raise Refused(f"body of {int(length)} bytes is over the {max_bytes}-byte cap")
            chunks, size = [], 0
            while not expired.is_set():
                chunk = response.read1(min(1 << 16, max_bytes + 1 - size))  # one socket read at a time
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(f"body over the {max_bytes}-byte cap")
            if not expired.is_set():
                return b"".join(chunks), response.headers
    except Exception:
        if not expired.is_set():
            raise
    finally:
        watchdog.cancel()
    raise TimeoutError(f"timed out: the fetch took over {timeout:g} s")


# -- web strings ----------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_CHARS = 128


def safe_key(key: str) -> str:
    """The file or tar member stem for `key`: webdataset groups members by the text before the first
    dot and tar treats `/` as a folder, so everything outside [A-Za-z0-9_-] becomes `_` (no path
    traversal, no extra dots, no hidden files); a key longer than MAX_KEY_CHARS is cut and ends in
    a hash of the whole key, so file systems' 255-byte name limit holds. An empty key is an error."""
    if key is None or str(key) == "":
        raise CapfiltError("an empty key cannot name a file or tar member: every row needs a key")
    stem = _UNSAFE.sub("_", str(key))
    if len(stem) > MAX_KEY_CHARS:
        digest = hashlib.sha256(str(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        stem = f"{stem[:MAX_KEY_CHARS - 17]}_{digest}"
    return stem


_KEEP_CONTROLS = {"\t", "\n"}


def clean_text(value) -> str:
    """A web string as valid UTF-8 with no control characters: undecodable bytes become U+FFFD,
    control characters (C0, DEL, C1; tab and newline kept, CR made a newline) and lone surrogates
    become a space. Right-to-left scripts, emoji and other printable text are left as they are."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    if text.isprintable():
        return text
    return "".join(c if c in _KEEP_CONTROLS or unicodedata.category(c) not in ("Cc", "Cs") else " " for c in text)


def clean_texts(values: Iterable) -> list[str | None]:
    """clean_text over a column, keeping nulls null."""
    return [None if v is None else clean_text(v) for v in values]


def sniff_markup(data: bytes) -> str | None:
    """What a body that is text rather than an image is ("SVG (a vector image)", "HTML", "text"), or None."""
    head = bytes(data[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in bytes(data[:4096]).lower():
        return "SVG (a vector image)"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "HTML"
    if head[:1] in (b"<", b"{", b"[") or (head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256])):
        return "text"
    return None
