"""Hardening of the download stage: real img2dataset, its fetch guarded, against a 127.0.0.1
server of bad URLs and bad images. Every row ends with a status and a reason; nothing refused is
ever requested."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.download import download
from tests.fixtures_bad_input import bad_web

GOOD = ["webp", "cmyk", "one_pixel", "animated_gif", "sixteen_bit", "palette_transparent", "exif_rotated"]
# source key -> (path on the server, or a whole URL with {port}; what the failed row's reason holds)
BAD = {
    "img_html": ("/img/html", "not an image: the body is HTML"),
    "img_svg": ("/img/svg", "not an image: the body is SVG"),
    "img_text": ("/img/text", "not an image: the body is text"),
    "img_zero": ("/img/zero_byte", "empty body"),
    "img_truncated": ("/img/truncated", "truncated"),
    "img_corrupt": ("/img/corrupt", "decod"),  # cv2: "Image decoding error"
    "img_bomb": ("/img/bomb", "refused: image 8000x8000 is over 50000000 pixels"),
    "img_huge": ("/img/huge", "refused: image over 50000000 pixels"),
    "url_404": ("/status/404", "HTTP Error 404"),
    "url_500": ("/status/500", "HTTP Error 500"),
    "url_slow": ("/slow", "timed out"),
    "url_drip": ("/drip", "timed out"),
    "url_loop": ("/loop", "redirect"),
    "url_big": ("/big", "refused: body of 600000 bytes is over the 200000-byte cap"),
    "url_big_stream": ("/big-stream", "refused: body over the 200000-byte cap"),
    "url_file": ("file:///etc/hostname", "refused: scheme file"),
    "url_ftp": ("ftp://localhost:{port}/x.jpg", "refused: scheme ftp"),
    "url_gopher": ("gopher://localhost:{port}/_x", "refused: scheme gopher"),
    "url_data": ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "refused: scheme data"),
    "url_no_host": ("http:///x.jpg", "refused: the URL has no host"),
    "redirect_file": ("/to?file:///etc/passwd", "refused: scheme file"),
    "redirect_loopback": ("/to?http://127.0.0.1:{port}/img/webp?after-redirect", "127.0.0.1, a loopback address"),
    "direct_loopback": ("http://127.0.0.1:{port}/img/one_pixel?direct", "127.0.0.1, a loopback address"),
}
NEVER_REQUESTED = ["/img/webp?after-redirect", "/img/one_pixel?direct"]


def _url(spec: str, port: int) -> str:
    spec = spec.format(port=port)
    return f"http://localhost:{port}{spec}" if spec.startswith("/") else spec


def _rows(folder) -> dict[str, dict]:
    rows = [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["source_key"]: r for r in rows}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One download, 127.0.0.1 reachable only through the name "localhost" (allowed by name)."""
    tmp = tmp_path_factory.mktemp("guarded")
    with bad_web() as (base, requests):
        port = int(base.rsplit(":", 1)[1])
        keys = [f"ok_{g}" for g in GOOD] + list(BAD)
        urls = [_url(f"/img/{g}", port) for g in GOOD] + [_url(spec, port) for spec, _ in BAD.values()]
        pq.write_table(pa.table({"url": urls, "caption": [f"text {k}" for k in keys], "key": keys}), tmp / "urls.parquet")
        stats = download(tmp / "urls.parquet", tmp / "out", image_size=32, timeout=1, threads=8, shard_size=100,
                         allow_hosts=("localhost",), max_bytes=200_000)
        yield stats, _rows(tmp / "out"), list(requests), len(keys)


def test_every_bad_url_and_image_fails_with_its_reason(guarded):
    stats, rows, _, n = guarded
    assert stats.count == n == len(rows) == stats.successes + stats.failed  # nothing lost
    for key, (_, reason) in BAD.items():
        row = rows[key]
        assert row["status"] in ("failed_to_download", "failed_to_resize"), (key, row["status"])
        assert reason.lower() in (row["error_message"] or "").lower(), (key, row["error_message"])


def test_odd_but_valid_images_download(guarded):
    _, rows, _, _ = guarded
    for g in GOOD:
        row = rows[f"ok_{g}"]
        assert row["status"] == "success" and (row["width"], row["height"]) == (32, 32), (g, row["error_message"])
    exif = rows["ok_exif_rotated"]
    assert (exif["original_width"], exif["original_height"]) == (20, 40)  # shown upright before resizing


def test_refused_urls_are_never_requested(guarded):
    _, _, requests, _ = guarded
    assert any(r.startswith("/to?http://127.0.0.1") for r in requests)  # the first hop was made...
    for path in NEVER_REQUESTED:  # ...but not the refused ones
        assert path not in requests
    assert sum(r == "/loop" for r in requests) <= 6


def test_without_loopback_on_the_allow_list_nothing_is_requested(tmp_path):
    with bad_web() as (base, requests):
        urls = [f"{base}/img/webp", f"{base}/img/one_pixel", f"{base}/to?{base}/img/cmyk"]
        pq.write_table(pa.table({"url": urls, "key": ["a", "b", "c"]}), tmp_path / "urls.parquet")
        stats = download(tmp_path / "urls.parquet", tmp_path / "out", image_size=32, timeout=1, threads=4,
                         allow_hosts=())
        seen = list(requests)
    assert seen == []
    assert (stats.count, stats.successes) == (3, 0)
    rows = _rows(tmp_path / "out")
    assert all(r["status"] == "failed_to_download" and r["error_message"].startswith("refused: 127.0.0.1, a loopback")
               for r in rows.values()), rows
