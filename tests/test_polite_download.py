"""The polite downloader (pipeline/polite.py): per-host concurrency and rate limits, 429/503 answers
retried after their Retry-After up to a bound, then a failed row with the reason; the SSRF guard on
every retry and redirect. Checked against the 127.0.0.1 server's own record of what it was sent."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from email.utils import formatdate

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.errors import CapfiltError
from pipeline.config import RunConfig, build, validate
from pipeline.download import _fetch_image, download
from pipeline.polite import GiveUp, HostLimiter, Politeness
from pipeline.safety import AddressPolicy
from tests.fixtures_polite import busy_web
from workflows import cli

RETRY_AFTER = 1  # seconds the flaky URLs ask for (Retry-After is whole seconds)


def _rows(folder) -> dict[str, dict]:
    return {r["source_key"]: r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}


def _download(tmp, urls: dict[str, str], politeness: Politeness, **kw):
    pq.write_table(pa.table({"url": list(urls.values()), "caption": list(urls), "key": list(urls)}), tmp / "urls.parquet")
    stats = download(tmp / "urls.parquet", tmp / "out", image_size=16, timeout=2, threads=8, shard_size=100,
                     allow_hosts=("127.0.0.1", "localhost"), politeness=politeness, **kw)
    rows = _rows(tmp / "out")
    assert stats.count == len(urls) == len(rows) == stats.successes + stats.failed  # every row in, once
    assert set(rows) == set(urls)
    return rows


# -- the policy, on its own ---------------------------------------------------------------------

def test_a_busy_answer_waits_what_retry_after_asks_else_a_doubling_backoff():
    p = Politeness(busy_retries=3, backoff=0.5, max_wait=10)
    assert p.busy_wait(404, {"Retry-After": "1"}, 0) is None and p.busy_wait(500, {}, 0) is None  # not busy
    assert p.busy_wait(429, {"Retry-After": "2"}, 0) == 2
    assert 2 <= p.busy_wait(503, {"Retry-After": formatdate(time.time() + 3, usegmt=True)}, 0) <= 3  # an HTTP date
    assert [p.busy_wait(503, {}, n) for n in range(3)] == [0.5, 1.0, 2.0]  # no Retry-After
    assert p.busy_wait(503, {"Retry-After": "soon"}, 1) == 1.0  # unreadable: the backoff
    assert Politeness(backoff=8, max_wait=10).busy_wait(503, {}, 2) == 10  # our own backoff is capped
    with pytest.raises(GiveUp, match="Retry-After asks for 3600 s, over the 10 s max_wait"):
        p.busy_wait(429, {"Retry-After": "3600"}, 0)
    with pytest.raises(GiveUp, match="still busy after 3 retries"):
        p.busy_wait(429, {"Retry-After": "0"}, 3)


def test_bad_politeness_settings_get_one_clear_error(tmp_path, capsys):
    cfg = build(RunConfig, {"input": {"path": "x"}, "output": "y",
                            "download": {"politeness": {"host_rate": -1, "busy_retries": -2}}}, "cfg")
    with pytest.raises(CapfiltError) as err:
        validate(cfg, check_paths=False)
    assert "download.politeness.host_rate=-1 must be >= 0" in str(err.value)
    assert "download.politeness.busy_retries=-2 must be a whole number >= 0" in str(err.value)
    with pytest.raises(CapfiltError, match=r"unknown key\(s\) \['rate'\] in cfg.download.politeness"):
        validate(build(RunConfig, {"input": {"path": "x"}, "output": "y", "download": {"politeness": {"rate": 1}}},
                       "cfg"), check_paths=False)
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"]}), tmp_path / "urls.parquet")
    with pytest.raises(CapfiltError, match="politeness.host_concurrency=-1"):  # before anything is fetched
        download(tmp_path / "urls.parquet", tmp_path / "out", politeness=Politeness(host_concurrency=-1))
    assert cli.main(["download", "--url-list", str(tmp_path / "urls.parquet"), "--out", str(tmp_path / "out"),
                     "--host-rate", "-1"]) == 2
    assert "politeness.host_rate=-1.0 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _too_close(starts: list[float], interval: float) -> list[tuple]:
    """Runs of k + 1 starts spanning less than k - 1 intervals: k + 1 starts span at least k
    intervals, less what a loaded machine delays a thread between its turn and the record of it
    (one interval allowed)."""
    n = len(starts)
    return [(i, k, round(starts[i + k] - starts[i], 3)) for k in range(2, n) for i in range(n - k)
            if starts[i + k] - starts[i] < (k - 1) * interval]


def _hammer(limiter: HostLimiter, host: str, n: int, hold: float) -> tuple[int, list[float]]:
    """n threads each take a slot of `host` and hold it `hold` s: (most held at once, start times)."""
    held, peak, starts, lock = [0], [0], [], threading.Lock()

    def one() -> None:
        with limiter.slot(host):
            with lock:
                held[0] += 1
                peak[0] = max(peak[0], held[0])
                starts.append(time.monotonic())
            time.sleep(hold)
            with lock:
                held[0] -= 1

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return peak[0], sorted(starts)


def test_the_host_limiter_bounds_slots_and_spaces_starts_per_host():
    assert _hammer(HostLimiter(), "a", 6, 0.1)[0] == 6  # unlimited: all at once
    assert _hammer(HostLimiter(concurrency=2), "a", 6, 0.1)[0] == 2
    _, starts = _hammer(HostLimiter(rate=20), "a", 6, 0)
    assert _too_close(starts, 1 / 20) == []
    limiter = HostLimiter(concurrency=1)
    peaks = []
    both = [threading.Thread(target=lambda h=h: peaks.append(_hammer(limiter, h, 3, 0.15)[0])) for h in ("a", "B")]
    t0 = time.monotonic()
    for t in both:
        t.start()
    for t in both:
        t.join()
    assert peaks == [1, 1] and time.monotonic() - t0 < 0.8  # two hosts do not wait on each other (in turn: 0.9 s)
    limiter.pause("A", 0.3)  # host names are case-blind
    t0 = time.monotonic()
    with limiter.slot("a"):
        assert time.monotonic() - t0 >= 0.3 - 0.005


# -- the guard on every connection, retries and redirects included ------------------------------

CONNECTIONS: list[tuple[str, int]] = []


@dataclass(frozen=True)
class _Counting(AddressPolicy):
    def create_connection(self, address, *args, **kwargs):
        CONNECTIONS.append(address)
        return super().create_connection(address, *args, **kwargs)


def test_every_retry_and_redirect_connects_through_the_guard():
    CONNECTIONS.clear()
    policy, polite = _Counting(("localhost",)), Politeness(busy_retries=3, backoff=0)
    with busy_web() as (port, record):
        fetch = lambda url: _fetch_image(("k", url), 2, 0, None, None, policy=policy, max_bytes=1 << 20,  # noqa: E731
                                         max_pixels=1 << 20, politeness=polite)
        ok = fetch(f"http://localhost:{port}/flaky/1?times=2&after=0")
        refused = fetch(f"http://localhost:{port}/busy-to?http://127.0.0.1:{port}/ok/never")
    assert ok[1] is not None and ok[2] is None
    assert refused[1] is None and refused[2].startswith("refused: 127.0.0.1, a loopback address"), refused
    assert [h.status for h in record.of("/flaky/1")] == [429, 429, 200]
    assert [h.status for h in record.of("/busy-to")] == [503, 302]  # busy, retried, then redirected...
    assert record.of("/ok/never") == []  # ...to an address the guard refused: never requested
    # each request the server saw, and the refused hop, went through the guard's connect
    assert len(CONNECTIONS) == len(record.hits) + 1 == 6
    assert CONNECTIONS[-1] == ("127.0.0.1", port)


# -- img2dataset's download, polite ---------------------------------------------------------------

POLITE = Politeness(host_concurrency=2, host_rate=10, busy_retries=2, backoff=0.2, max_wait=5)


@pytest.fixture(scope="module")
def polite_run(tmp_path_factory):
    """One download under POLITE from two hosts of one server: on 127.0.0.1 slow answers and URLs
    that are busy (429) for a while, then fine; on localhost quick answers, URLs that stay busy
    (503), one whose Retry-After is an HTTP date and one whose Retry-After is too far."""
    with busy_web() as (port, record):
        a, b = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
        urls = {f"slow{i}": f"{a}/wait/{i}?s=0.3" for i in range(6)}
        urls |= {f"flaky{i}": f"{a}/flaky/{i}?times=1&after={RETRY_AFTER}" for i in range(4)}
        urls |= {f"quick{i}": f"{b}/ok/{i}" for i in range(6)}
        urls |= {f"down{i}": f"{b}/down/{i}" for i in range(2)}
        urls |= {"date": f"{b}/date/0", "far": f"{b}/far"}
        rows = _download(tmp_path_factory.mktemp("polite"), urls, POLITE)
    return rows, record


def test_a_host_busy_for_a_while_is_waited_for_and_its_rows_end_ok(polite_run):
    rows, record = polite_run
    for i in range(4):
        assert rows[f"flaky{i}"]["status"] == "success", rows[f"flaky{i}"]
        hits = record.of(f"/flaky/{i}")
        assert [h.status for h in hits] == [429, 200]
        assert hits[1].start - hits[0].end >= RETRY_AFTER - 0.02  # the wait its Retry-After asked for
    assert rows["date"]["status"] == "success"  # a Retry-After given as an HTTP date
    date = record.of("/date/0")
    assert [h.status for h in date] == [503, 200] and date[1].start > date[0].end
    assert all(rows[k]["status"] == "success" for k in rows if k.startswith(("slow", "quick")))


def test_a_host_that_stays_busy_fails_its_rows_with_the_reason_after_the_bound(polite_run):
    rows, record = polite_run
    for i in range(2):
        row = rows[f"down{i}"]
        assert row["status"] == "failed_to_download"
        assert row["error_message"] == ("HTTP Error 503: Service Unavailable: the host was still busy after 2 "
                                        "retries (busy_retries)")
        hits = record.of(f"/down/{i}")
        assert [h.status for h in hits] == [503] * (POLITE.busy_retries + 1)  # the bound, no more
        gaps = [b.start - a.end for a, b in zip(hits, hits[1:])]
        assert all(g >= POLITE.backoff * 2 ** n - 0.02 for n, g in enumerate(gaps)), gaps  # the doubling backoff
    far = rows["far"]
    assert far["status"] == "failed_to_download" and far["error_message"] == (
        "HTTP Error 429: Too Many Requests: Retry-After asks for 3600 s, over the 5 s max_wait")
    assert len(record.of("/far")) == 1  # not waited for, not asked again


def test_requests_in_flight_to_a_host_stay_within_its_limit(polite_run):
    _, record = polite_run
    assert record.peak["127.0.0.1"] == POLITE.host_concurrency  # reached (8 threads were there), never passed
    assert record.peak["localhost"] <= POLITE.host_concurrency


def test_requests_to_a_host_start_no_faster_than_its_rate(polite_run):
    _, record = polite_run
    interval = 1 / POLITE.host_rate
    for host in ("127.0.0.1", "localhost"):
        starts = [h.start for h in record.on(host)]
        assert len(starts) >= 14
        assert _too_close(starts, interval) == [], host  # as the server saw them


def test_the_limits_are_how_fast_a_download_goes_and_the_retries_what_it_makes(monkeypatch):
    """A resumed run may change the per-host limits (like download.threads); the retry settings
    decide which rows fail, so they are part of the run's identity."""
    from pipeline import identity as ident

    monkeypatch.setattr(ident, "describe_models", lambda cfg: [])

    class Source:
        def describe(self, path):
            return [{"url_list": path}]

    def identity(**politeness):
        cfg = build(RunConfig, {"input": {"path": "x"}, "output": "y", "download": {"politeness": politeness}}, "cfg")
        return ident.digest(ident.compute(cfg, Source()))

    assert identity() == identity(host_concurrency=1, host_rate=0.5)
    assert identity() != identity(busy_retries=0) != identity(max_wait=1)
