"""The download stage: real img2dataset over HTTP on 127.0.0.1, its shards reconciled row by row."""
from __future__ import annotations

import argparse
import io
import json
import socket
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.errors import CapfiltError
from pipeline.download import download, read_stats
from demo import cli as demo_cli
from demo.world import serve_folder, url_list
from tests.fixtures_web import SMALL, local_web, synth_world  # noqa: F401 - fixtures

SHARD = 10


@pytest.fixture(scope="module")
def fetched(synth_world: Path, local_web: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """The world's web plus a missing file and a slow URL, downloaded in shards of 10."""
    urls = url_list(synth_world, local_web)
    bad = pa.table({"url": [f"{local_web}/missing.jpg", f"{local_web}/slow/web_000000.jpg"],
                    "caption": ["gone", "too slow"], "key": ["missing", "slow"]})
    table = pa.concat_tables([urls, bad])
    list_path = tmp_path_factory.mktemp("lists") / "urls.parquet"
    pq.write_table(table, list_path)
    out = tmp_path_factory.mktemp("shards") / "web"
    stats = download(list_path, out, image_size=64, timeout=2, threads=8, shard_size=SHARD, allow_hosts=("127.0.0.1",))
    return table, list_path, out, stats


def _shard_rows(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_rows_reconcile_with_stats(fetched) -> None:
    table, _, out, stats = fetched
    n = table.num_rows
    assert stats.count == n == stats.successes + stats.failed
    assert (stats.successes, stats.failed, stats.shards) == (SMALL.web, 2, -(-n // SHARD))
    for stats_file in sorted(out.glob("*_stats.json")):
        shard = stats_file.name.split("_")[0]
        s = json.loads(stats_file.read_text())
        rows = pq.read_table(out / f"{shard}.parquet").to_pylist()
        samples = _tar_samples(out / f"{shard}.tar")
        ok = {r["key"] for r in rows if r["status"] == "success"}
        assert len(rows) == s["count"]
        assert len(ok) == s["successes"] == sum("jpg" in v for v in samples.values())
        assert set(samples) == ok
        assert s["count"] - s["successes"] == s["failed_to_download"] + s["failed_to_resize"]
    rows = _shard_rows(out)
    assert sorted(r["source_key"] for r in rows) == sorted(table.column("key").to_pylist())  # none lost, none twice


def test_missing_and_slow_urls_fail_with_reasons(fetched) -> None:
    _, _, out, stats = fetched
    failed = {r["source_key"]: r for r in _shard_rows(out) if r["status"] != "success"}
    assert set(failed) == {"missing", "slow"}
    assert failed["missing"]["status"] == "failed_to_download" and "404" in failed["missing"]["error_message"]
    assert failed["slow"]["status"] == "failed_to_download" and "timed out" in failed["slow"]["error_message"]
    assert sum(stats.errors.values()) == 2


def test_keys_captions_and_images_survive(fetched, synth_world: Path) -> None:  # noqa: F811
    table, _, out, _ = fetched
    caption_of = dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))
    for tar_path in sorted(out.glob("*.tar")):
        for key, sample in _tar_samples(tar_path).items():
            meta = json.loads(sample["json"])
            assert meta["key"] == key and "." not in key
            assert sample["txt"].decode() == caption_of[meta["source_key"]]
            img = Image.open(io.BytesIO(sample["jpg"]))
            assert img.size == (64, 64)
            assert meta["source_key"].startswith("web_")


def test_rerun_resumes_only_missing_shards(fetched) -> None:
    table, list_path, out, _ = fetched
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("00000*")}
    for p in out.glob("00001*"):  # as if killed while writing shard 1
        p.unlink()
    # From a worker thread, as an orchestrator would call it (img2dataset's SIGINT hook needs the main thread).
    done: list = []
    worker = threading.Thread(target=lambda: done.append(
        download(list_path, out, image_size=64, timeout=2, threads=8, shard_size=SHARD,
                                    allow_hosts=("127.0.0.1",))))
    worker.start()
    worker.join()
    stats = done[0]
    assert stats.count == table.num_rows and stats.successes == SMALL.web
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("00000*")} == before  # shard 0 untouched
    assert len(_shard_rows(out)) == table.num_rows


def test_url_list_mistakes_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CapfiltError, match="does not exist"):
        download(tmp_path / "nope.parquet", tmp_path / "out")
    pq.write_table(pa.table({"link": ["http://127.0.0.1:1/a.jpg"]}), tmp_path / "nourl.parquet")
    with pytest.raises(CapfiltError, match="no 'url' column"):
        download(tmp_path / "nourl.parquet", tmp_path / "out")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(CapfiltError, match="cannot read"):
        download(tmp_path / "junk.parquet", tmp_path / "out")
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "status": ["x"]}), tmp_path / "clash.parquet")
    with pytest.raises(CapfiltError, match="status"):
        download(tmp_path / "clash.parquet", tmp_path / "out", extra_columns=["status"])
    assert not (tmp_path / "out").exists()


def test_serve_folder_serves_files_on_loopback_and_stops(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with serve_folder(tmp_path) as base:
        assert urlparse(base).hostname == "127.0.0.1"
        assert urllib.request.urlopen(f"{base}/a.txt", timeout=5).read() == b"hello"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/b.txt", timeout=5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", urlparse(base).port), timeout=1)
    with pytest.raises(CapfiltError):
        with serve_folder(tmp_path / "missing"):
            pass


def test_synth_download_serves_a_synthetic_world_itself(synth_world: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    parser = argparse.ArgumentParser()
    demo_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth-download", str(synth_world), "--out", str(tmp_path / "s"),
                              "--timeout", "2", "--shard-size", "16"])
    assert args.func(args) == 0
    stats = read_stats(str(tmp_path / "s"))
    assert (stats.count, stats.successes, stats.shards) == (SMALL.web, SMALL.web, 3)
    assert f"{SMALL.web} downloaded, 0 failed" in capsys.readouterr().out
    port = urlparse(_shard_rows(tmp_path / "s")[0]["url"]).port
    with pytest.raises(OSError):  # the command stopped its server
        socket.create_connection(("127.0.0.1", port), timeout=1)
