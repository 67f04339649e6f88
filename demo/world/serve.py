"""Serve the synthetic web on 127.0.0.1 and write its URL list for the port it got.

URLs are made at serve time (the port is free-chosen, so no file can know it in advance); the
generator writes only file names.
"""
from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import CapfiltError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


class QuietHandler(SimpleHTTPRequestHandler):
    """Files under `directory`; request lines go to debug logging, not stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts do that)
            pass


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow handler must not hold up shutdown
    # The default backlog (5) drops SYNs when a downloader opens many connections at once; the
    # client's 1 s SYN retry then looks like a timeout.
    request_queue_size = 128

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks for the host's FQDN, a name lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@contextmanager
def serve_folder(path: str | Path, *, handler: type[SimpleHTTPRequestHandler] = QuietHandler,
                 port: int = 0) -> Iterator[str]:
    """Serve `path` over HTTP on 127.0.0.1 (port 0: a free one) while in the block; yields the base URL."""
    root = Path(path)
    if not root.is_dir():
        raise CapfiltError(f"cannot serve {root}: not a folder")
    try:
        server = _LoopbackServer((HOST, port), partial(handler, directory=str(root)))
    except OSError as err:
        raise CapfiltError(f"cannot listen on {HOST}:{port}: {err.strerror or err}; pick another port or 0 for a free one") from err
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://{HOST}:{server.server_address[1]}"
    log.info("serving %s at %s", root, base)
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _web_parquet(synth_dir: str | Path) -> Path:
    path = Path(synth_dir) / "web.parquet"
    if not path.is_file():
        raise CapfiltError(f"{synth_dir} has no web.parquet; make a synthetic world with `capfilt synth --out {synth_dir}`")
    return path


def url_list(synth_dir: str | Path, base_url: str) -> pa.Table:
    """The web split as img2dataset input: url, caption (the alt-text), key (ours, stable)."""
    web = pq.read_table(_web_parquet(synth_dir))
    base = base_url.rstrip("/")
    urls = pa.array([f"{base}/{f}" for f in web.column("file").to_pylist()], pa.string())
    return pa.table({"url": urls, "caption": web.column("caption"), "key": web.column("key")})


def write_url_list(synth_dir: str | Path, base_url: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(url_list(synth_dir, base_url), path)
    return path


@contextmanager
def serve_synthetic(synth_dir: str | Path, url_list_path: str | Path, *, port: int = 0) -> Iterator[Path]:
    """Serve the world's web/ folder and write the URL list for this server; yields the list's path."""
    _web_parquet(synth_dir)
    with serve_folder(Path(synth_dir) / "web", port=port) as base:
        yield write_url_list(synth_dir, base, url_list_path)
