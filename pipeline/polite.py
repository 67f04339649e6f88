"""Politeness towards the hosts a download fetches from.

- At most `host_concurrency` requests in flight to one host, and requests to one host started at
  most `host_rate` per second (0: no limit). A host is the URL's host name, lowercased. The
  limits hold in each download process (img2dataset's `processes`, or each Ray task of its Ray
  distributor): a download of P processes may have P times as many requests in flight to a host.
- A busy answer (HTTP 429 Too Many Requests, 503 Service Unavailable) is retried up to
  `busy_retries` times. The wait before a retry is what the answer's `Retry-After` asks for
  (seconds or an HTTP date, parsed by urllib3), else `backoff` seconds doubled at each retry. The
  whole host waits, not only the row that got the answer: no request to that host starts before
  the wait is over. A wait over `max_wait` is not made, and the row fails at once with its reason.
  So does a row still busy after `busy_retries` retries. Nothing else is retried here; img2dataset's
  `retries` covers timeouts and 5xx answers.

`Politeness` is the run config's `download.politeness` section, the `download()` argument and the
CLI's options. `HostLimiter` keeps one process's per-host state; `limiter(politeness)` is that
process's limiter for those settings.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from models.errors import CapfiltError

BUSY = (429, 503)  # the answers that say "come back later"


class GiveUp(Exception):
    """A busy answer that is not retried (out of retries, or a wait over max_wait): the row's reason."""


@dataclass(frozen=True)
class Politeness:
    host_concurrency: int = 8  # requests in flight to one host, per download process; 0: no limit
    host_rate: float = 0.0  # requests started per second to one host, per download process; 0: no limit
    busy_retries: int = 3  # retries of a 429/503 answer before the row fails
    backoff: float = 1.0  # seconds before the first retry when the answer has no Retry-After; doubled after each
    max_wait: float = 60.0  # the longest wait for one retry; a Retry-After asking for more fails the row at once

    def problems(self, where: str = "download.politeness") -> list[str]:
        """What is wrong with these settings, one message per mistake (none: they are usable)."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                out.append(f"{where}.{f.name} must be a number, got {value!r}")
        if out:
            return out
        if not isinstance(self.host_concurrency, int) or self.host_concurrency < 0:
            out.append(f"{where}.host_concurrency={self.host_concurrency!r} must be a whole number >= 0 "
                       "(requests in flight to one host; 0: no limit)")
        if self.host_rate < 0:
            out.append(f"{where}.host_rate={self.host_rate} must be >= 0 (requests per second to one host; 0: no limit)")
        if not isinstance(self.busy_retries, int) or self.busy_retries < 0:
            out.append(f"{where}.busy_retries={self.busy_retries!r} must be a whole number >= 0 (0: never retry a 429/503)")
        if self.backoff < 0 or self.max_wait < 0:
            out.append(f"{where}.backoff={self.backoff} and max_wait={self.max_wait} must be seconds >= 0")
        return out

    def check(self, where: str = "download.politeness") -> Politeness:
        problems = self.problems(where)
        if problems:
            raise CapfiltError("; ".join(problems))
        return self

    def busy_wait(self, status: int, headers, retries_done: int) -> float | None:
        """Seconds to wait before retrying an answer of `status`; None when it is not a busy
        answer. Raises GiveUp when it is one that is not to be retried."""
        if status not in BUSY:
            return None
        if retries_done >= self.busy_retries:
            raise GiveUp(f"the host was still busy after {retries_done} retries (busy_retries)")
        asked = retry_after(headers)
        wait = self.backoff * 2 ** retries_done if asked is None else asked
        if wait > self.max_wait:
            if asked is None:  # our own backoff: cap it
                return self.max_wait
            raise GiveUp(f"Retry-After asks for {asked:g} s, over the {self.max_wait:g} s max_wait")
        return wait


def retry_after(headers) -> float | None:
    """The seconds a `Retry-After` header asks for (a number, or an HTTP date); None without one
    or when it cannot be read."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return float(Retry(retry_after_max=math.inf).parse_retry_after(str(value)))
    except (InvalidHeader, ValueError, OverflowError):
        return None


class _Host:
    __slots__ = ("slots", "next_start", "users")

    def __init__(self, concurrency: int):
        self.slots = threading.BoundedSemaphore(concurrency) if concurrency else None
        self.next_start = 0.0  # time.monotonic() before which no request to the host may start
        self.users = 0


class HostLimiter:
    """Per-host concurrency and start rate for the threads of one process."""

    SWEEP = 4096  # hosts remembered before idle ones are forgotten

    def __init__(self, concurrency: int = 0, rate: float = 0.0):
        self.interval = 1.0 / rate if rate else 0.0
        self.concurrency = concurrency
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def _host(self, host: str) -> _Host:
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = _Host(self.concurrency)
        return entry

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of `host`'s request slots, entered once its next request may start."""
        host = host.lower()
        with self._lock:
            entry = self._host(host)
            entry.users += 1
        if entry.slots is not None:
            entry.slots.acquire()  # first the slot, then the turn: a turn taken while waiting for a slot would be spent late
        try:
            self._wait_turn(entry)
            yield
        finally:
            if entry.slots is not None:
                entry.slots.release()
            with self._lock:
                entry.users -= 1
                if len(self._hosts) > self.SWEEP:
                    self._sweep()

    def _wait_turn(self, entry: _Host) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                if entry.next_start <= now:
                    entry.next_start = now + self.interval
                    return
                wait = entry.next_start - now
            time.sleep(wait)  # then look again: a pause may have come meanwhile

    def pause(self, host: str, seconds: float) -> None:
        """No request to `host` starts in the next `seconds`."""
        with self._lock:
            entry = self._host(host.lower())
            entry.next_start = max(entry.next_start, time.monotonic() + seconds)

    def _sweep(self) -> None:
        now = time.monotonic()
        for name in [n for n, e in self._hosts.items() if e.users == 0 and e.next_start <= now]:
            del self._hosts[name]


_LIMITERS: dict[Politeness, HostLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter(politeness: Politeness) -> HostLimiter:
    """This process's limiter for `politeness`, shared by all its download threads and shards."""
    with _LIMITERS_LOCK:
        found = _LIMITERS.get(politeness)
        if found is None:
            found = _LIMITERS[politeness] = HostLimiter(politeness.host_concurrency, politeness.host_rate)
        return found
