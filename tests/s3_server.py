"""An S3-protocol server on 127.0.0.1 for tests: moto's ThreadedMotoServer, and a fault-injecting
HTTP proxy in front of it that answers chosen requests with a 500 or stalls them.

    with S3Server() as s3:            # moto on a free port, behind the proxy
        s3.create_bucket("bucket")
        s3.env()                      # AWS_* variables that point boto/s3fs/pyarrow at the proxy
        s3.proxy.fail(3, every=2)     # every other request answers 500, three times in all
        s3.proxy.fail(None, match=lambda method, path: method == "PUT" and "/out/" in path)  # for ever
        s3.proxy.stall(1, seconds=3)  # the next request gets no answer for 3 s, then a closed connection
        s3.proxy.clear()

Credentials are fake (moto accepts any); nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ACCESS_KEY = "testing"
# moto accepts any secret; a distinctive one makes "the secret appears nowhere" a meaningful check
SECRET_KEY = "capfilt-test-secret-7f3a9c1e"

_ERROR_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
              b"<Message>We encountered an internal error. Please try again. (injected by the test proxy)"
              b"</Message><RequestId>test</RequestId></Error>")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rule:
    action: str  # "fail" | "stall"
    remaining: int | None  # None: for ever
    every: int = 1  # act on every n-th matching request
    seconds: float = 0.0
    status: int = 500
    match: Callable[[str, str], bool] | None = None
    seen: int = 0
    acted: int = 0


class FaultProxy:
    """Forwards every request to `upstream` unless a rule says to fail or stall it."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        self.requests = 0
        self.faults: list[tuple[str, str, str]] = []  # (action, method, path) of each injected fault
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                rule = proxy._decide(self.command, self.path)
                if rule is not None and rule.action == "stall":
                    time.sleep(rule.seconds)
                    self.close_connection = True
                    return  # no answer at all: the client's read timeout fires
                if rule is not None:
                    data = b"" if self.command == "HEAD" else _ERROR_XML
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR_XML)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                           else resp.getheader("Content-Length") or 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _decide(self, method: str, path: str) -> Rule | None:
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule.remaining is not None and rule.acted >= rule.remaining:
                    continue
                if rule.match is not None and not rule.match(method, path):
                    continue
                rule.seen += 1
                if rule.seen % rule.every:
                    continue
                rule.acted += 1
                self.faults.append((rule.action, method, path))
                return rule
        return None

    def fail(self, times: int | None, *, every: int = 1, status: int = 500, match=None) -> Rule:
        """Answer `status` to every `every`-th matching request, `times` times (None: for ever)."""
        rule = Rule("fail", times, every=every, status=status, match=match)
        with self.lock:
            self.rules.append(rule)
        return rule

    def stall(self, times: int | None, *, seconds: float, every: int = 1, match=None) -> Rule:
        """Hold every `every`-th matching request `seconds` without an answer, then drop it."""
        rule = Rule("stall", times, every=every, seconds=seconds, match=match)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.faults.clear()


class S3Server:
    """moto's S3 server on 127.0.0.1, with a FaultProxy in front; `url` is the proxy's."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.proxy: FaultProxy | None = None

    def __enter__(self) -> "S3Server":
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
        self.moto.start()
        self.proxy = FaultProxy(self.moto_port)
        self.proxy.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.proxy.server.shutdown()
        self.proxy.server.server_close()
        self.moto.stop()

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def env(self) -> dict[str, str]:
        """The environment that points botocore, s3fs and pyarrow at this server (through the proxy)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.direct_url, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY, region_name="us-east-1").create_bucket(Bucket=name)


@contextlib.contextmanager
def s3_environment(*buckets: str):
    """A running S3Server with `buckets`, and this process's environment pointing at it (restored after).

    Start Ray inside the block: its workers inherit the environment, as on a node of a cluster."""
    import s3fs

    from pipeline import storage

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                            "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    with S3Server() as server:
        os.environ.update(server.env())
        s3fs.S3FileSystem.clear_instance_cache()
        storage.configure()
        for bucket in buckets:
            server.create_bucket(bucket)
        try:
            yield server
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            storage.configure()
            s3fs.S3FileSystem.clear_instance_cache()
