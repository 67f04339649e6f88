"""The download stage: a URL list in, img2dataset's WebDataset shards out.

img2dataset does the fetching and resizing. Output, per shard: `{shard:05d}.tar` (KEY.jpg, KEY.txt,
KEY.json), `{shard:05d}.parquet` (one row per input row: status, error_message, sizes, sha256, our
columns) and `{shard:05d}_stats.json`, written last.

Keys: img2dataset names samples with its own key (shard index * 10^k + row), which is stable for
a given URL list and shard size and is what the tars and Ray's read_webdataset use; it is the
`key` of the data contract. A `key` column of the URL list (ours, e.g. the synthetic world's
`web_000123`) travels beside it as `source_key` in the parquet and in each KEY.json: img2dataset
writes its own `key` field, so ours has to change name to survive.

Untrusted URLs (pipeline/safety.py): img2dataset's own fetch is swapped, inside its download
processes, for a guarded one: only http(s); the address is checked when each connection opens
(first request and every redirect) and loopback, private, link-local (169.254/16, cloud metadata),
multicast and reserved addresses are refused unless `allow_hosts` names them; at most 5 redirects;
the body is capped at `max_bytes` and the whole fetch at `timeout` seconds; an image whose header
claims more than `max_pixels` is refused before anything decodes it, a JPEG cut short or a body
that is HTML, SVG or text fails with that reason, and images img2dataset's decoder (cv2) would
read wrongly (EXIF-rotated, 16-bit, GIF, ...) reach it as PNG. A refused URL is a
`failed_to_download` row whose reason starts with "refused: ". Text columns are made valid UTF-8
without control characters before img2dataset sees them.

Politeness (pipeline/polite.py): each fetch waits for a slot of its host (at most
`host_concurrency` in flight, starts at most `host_rate` per second, per download process), and a
429 or 503 answer is retried after its Retry-After (or a doubling backoff), the whole host waiting,
up to `busy_retries` times; then the row fails with the answer and why it was not retried.
"""
from __future__ import annotations

import os

# albumentations (imported by img2dataset) asks the network for updates on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import functools
import importlib
import io
import json
import logging
import signal
import tempfile
import threading
import time
import urllib.error
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import CapfiltError
from pipeline.decode import ACCEPTED_FORMATS, MAX_PIXELS, to_rgb  # raster formats only: PIL hands EPS to Ghostscript
from pipeline import polite
from pipeline.polite import Politeness
from pipeline.safety import AddressPolicy, Refused, clean_texts, fetch, sniff_markup

log = logging.getLogger(__name__)
SOURCE_KEY = "source_key"
# Columns img2dataset writes itself: a URL-list column of the same name would be overwritten.
_RESERVED = {"key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256", "exif"}
MAX_BYTES = 32 << 20        # body cap per URL
# the download's other defaults, written once (the run config's download section takes them too)
PROCESSES, THREADS, TIMEOUT, SHARD_SIZE = 1, 16, 10, 10_000
# Only public addresses by default: loopback, private, link-local, multicast and reserved ones
# must be named in `allow_hosts` (download.allow_hosts in a run config; the demo allows 127.0.0.1).
DEFAULT_ALLOW_HOSTS: tuple[str, ...] = ()


@dataclass(frozen=True)
class DownloadStats:
    """Totals over the shards' `_stats.json` files."""
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    shards: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error message -> rows

    @property
    def failed(self) -> int:
        return self.failed_to_download + self.failed_to_resize


def read_stats(output_folder: str) -> DownloadStats:
    fs, root = fsspec.core.url_to_fs(output_folder)
    total: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    files = sorted(fs.glob(root.rstrip("/") + "/*_stats.json"))
    for f in files:
        with fs.open(f, "r") as fh:
            s = json.load(fh)
        total.update({k: s[k] for k in ("count", "successes", "failed_to_download", "failed_to_resize")})
        errors.update({k: v for k, v in s.get("status_dict", {}).items() if k != "success"})
    return DownloadStats(shards=len(files), errors=dict(errors), **total)


def read_url_list(path: str) -> pa.Table:
    """A URL list as a table (Parquet file or folder, or CSV/TSV), checked for what we need."""
    fs, p = fsspec.core.url_to_fs(str(path))
    if not fs.exists(p):
        raise CapfiltError(f"URL list {path} does not exist")
    try:
        if p.endswith((".csv", ".tsv")):
            with fs.open(p, "rb") as fh:
                delim = "\t" if p.endswith(".tsv") else ","
                table = pacsv.read_csv(fh, parse_options=pacsv.ParseOptions(delimiter=delim),
                                       convert_options=pacsv.ConvertOptions(check_utf8=False))
        else:
            table = pq.read_table(p, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise CapfiltError(f"cannot read URL list {path} as Parquet or CSV: {err}") from err
    if "url" not in table.column_names:
        raise CapfiltError(f"URL list {path} has no 'url' column (columns: {', '.join(table.column_names) or 'none'})")
    if table.num_rows == 0:
        raise CapfiltError(f"URL list {path} has no rows")
    return table


def _stage(table: pa.Table, extra_columns: Sequence[str], folder: str) -> tuple[str, list[str]]:
    """Write the list img2dataset will read: url, caption, our key as source_key, extra columns."""
    missing = [c for c in extra_columns if c not in table.column_names]
    if missing:
        raise CapfiltError(f"URL list has no column(s) {', '.join(missing)} to keep")
    clash = sorted(set(extra_columns) & (_RESERVED | {SOURCE_KEY, "url", "caption"}))
    if clash:
        raise CapfiltError(f"cannot keep column(s) {', '.join(clash)}: img2dataset writes its own; rename them in the URL list")
    cols = {"url": _text(table.column("url"))}
    if "caption" in table.column_names:
        cols["caption"] = _text(table.column("caption"))
    if "key" in table.column_names:
        cols[SOURCE_KEY] = _text(table.column("key"))
    cols.update({c: table.column(c) for c in extra_columns})
    path = str(Path(folder) / "url_list.parquet")
    pq.write_table(pa.table(cols), path)
    keep = [c for c in cols if c not in ("url", "caption")]
    return path, keep


def _text(column: pa.ChunkedArray) -> pa.Array:
    """A web text column as valid UTF-8 with no control characters (pipeline.safety.clean_text):
    read as bytes, since a string column may hold invalid UTF-8 that Python cannot decode."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    elif not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        column = column.cast(pa.string())
    return pa.array(clean_texts(column.to_pylist()), pa.string())


_PLAIN = ("JPEG", "PNG", "WEBP")  # what img2dataset's decoder (cv2) reads as it is shown


def _inspect(data: bytes, max_pixels: int) -> tuple[bytes | None, str | None]:
    """Check a downloaded body before img2dataset's decoder (cv2) sees it: (bytes to hand on, reason).

    Refused: no bytes, a header claiming over `max_pixels` (decompression bombs: nothing decodes
    them), a JPEG cut short (cv2 would fill the missing part with grey), markup or text. Bodies cv2
    would read wrongly are handed on as PNG made by `pipeline.decode.to_rgb`: EXIF-rotated ones
    (cv2 ignores the orientation), 16-bit and float ones, GIF/BMP/TIFF (first frame). Anything PIL
    does not know is left to img2dataset's decoder to judge.
    """
    if not data:
        return None, "empty body (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = image.size
    except Image.DecompressionBombError as err:
        return None, f"refused: image over {max_pixels} pixels (decompression bomb): {err}"
    except UnidentifiedImageError:  # not an image PIL reads: say what it is, or let img2dataset's decoder judge it
        kind = sniff_markup(data)
        return (None, f"not an image: the body is {kind}") if kind else (data, None)
    except Exception as err:  # a known format, broken in its header
        return None, f"decode: {type(err).__name__}: {' '.join(str(err).split())}"
    if width * height > max_pixels:
        return None, f"refused: image {width}x{height} is over {max_pixels} pixels (decompression bomb guard)"
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    odd = image.format not in _PLAIN or image.mode.startswith("I") or image.mode == "F" or orientation not in (1, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if not odd:
                if image.format == "JPEG":  # at 1/8 scale: cheap, and it reads the whole stream
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                return data, None  # a broken PNG or WebP: cv2 says so itself
            image.load()
            buf = io.BytesIO()
            to_rgb(ImageOps.exif_transpose(image)).save(buf, "PNG", compress_level=1)
            return buf.getvalue(), None
    except Exception as err:
        return None, f"decode: {type(err).__name__}: {' '.join(str(err).split())}"


def _fetch_image(row, timeout, retries, user_agent_token, disallowed_header_directives, *, policy: AddressPolicy,
                 max_bytes: int, max_pixels: int, politeness: Politeness = Politeness()):
    """img2dataset's download_image_with_retry, guarded and polite: (key, BytesIO or None, reason or None).

    `retries` (img2dataset's) covers timeouts, dropped connections and 5xx answers; busy answers
    (429, 503) have their own bound, `politeness.busy_retries`."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        host = policy.check_url(str(url))[0]
    except Refused as err:  # refused before it waits for a slot of its host
        return key, None, str(err)
    hosts = polite.limiter(politeness)
    reason, failures, busy = None, 0, 0
    while failures <= retries:
        try:
            with hosts.slot(host):
                data, headers = fetch(str(url), policy=policy, timeout=timeout, max_bytes=max_bytes,
                                      headers={"User-Agent": agent})
        except Refused as err:  # the same answer every time: no retry
            return key, None, str(err)
        except urllib.error.HTTPError as err:
            reason = " ".join(str(err).split())  # a redirect loop's message spans lines
            try:
                wait = politeness.busy_wait(err.code, err.headers, busy)
            except polite.GiveUp as why:
                return key, None, f"{reason}: {why}"
            if wait is not None:  # a busy host: it waits, then this row tries again
                hosts.pause(host, wait)
                busy += 1
                continue
            if 400 <= err.code < 500:
                return key, None, reason
            failures += 1
            continue
        except Exception as err:  # noqa: BLE001 - any failure is this row's, with its reason
            reason = " ".join(str(err).split()) or type(err).__name__
            failures += 1
            continue
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return key, None, "Use of image disallowed by X-Robots-Tag directive"
        data, reason = _inspect(data, max_pixels)
        if data is None:
            return key, None, reason
        return key, io.BytesIO(data), None
    return key, None, reason


class _Guarded:
    """img2dataset's Downloader with its fetch swapped for `_fetch_image`. Pickled into each download
    process (img2dataset spawns them), where it swaps the fetch for the shard it runs."""

    _swap = threading.Lock()

    def __init__(self, inner, policy: AddressPolicy, max_bytes: int, max_pixels: int, politeness: Politeness):
        self.inner, self.policy, self.max_bytes, self.max_pixels = inner, policy, max_bytes, max_pixels
        self.politeness = politeness

    def __call__(self, row):
        from img2dataset import downloader as i2d

        with self._swap:
            real = i2d.download_image_with_retry
            i2d.download_image_with_retry = functools.partial(
                _fetch_image, policy=self.policy, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                politeness=self.politeness)
            try:
                return self.inner(row)
            finally:
                i2d.download_image_with_retry = real


_ONE_DOWNLOAD = threading.Lock()  # img2dataset's Downloader is swapped module-wide while one runs


@contextmanager
def _guarded(policy: AddressPolicy, max_bytes: int, max_pixels: int, politeness: Politeness) -> Iterator[None]:
    # the module, not the package's `main` attribute (a function of that name)
    i2d_main = importlib.import_module("img2dataset.main")
    real = i2d_main.Downloader
    with _ONE_DOWNLOAD:
        i2d_main.Downloader = lambda **kw: _Guarded(real(**kw), policy, max_bytes, max_pixels, politeness)
        try:
            yield
        finally:
            i2d_main.Downloader = real


@contextmanager
def _signal_safe() -> Iterator[None]:
    # img2dataset installs a SIGINT handler, which Python allows only on the main thread; from any
    # other thread (an orchestrator's worker) skip it rather than fail.
    if threading.current_thread() is threading.main_thread():
        yield
        return
    i2d_main = importlib.import_module("img2dataset.main")  # the package's `main` attribute is a function of that name
    real = i2d_main.signal
    i2d_main.signal = SimpleNamespace(signal=lambda *a: None, SIGINT=signal.SIGINT)
    try:
        yield
    finally:
        i2d_main.signal = real


def download(url_list: str | Path, output_folder: str | Path, *, image_size: int = 64, resize_mode: str = "border",
             processes: int = PROCESSES, threads: int = THREADS, timeout: float = TIMEOUT, retries: int = 0,
             shard_size: int = SHARD_SIZE,
             encode_quality: int = 95, extra_columns: Sequence[str] = (), distributor: str = "multiprocessing",
             allow_hosts: Sequence[str] | None = None, max_bytes: int = MAX_BYTES,
             max_pixels: int = MAX_PIXELS, politeness: Politeness | None = None) -> DownloadStats:
    """Download every URL of `url_list` into WebDataset shards under `output_folder` (local or fsspec URL).

    Incremental: shards that already have their `_stats.json` are skipped, so a killed download
    resumes by running it again with the same list and shard size. Every input row ends in the
    shards' parquet with a status (`success`, `failed_to_download`, `failed_to_resize`) and, on
    failure, the reason; the totals must add up to the rows in, or this raises.

    `allow_hosts`: host names, addresses and networks (CIDR) that may be reached although they are
    not public internet addresses; None and () allow only public addresses. `timeout` bounds each URL's whole fetch (connects, redirects and body; the name
    lookup aside), `max_bytes` its body, `max_pixels` the size its image header may claim.
    `politeness`: per-host limits and the retries of busy answers (pipeline/polite.py; None: its defaults).
    """
    table = read_url_list(str(url_list))
    if shard_size < 1 or processes < 1 or threads < 1 or timeout <= 0 or max_bytes < 1 or max_pixels < 1:
        raise CapfiltError("shard size, processes, threads, max_bytes and max_pixels must be >= 1 and the timeout > 0")
    policy = AddressPolicy(tuple(DEFAULT_ALLOW_HOSTS if allow_hosts is None else allow_hosts))
    politeness = (politeness or Politeness()).check("politeness")
    from img2dataset import download as i2d_download  # heavy (cv2, albumentations, wandb): only when used

    out = str(output_folder)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capfilt-urls-") as tmp, _signal_safe(), \
            _guarded(policy, max_bytes, max_pixels, politeness):
        staged, keep = _stage(table, extra_columns, tmp)
        i2d_download(
            url_list=staged, input_format="parquet", output_folder=out, output_format="webdataset",
            url_col="url", caption_col="caption" if "caption" in table.column_names else None,
            save_additional_columns=keep or None, image_size=image_size, resize_mode=resize_mode,
            encode_quality=encode_quality, processes_count=processes, thread_count=threads,
            timeout=timeout, retries=retries, number_sample_per_shard=shard_size, distributor=distributor,
            incremental_mode="incremental",
            enable_wandb=False,  # wandb would call home
            extract_exif=False,  # web EXIF can carry camera serials and GPS: not ours to ship
        )
    stats = read_stats(out)
    log.info("downloaded %d of %d rows into %d shard(s) at %s in %.1f s (%d failed)", stats.successes,
             table.num_rows, stats.shards, out, time.perf_counter() - t0, stats.failed)
    if stats.count != table.num_rows:
        raise CapfiltError(
            f"{out} accounts for {stats.count} of the URL list's {table.num_rows} rows: some shards failed, or the folder "
            "holds another list's shards. Run the same command again to resume, or use an empty output folder.")
    return stats
