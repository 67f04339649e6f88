"""A 127.0.0.1 server for the polite downloader: busy answers, slow answers, and its own record of
every request (host, path, arrival and end times, status) and of the most requests it had in
flight per host. It is fixtures_bad_input's BadWeb with more routes; reach it as 127.0.0.1 and as
localhost, which the downloader counts as two hosts.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate

from tests.fixtures_bad_input import IMAGES, BadWeb, _Server

IMAGE = IMAGES["webp"][0]


@dataclass
class Hit:
    host: str
    path: str
    start: float  # time.monotonic() when the request arrived
    end: float  # ... and when its answer was sent
    status: int


@dataclass
class Record:
    hits: list[Hit] = field(default_factory=list)
    in_flight: Counter = field(default_factory=Counter)
    peak: Counter = field(default_factory=Counter)  # host -> most requests in flight at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, path: str) -> list[Hit]:
        return sorted((h for h in self.hits if h.path == path), key=lambda h: h.start)

    def on(self, host: str) -> list[Hit]:
        return sorted((h for h in self.hits if h.host == host), key=lambda h: h.start)


class BusyWeb(BadWeb):
    """BadWeb's routes, and
    /flaky/N?times=K&after=S  429 with `Retry-After: S` to its first K requests, then an image;
    /down/N                   503 always, with no Retry-After;
    /date/N                   503 with Retry-After as an HTTP date 1 s ahead to its first request, then an image;
    /busy-to?URL              503 with `Retry-After: 0` to its first request, then a redirect to URL;
    /far                      429 with `Retry-After: 3600`;
    /wait/N?s=S               an image after S seconds;
    /ok/N                     an image at once."""

    record: Record

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        rec = self.server.record
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        path, _, query = self.path.partition("?")
        args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        start = time.monotonic()
        with rec.lock:
            rec.in_flight[host] += 1
            rec.peak[host] = max(rec.peak[host], rec.in_flight[host])
            seen = sum(h.path == path for h in rec.hits)
        status = 200
        try:
            if path.startswith("/flaky/") and seen < int(args.get("times", 1)):
                status = 429
                self._send(429, b"slow down", ctype="text/plain", headers=[("Retry-After", args.get("after", "1"))])
            elif path.startswith("/down/"):
                status = 503
                self._send(503, b"down for maintenance", ctype="text/plain")
            elif path.startswith("/date/") and seen == 0:
                status = 503
                self._send(503, b"back soon", ctype="text/plain",
                           headers=[("Retry-After", formatdate(time.time() + 1, usegmt=True))])
            elif path == "/busy-to":  # busy once, then a redirect to the URL that is the whole query
                status = 503 if seen == 0 else 302
                self._send(status, b"", ctype="text/plain",
                           headers=[("Retry-After", "0")] if seen == 0 else [("Location", query)])
            elif path == "/far":
                status = 429
                self._send(429, b"come back in an hour", ctype="text/plain", headers=[("Retry-After", "3600")])
            elif path.startswith(("/flaky/", "/date/", "/ok/", "/wait/")):
                time.sleep(float(args.get("s", 0)) if path.startswith("/wait/") else 0)
                self._send(200, IMAGE)
            else:
                status = 0  # BadWeb's own routes (it records their paths in server.requests)
                super().do_GET()
        finally:
            with rec.lock:
                rec.in_flight[host] -= 1
                rec.hits.append(Hit(host, path, start, time.monotonic(), status))


@contextmanager
def busy_web():
    """Serve BusyWeb on 127.0.0.1 (a free port); yields (port, its Record)."""
    server = _Server(("127.0.0.1", 0), BusyWeb)
    server.requests, server.record = [], Record()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.record
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
