"""Hardening, unit level: the address check (no sockets), the guarded fetch against a 127.0.0.1
server, key sanitising, web text cleaning, safe YAML, and the bad-image and bad-text corpus
through the decode, filter and decide stages."""
from __future__ import annotations

import io
import re
import socket
import tarfile
import time
import urllib.error

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.errors import CapfiltError
from pipeline import safety
from pipeline.decode import Decode
from pipeline.safety import AddressPolicy, Refused, clean_text, fetch, safe_key
from tests.fixtures_bad_input import BLUE, IMAGES, INVALID_UTF8, RED, TEXTS, BadWeb, bad_web

# -- the address check, on the function itself: no socket is opened -----------------------------

REFUSED = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "10.1.2.3": "private", "172.16.5.4": "private", "192.168.1.1": "private", "fc00::1": "private",
    "169.254.169.254": "link-local", "169.254.0.1": "link-local", "fe80::1": "link-local",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "0.0.0.0": "unspecified", "::": "unspecified", "240.0.0.1": "reserved", "100.64.0.1": "non-global",
    "::ffff:169.254.169.254": "link-local", "::ffff:127.0.0.1": "loopback",
    "2002:a9fe:a9fe::1": "link-local",  # 6to4 wrapping 169.254.169.254
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 wrapping 169.254.169.254
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address, kind", sorted(REFUSED.items()))
def test_non_public_addresses_are_refused(address, kind):
    with pytest.raises(Refused, match=f"^refused: .*{re.escape(kind)}.*allow_hosts"):
        AddressPolicy(()).check_address(address)


def test_public_addresses_pass_and_the_allow_list_opens_only_what_it_names():
    for address in PUBLIC:
        AddressPolicy(()).check_address(address)
    loopback = AddressPolicy(("127.0.0.1",))
    loopback.check_address("127.0.0.1")
    for address in ("127.0.0.2", "169.254.169.254", "10.0.0.1", "::1"):
        with pytest.raises(Refused):
            loopback.check_address(address)
    private = AddressPolicy(("10.0.0.0/8", "[::1]"))
    private.check_address("10.200.3.4")
    private.check_address("::1")
    with pytest.raises(Refused, match="192.168.0.1"):
        private.check_address("192.168.0.1")
    by_name = AddressPolicy(("LocalHost",))  # a name lets through what that name resolves to, nothing else
    by_name.check_address("127.0.0.1", host="localhost")
    with pytest.raises(Refused, match="127.0.0.1, a loopback"):
        by_name.check_address("127.0.0.1", host="127.0.0.1")
    with pytest.raises(Refused, match="evil.test resolves to 169.254.169.254"):
        by_name.check_address("169.254.169.254", host="evil.test")


@pytest.mark.parametrize("entry", ["", "http://x/", "a b", "10.0.0.0/40"])
def test_a_bad_allow_list_entry_is_one_clear_error(entry):
    with pytest.raises(CapfiltError, match="allow_hosts"):
        AddressPolicy((entry,))


def test_a_string_is_not_an_allow_list():
    with pytest.raises(CapfiltError, match="list of hosts"):
        AddressPolicy("127.0.0.1")


@pytest.mark.parametrize("url, why", [
    ("file:///etc/passwd", "scheme file"), ("ftp://127.0.0.1/a.jpg", "scheme ftp"),
    ("gopher://127.0.0.1:70/_x", "scheme gopher"), ("data:image/png;base64,iVBORw0KGgo=", "scheme data"),
    ("javascript:alert(1)", "scheme javascript"), ("127.0.0.1/a.jpg", "scheme (none)"),
    ("http:///a.jpg", "no host"), ("http://[::1/a.jpg", "malformed"),
])
def test_only_http_urls_with_a_host_pass(url, why):
    with pytest.raises(Refused, match=re.escape(why)):
        AddressPolicy(("127.0.0.1",)).check_url(url)


def test_resolution_keeps_only_allowed_addresses(monkeypatch):
    """A name resolving to metadata and public addresses: only the public one is connectable. The
    lookup is faked and nothing connects (resolve() opens no socket)."""
    answers = {
        "mixed.test": ["169.254.169.254", "8.8.8.8"],
        "metadata.test": ["169.254.169.254", "fd00::1"],
    }

    def fake(host, port, *args, **kw):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]

    monkeypatch.setattr(safety.socket, "getaddrinfo", fake)
    policy = AddressPolicy(())
    assert [info[4][0] for info in policy.resolve("mixed.test", 80)] == ["8.8.8.8"]
    with pytest.raises(Refused, match="metadata.test resolves to 169.254.169.254, a link-local"):
        policy.resolve("metadata.test", 80)


# -- the guarded fetch against a 127.0.0.1 server -------------------------------------------------

LOCAL = AddressPolicy(("127.0.0.1",))


@pytest.fixture(scope="module")
def web():
    with bad_web() as (base, requests):
        yield base, requests


def _get(url, policy=LOCAL, timeout=2.0, max_bytes=1_000_000):
    return fetch(url, policy=policy, timeout=timeout, max_bytes=max_bytes)


def test_fetch_gets_an_allowed_image_and_ignores_proxy_settings(web, monkeypatch):
    base, _ = web
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy would see the request, not the site
    body, headers = _get(f"{base}/img/webp")
    assert body == IMAGES["webp"][0] and headers["Content-Type"] == "image/jpeg"


def test_fetch_refuses_loopback_unless_allowed_and_sends_nothing(web):
    base, requests = web
    before = len(requests)
    with pytest.raises(Refused, match="127.0.0.1, a loopback address"):
        _get(f"{base}/img/webp?not-allowed", policy=AddressPolicy(()))
    assert requests[before:] == []


def test_each_redirect_is_checked(web):
    base, requests = web
    port = base.rsplit(":", 1)[1]
    by_name = AddressPolicy(("localhost",))  # the first hop by name; the redirect names 127.0.0.1
    target = f"http://127.0.0.1:{port}/img/webp?after-redirect"
    with pytest.raises(Refused, match="127.0.0.1, a loopback"):
        _get(f"http://localhost:{port}/to?{target}", policy=by_name)
    assert any(r.startswith("/to?") for r in requests) and "/img/webp?after-redirect" not in requests
    for scheme_url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x"):
        with pytest.raises(Refused, match="scheme"):
            _get(f"{base}/to?{scheme_url}")


def test_http_errors_loops_sizes_and_time_are_bounded(web):
    base, requests = web
    for code in (404, 500):
        with pytest.raises(urllib.error.HTTPError, match=str(code)):
            _get(f"{base}/status/{code}")
    before = requests.count("/loop")
    with pytest.raises(urllib.error.HTTPError, match="redirect"):
        _get(f"{base}/loop")
    assert 1 < requests.count("/loop") - before <= 6
    for path in ("/big", "/big-stream"):
        with pytest.raises(Refused, match="over the 100000-byte cap"):
            _get(f"{base}{path}", max_bytes=100_000)
    body, _ = _get(f"{base}/big", max_bytes=BadWeb.BIG)  # exactly at the cap: allowed
    assert len(body) == BadWeb.BIG
    start = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError), match="timed out"):
        _get(f"{base}/slow", timeout=0.5)
    with pytest.raises(TimeoutError, match="timed out"):  # bytes keep coming: only the total deadline stops it
        _get(f"{base}/drip", timeout=0.5)
    assert time.monotonic() - start < 5.0  # without the caps the drip alone takes 60 s


# -- keys and texts ------------------------------------------------------------------------------

HOSTILE_KEYS = ["../x", "../../etc/passwd", "/abs/path", "a/b/c", "a.b.c", ".hidden", "..", ".",
                "C:\\win\\x", "k\x00nul", "caf\u00e9\u65e5\u672c", "x" * 1000, "-rf", " sp ace "]


def test_safe_key_makes_plain_unique_enough_stems():
    for key in HOSTILE_KEYS:
        stem = safe_key(key)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", stem), (key, stem)
    assert safe_key("000123") == "000123" and safe_key("web_000123") == "web_000123"  # ordinary keys unchanged
    long_a, long_b = "y" * 500 + "a", "y" * 500 + "b"
    assert safe_key(long_a) != safe_key(long_b) and len(safe_key(long_a)) == 128
    with pytest.raises(CapfiltError, match="empty key"):
        safe_key("")


def _staging_row(key, status):
    from tests.fixtures_bad_input import encode
    from PIL import Image

    ok = status == "kept"
    return dict(key=key, url=f"http://127.0.0.1/{len(key)}.jpg", web_text=f"alt {key}",
                image=encode(Image.new("RGB", (4, 4), RED), "JPEG") if ok else None, width=4 if ok else None,
                height=4 if ok else None, source_shard="00000", captions=[], web_itm=0.9 if ok else None,
                caption_itm=[], status=status, error=None if ok else "download: HTTP Error 404",
                kept_texts=["a text"] if ok else [], kept_origins=["web"] if ok else [],
                kept_scores=[0.9] if ok else [], source_key=key, original_width=None, original_height=None)


def test_hostile_keys_never_leave_the_tar_or_break_grouping(tmp_path):
    from pipeline.schema import STAGING_SCHEMA
    from pipeline.sinks import finalize

    keys = ["../evil", "../../etc/passwd", "a/b/c", "x.y.z", ".hidden", "k" * 300]
    rows = [_staging_row(k, "kept") for k in keys] + [_staging_row("../../failed", "failed")]
    (tmp_path / "st").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, STAGING_SCHEMA), tmp_path / "st" / "a.parquet")
    m = finalize(str(tmp_path / "st"), str(tmp_path / "out"), rows_per_shard=10, params={}, inputs=[], models=[],
                 timings={})
    assert m["counts"]["kept"] == 6 and m["counts"]["failed"] == 1
    with tarfile.open(tmp_path / "out" / m["shards"][0]["tar"]) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")  # would raise on a path leaving the folder
    assert len(names) == 3 * len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,128}\.(jpg|txt|json)", n) for n in names), names
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(names)  # all in one flat folder
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil.jpg").exists()
    rejected = pq.read_table(tmp_path / "out" / m["rejected"][0]["parquet"]).to_pylist()
    assert rejected[0]["key"] == "../../failed"  # as data the key stays as it was


def test_clean_text_keeps_scripts_and_replaces_what_is_not_text():
    assert clean_text(TEXTS["rtl"]) == TEXTS["rtl"] and clean_text(TEXTS["emoji"]) == TEXTS["emoji"]
    assert clean_text("tab\there\nnew\r\nline\rx") == "tab\there\nnew\nline\nx"
    cleaned = clean_text(TEXTS["control"])
    assert cleaned == "a red  square [31m with  a bell  and  C1"
    bad = clean_text(INVALID_UTF8)
    assert "\ufffd" in bad and "a red" in bad and bad.encode("utf-8").decode("utf-8") == bad
    assert clean_text(None) == "" and clean_text("\ud800x") == " x"  # a lone surrogate cannot be UTF-8


def _invalid_utf8_string_column(values: list[bytes]) -> pa.Array:
    """A Parquet/Arrow *string* column holding bytes that are not UTF-8 (Arrow skips the check)."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_url_lists_with_invalid_utf8_and_control_characters_are_cleaned(tmp_path):
    from pipeline.download import _stage, read_url_list

    csv = tmp_path / "urls.csv"
    csv.write_bytes(b"url,caption,key\nhttp://127.0.0.1:1/a.jpg," + INVALID_UTF8 + b",k1\n"
                    b"http://127.0.0.1:1/b.jpg,\"red\x07 \x1b square\",k\xff2\n")
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg", "http://127.0.0.1:1/b.jpg"],
                             "caption": _invalid_utf8_string_column([INVALID_UTF8, b"red\x07 \x1b square"]),
                             "key": ["k1", "k\u00ff2"]}), tmp_path / "urls.parquet")
    for name, key in (("urls.csv", "k\ufffd2"), ("urls.parquet", "k\u00ff2")):
        table = read_url_list(str(tmp_path / name))
        staged, _ = _stage(table, [], str(tmp_path))
        rows = pq.read_table(staged).to_pylist()
        assert rows[0]["caption"] == clean_text(INVALID_UTF8) and "\ufffd" in rows[0]["caption"]
        assert rows[1]["caption"] == "red    square"
        assert rows[1]["source_key"] == key and rows[0]["source_key"] == "k1"


# -- YAML ---------------------------------------------------------------------------------------

def test_yaml_with_a_python_object_tag_is_refused_and_runs_nothing(tmp_path):
    from pipeline.config import load

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\n"
                    f"input: {{path: !!python/object/new:pathlib.Path ['{tmp_path}']}}\n")
    with pytest.raises(CapfiltError, match="not valid YAML.*python/object") as err:
        load(path, check_paths=False)
    assert "Traceback" not in str(err.value)
    assert not marker.exists()


# -- the bad-image corpus through Decode ---------------------------------------------------------

def _batch(images, texts=None):
    n = len(images)
    return {
        "key": np.array([f"k{i:02d}" for i in range(n)], dtype=object),
        "url": np.array([f"http://127.0.0.1/{i}" for i in range(n)], dtype=object),
        "web_text": np.array(texts or ["a red square"] * n, dtype=object),
        "image": np.array(images, dtype=object),
        "source_shard": np.array(["00000"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
    }


def test_every_bad_image_fails_with_its_reason_and_every_odd_one_decodes():
    names = list(IMAGES)
    start = time.monotonic()
    out = Decode(32)(_batch([IMAGES[n][0] for n in names]))
    assert time.monotonic() - start < 10  # the bombs are refused from their headers, not decoded
    by_name = {n: i for i, n in enumerate(names)}
    for name, (_, expected) in IMAGES.items():
        reason = out["error"][by_name[name]]
        if expected is None:
            assert reason == "", (name, reason)
        else:
            assert reason.startswith("decode:") and expected.lower() in reason.lower(), (name, reason)
    assert "SVG is a vector image" in out["error"][by_name["svg"]]
    px = {n: out["pixels"][i].astype(int) for n, i in by_name.items()}
    red, blue, white = np.array(RED), np.array(BLUE), np.array([255, 255, 255])
    assert np.abs(px["one_pixel"] - red).max() <= 3
    assert np.abs(px["cmyk"][16, 16] - [255, 0, 0]).max() <= 8  # CMYK (0, 255, 255, 0) is red
    assert np.abs(px["webp"][16, 16] - red).max() <= 12
    assert np.abs(px["animated_gif"][16, 16] - red).max() <= 12  # the first frame, not the blue second
    assert np.abs(px["palette_transparent"][16, 4] - white).max() <= 3  # transparent half over white
    assert np.abs(px["palette_transparent"][16, 28] - blue).max() <= 3
    assert np.abs(px["sixteen_bit"][16, 16] - 128).max() <= 1  # scaled to 8 bits, not clipped to white
    i = by_name["exif_rotated"]
    assert (out["width"][i], out["height"][i]) == (20, 40)  # shown upright: portrait
    assert np.abs(px["exif_rotated"][4, 16] - red).max() <= 30 and np.abs(px["exif_rotated"][28, 16] - blue).max() <= 30


# -- the bad-text corpus through the filter and decide stages ------------------------------------

def test_bad_texts_flow_through_filter_and_decide(tmp_path, tiny_cfg, tiny_tokenizer):
    import torch

    from models.pretrain import BlipPretrain
    from pipeline.stages import Decide, FilterStage

    torch.manual_seed(0)
    BlipPretrain(tiny_cfg).save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    texts = list(TEXTS.values()) + [clean_text(INVALID_UTF8)]
    names = list(TEXTS) + ["invalid_utf8"]
    decoded = Decode(64)(_batch([IMAGES["webp"][0]] * len(texts), texts))
    scored = FilterStage([str(tmp_path / "ckpt")], 64, device="cpu")(decoded)
    table = Decide("filter_only", 0.0)(scored)  # threshold 0: every scored text is kept
    rows = dict(zip(names, table.to_pylist()))
    for name in ("empty", "whitespace"):
        assert rows[name]["web_itm"] is None and rows[name]["status"] == "dropped"
    for name in ("long", "control", "rtl", "emoji", "invalid_utf8"):
        assert 0.0 <= rows[name]["web_itm"] <= 1.0 and rows[name]["status"] == "kept", name
        assert rows[name]["kept_texts"] == [rows[name]["web_text"]]
    assert rows["long"]["web_text"] == TEXTS["long"] and len(rows["long"]["web_text"]) == 10_000
    assert rows["rtl"]["kept_texts"] == [TEXTS["rtl"]] and rows["emoji"]["kept_texts"] == [TEXTS["emoji"]]
    # the table writes and reads back as Parquet, every text intact
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert pq.read_table(io.BytesIO(buf.getvalue())).column("web_text").to_pylist() == texts
