"""Hardening end to end: a URL list of bad URLs, bad images and bad texts (served on 127.0.0.1)
through `pipeline.run.run`; and a captioner actor killed by PID mid-run. Every input row ends
exactly once in the shards or in rejected/, and the counts reconcile."""
from __future__ import annotations

import os
import re
import signal
import tarfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.pretrain import BlipPretrain
from pipeline.config import RunConfig, build
from pipeline.run import run
from pipeline.safety import clean_text
from demo.world import SynthConfig, generate, serve_folder, url_list
from tests.fixtures_bad_input import INVALID_UTF8, TEXTS, bad_web
from tests.processes import our_pids

BAD_IMAGES = {"html": "not an image", "svg": "SVG", "text": "not an image", "zero_byte": "empty body",
              "truncated": "truncated", "corrupt": "Image decoding error", "bomb": "pixels", "huge": "pixels"}
ODD_IMAGES = ["cmyk", "palette_transparent", "sixteen_bit", "animated_gif", "exif_rotated", "webp", "one_pixel"]
BAD_URLS = {"/status/404": "HTTP Error 404", "/status/500": "HTTP Error 500", "/slow": "timed out",
            "/loop": "redirect", "file:///etc/hostname": "refused: scheme file",
            "ftp://127.0.0.1:{port}/a.jpg": "refused: scheme ftp", "gopher://127.0.0.1:{port}/_": "refused: scheme gopher",
            "data:image/png;base64,iVBORw0KGgo=": "refused: scheme data"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    model = BlipPretrain(tiny_cfg)
    with torch.no_grad():  # a random ITM head scores near 0.5: widen it so texts land on both sides of tau
        model.itm_head.weight.mul_(200.0)
    folder = tmp_path_factory.mktemp("models") / "pretrain"
    model.save_pretrained(folder, tokenizer=tiny_tokenizer)
    return str(folder)


def _config(input_path, out, checkpoint, **overrides):
    values = {
        "input": {"path": str(input_path)}, "output": str(out), "image_size": 64,
        "captioner": {"checkpoint": checkpoint, "max_length": 12},
        "filter": {"checkpoints": [checkpoint], "threshold": 0.5},
        "compute": {"batch_size": 8, "rows_per_block": 8, "rows_per_shard": 30},
        "download": {"image_size": 64, "timeout": 1, "shard_size": 20, "allow_hosts": ["127.0.0.1"]},
    }
    for section, value in overrides.items():
        values[section] = {**values.get(section, {}), **value} if isinstance(value, dict) else value
    return build(RunConfig, values, "test")


@pytest.fixture(scope="module")
def bad_list(tmp_path_factory):
    """16 synthetic web images (7 of them with bad texts), 8 bad images, 7 odd valid ones, 8 bad URLs."""
    root = tmp_path_factory.mktemp("badweb")
    generate(root / "world", SynthConfig(seed=5, web=16, human=0, test=0))
    with serve_folder(root / "world" / "web") as good_base, bad_web() as (base, _):
        port = base.rsplit(":", 1)[1]
        web = url_list(root / "world", good_base).to_pylist()
        texts = [t.encode() for t in TEXTS.values()] + [INVALID_UTF8]
        captions = [t for t in texts] + [r["caption"].encode() for r in web[len(texts):]]
        expected = {}  # url -> reason fragment for failed rows, None for rows that must not fail
        for r, caption in zip(web, captions):
            r["caption"] = caption
            expected[r["url"]] = None
        rows = web
        for name, reason in BAD_IMAGES.items():
            rows.append({"url": f"{base}/img/{name}", "caption": b"a bad image", "key": f"bad_{name}"})
            expected[rows[-1]["url"]] = reason
        for name in ODD_IMAGES:
            rows.append({"url": f"{base}/img/{name}", "caption": b"a red square", "key": f"odd_{name}"})
            expected[rows[-1]["url"]] = None
        for spec, reason in BAD_URLS.items():
            url = spec.format(port=port) if "://" in spec or spec.startswith("data:") else f"{base}{spec}"
            rows.append({"url": url, "caption": b"a bad url", "key": f"url_{len(expected)}"})
            expected[url] = reason
        table = pa.table({"url": [r["url"] for r in rows], "key": [r["key"] for r in rows],
                          # a *string* column holding invalid UTF-8, as a careless writer leaves it
                          "caption": pa.array([r["caption"] for r in rows], pa.binary()).view(pa.string())})
        pq.write_table(table, root / "urls.parquet")
        yield root / "urls.parquet", expected


def _outputs(out: Path):
    shards = sorted(out.glob("shards/*.parquet"))
    kept = pq.read_table(shards).to_pylist() if shards else []
    rejected = pq.read_table(sorted(out.glob("rejected/*.parquet"))).to_pylist()
    return kept, rejected


@pytest.fixture(scope="module")
def bad_run(ray_local, bad_list, checkpoint, tmp_path_factory):
    path, expected = bad_list
    out = tmp_path_factory.mktemp("badrun") / "out"
    manifest = run(_config(path, out, checkpoint))
    return out, manifest, expected


def test_bad_input_run_never_crashes_and_reconciles(bad_run):
    out, manifest, expected = bad_run
    counts = manifest["counts"]
    # the odd images are red squares in many formats: near copies of each other, sent to rejected/
    assert counts["duplicates"] > 0
    assert counts["rows_in"] == len(expected) == (counts["kept"] + counts["dropped"] + counts["failed"]
                                                  + counts["duplicates"])
    kept, rejected = _outputs(out)
    urls = [r["url"] for r in kept + rejected]
    assert sorted(urls) == sorted(expected)  # every input row exactly once
    by_url = {r["url"]: r for r in rejected}
    for url, reason in expected.items():
        if reason is None:
            assert url not in by_url or by_url[url]["status"] in ("dropped", "duplicate"), (url, by_url.get(url))
        else:
            row = by_url[url]
            assert row["status"] == "failed" and reason in row["reason"] and row["error"], (url, row)
    assert counts["failed"] == sum(r is not None for r in expected.values())


def test_bad_texts_arrive_clean_and_whole(bad_run):
    out, _, _ = bad_run
    kept, rejected = _outputs(out)
    texts = {r["web_text"] for r in kept + rejected}
    assert clean_text(INVALID_UTF8) in texts  # undecodable bytes became U+FFFD
    assert clean_text(TEXTS["control"]) in texts and TEXTS["control"] not in texts
    for name in ("long", "rtl", "emoji"):
        assert TEXTS[name] in texts, name
    assert all(t == clean_text(t) for t in texts)


def test_tar_members_are_plain_names(bad_run):
    out, _, _ = bad_run
    for tar_path in out.glob("shards/*.tar"):
        with tarfile.open(tar_path) as tar:
            assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.(jpg|png|txt|json)", n) for n in tar.getnames())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped


def _staged_rows(staging: Path) -> int:
    rows = 0
    for f in staging.glob("*.parquet") if staging.exists() else []:
        try:
            rows += pq.ParquetFile(f).metadata.num_rows
        except Exception:  # still being written
            pass
    return rows


def test_a_captioner_actor_killed_mid_run_loses_no_row(bad_run, checkpoint, tmp_path):
    """The shards the bad-input run downloaded, captioned again; the fused captioner+filter actor is
    killed by PID once some rows are staged. Ray Data restarts it and retries its batches."""
    first_out, first, _ = bad_run
    out = tmp_path / "out"
    config = _config(first_out / ".capfilt" / "download", out, checkpoint, compute={"batch_size": 2, "rows_per_block": 2},
                     captioner={"num_captions": 3, "max_length": 20})
    killed: list[tuple[int, int]] = []
    done = threading.Event()

    def killer():
        while not done.is_set() and not killed:
            staged = _staged_rows(out / ".capfilt" / "staging")
            pids = our_pids("CapFiltStage") if staged >= 2 else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], staged))
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        manifest = run(config)
    finally:
        done.set()
        thread.join()
    assert killed, "no captioner actor was found to kill"
    pid, staged = killed[0]
    assert staged < first["counts"]["rows_in"], "the kill came after every row was staged"
    counts = manifest["counts"]
    assert counts["rows_in"] == first["counts"]["rows_in"] == (counts["kept"] + counts["dropped"] + counts["failed"]
                                                               + counts["duplicates"])
    assert counts["failed"] == first["counts"]["failed"]
    assert not _alive(pid)  # the actor really died
    kept, rejected = _outputs(out)
    keys = [r["key"] for r in kept + rejected]
    assert len(keys) == len(set(keys)) == counts["rows_in"]  # no row lost, none twice
    assert all(len(r["captions"]) == 3 for r in kept + [r for r in rejected if r["status"] == "dropped"])
