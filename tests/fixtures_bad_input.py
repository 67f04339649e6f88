"""A corpus of bad input, built in code: images, texts, and a 127.0.0.1 server of bad URLs.

`IMAGES` maps a name to (bytes, what should happen): `None` when the image is valid and must decode,
else a fragment of the failed row's reason. `TEXTS` are web texts a page may carry. `BadWeb` serves
the images and misbehaving URLs on 127.0.0.1 only and records every request it gets.
"""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, *, real_rows: bool) -> bytes:
    """A 1-bit grey PNG whose header says width x height. real_rows: a complete zlib stream of white
    rows (a decompression bomb: tiny on the wire, width*height pixels decoded); else one byte of data."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    if real_rows:
        row = b"\x00" + b"\xff" * ((width + 7) // 8)
        packer = zlib.compressobj(9)
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        data = zlib.compress(b"\x00")
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _halves(size=(40, 20), left=RED, right=BLUE) -> Image.Image:
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def _exif_rotated() -> bytes:
    """Stored 40x20, left half red; EXIF orientation 6 (display rotated 90 degrees clockwise): shown
    20x40 with red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(_halves(), "JPEG", exif=exif.tobytes(), quality=95)


def _palette_with_transparency() -> bytes:
    """A palette PNG: left half index 0 (transparent), right half index 1 (blue)."""
    image = Image.new("P", (40, 20), 1)
    image.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 20, 20))
    return encode(image, "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    """A 16-bit grey PNG at 32896 = 128 * 257 (mid grey once scaled to 8 bits, white if clipped)."""
    return encode(Image.fromarray(np.full((20, 30), 32896, np.uint16)), "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (30, 30), RED), Image.new("RGB", (30, 30), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _corrupt_png() -> bytes:
    good = encode(Image.new("RGB", (64, 64), RED), "PNG")
    start = good.index(b"IDAT") + 4
    return good[:start] + bytes(b ^ 0x5A for b in good[start:start + 40]) + good[start + 40:]


SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
       b'<rect width="40" height="40" fill="red"/></svg>\n')
HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>Sorry.</body></html>\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke showpage\n"


def _images() -> dict[str, tuple[bytes, str | None]]:
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(noise), "JPEG", quality=95)  # mostly scan data: a cut lands in it
    return {
        # bad: the reason must say so
        "corrupt": (_corrupt_png(), "decode"),
        "truncated": (jpeg[: len(jpeg) * 6 // 10], "truncated"),
        "zero_byte": (b"", "no image bytes"),
        "html": (HTML, "HTML"),
        "text": (b"this is a plain text file, not a picture\n", "text"),
        "svg": (SVG, "SVG"),
        "eps": (EPS, "not an image"),  # PostScript: PIL would run Ghostscript on it
        "bomb": (png_claiming(8000, 8000, real_rows=True), "pixels"),
        "huge": (png_claiming(100_000, 100_000, real_rows=False), "pixels"),
        # odd but valid: they decode
        "one_pixel": (encode(Image.new("RGB", (1, 1), RED), "PNG"), None),
        "cmyk": (encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95), None),
        "palette_transparent": (_palette_with_transparency(), None),
        "sixteen_bit": (_sixteen_bit(), None),
        "animated_gif": (_animated_gif(), None),
        "exif_rotated": (_exif_rotated(), None),
        "webp": (encode(Image.new("RGB", (40, 30), RED), "WEBP", quality=95), None),
    }


IMAGES = _images()

TEXTS = {
    "empty": "",
    "whitespace": " \t\n  ",
    "long": "a small red circle beside a blue square " * 250,  # 10,000 characters
    "control": "a red\x00 square\x1b[31m with\x07 a bell\x7f and\x85 C1",
    "rtl": "\u0645\u0631\u0628\u0639 \u0623\u062d\u0645\u0631 \u202ea red square\u202c \u05e8\u05d9\u05d1\u05d5\u05e2",
    "emoji": "\U0001f7e5 a red square \U0001f389\U0001f468\u200d\U0001f469\u200d\U0001f467 \ufe0f",
}
INVALID_UTF8 = b"caf\xe9 \xff\xfe a red \xc3 square"  # latin-1 and stray bytes: not UTF-8


class BadWeb(BaseHTTPRequestHandler):
    """GET /img/NAME (IMAGES[NAME], served as image/jpeg whatever it is), /status/CODE,
    /slow (answers after SLOW s), /drip (headers at once, then a byte every 0.2 s for 60 s),
    /loop (302 to itself), /to?URL (302 to URL), /big (BIG bytes, with Content-Length),
    /big-stream (BIG bytes, no Content-Length)."""

    protocol_version = "HTTP/1.0"
    SLOW = 4.0
    BIG = 600_000
    requests: list[str]  # set per server

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", ctype="image/jpeg", length=True, headers=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        path, _, query = self.path.partition("?")
        try:
            if path.startswith("/img/") and path[5:] in IMAGES:
                self._send(200, IMAGES[path[5:]][0])
            elif path.startswith("/status/"):
                self._send(int(path[8:]), b"error page", ctype="text/html")
            elif path == "/slow":
                time.sleep(self.SLOW)
                self._send(200, IMAGES["one_pixel"][0])
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "300")
                self.end_headers()
                for _ in range(300):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path == "/loop":
                self._send(302, headers=[("Location", "/loop")], ctype="text/html")
            elif path == "/to":
                self._send(302, headers=[("Location", query)], ctype="text/html")
            elif path == "/big":
                self._send(200, b"\xff" * self.BIG)
            elif path == "/big-stream":
                self._send(200, b"\xff" * self.BIG, length=False)
            else:
                self._send(404, b"not here", ctype="text/html")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: that is the point
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def server_bind(self) -> None:  # no FQDN lookup
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@contextmanager
def bad_web():
    """Serve BadWeb on 127.0.0.1 (a free port); yields (base URL, list of request paths seen)."""
    server = _Server(("127.0.0.1", 0), BadWeb)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
