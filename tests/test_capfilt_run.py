"""The CapFilt graph end to end on local Ray: a URL list served on 127.0.0.1 and img2dataset shards in,
cleaned shards, rejected rows and a manifest out. (A killed driver resuming: tests/test_run_identity.py.)"""
import glob
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from models.errors import CapfiltError
from models.pretrain import BlipPretrain
from pipeline.config import RunConfig, build
from pipeline.run import run
from demo.world import SynthConfig, generate, serve_folder, write_url_list

TAU = 0.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    model = BlipPretrain(tiny_cfg)
    with torch.no_grad():  # a random ITM head scores near 0.5: widen it so texts land on both sides of tau
        model.itm_head.weight.mul_(200.0)
    folder = tmp_path_factory.mktemp("models") / "pretrain"
    model.save_pretrained(folder, tokenizer=tiny_tokenizer)
    return str(folder)


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    """80 synthetic web images on 127.0.0.1, plus a 404 and an HTML page posing as a JPEG."""
    world = tmp_path_factory.mktemp("web") / "world"
    generate(world, SynthConfig(seed=11, web=80, human=0, test=0))
    (world / "web" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    with serve_folder(world / "web") as base:
        path = write_url_list(world, base, world / "urls.parquet")
        table = pq.read_table(path).to_pylist()
        table += [{**table[0], "key": "web_404", "url": f"{base}/missing.jpg"},
                  {**table[0], "key": "web_html", "url": f"{base}/broken.jpg"}]
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(table), path)
        yield str(path)


def _config(input_path, out, checkpoint, **overrides):
    values = {
        "input": {"path": input_path}, "output": str(out), "image_size": 64,
        "captioner": {"checkpoint": checkpoint, "max_length": 12},
        "filter": {"checkpoints": [checkpoint], "threshold": TAU},
        "compute": {"batch_size": 8, "rows_per_block": 8, "rows_per_shard": 30},
        "download": {"image_size": 64, "timeout": 5, "shard_size": 40, "allow_hosts": ["127.0.0.1"]},
    }
    for section, value in overrides.items():
        values[section] = {**values.get(section, {}), **value} if isinstance(value, dict) else value
    return build(RunConfig, values, "test")


def _outputs(out: Path):
    shards = sorted(out.glob("shards/*.parquet"))
    kept = pq.read_table(shards).to_pylist() if shards else []
    rejected = pq.read_table(sorted(out.glob("rejected/*.parquet"))).to_pylist()
    return kept, rejected


def test_url_list_run_writes_reconciled_outputs(ray_local, url_list, checkpoint, tmp_path):
    out = tmp_path / "out"
    manifest = run(_config(url_list, out, checkpoint))
    counts = manifest["counts"]
    assert counts["rows_in"] == 82 == counts["kept"] + counts["dropped"] + counts["failed"]
    # how many the random filter keeps depends on its weights; the decision itself is re-derived below
    assert counts["kept"] + counts["dropped"] == 80 and counts["failed"] == 2 and counts["kept"] > 0
    assert json.loads((out / "manifest.json").read_text())["counts"] == counts

    kept, rejected = _outputs(out)
    assert len(kept) == counts["kept"] and len(rejected) == counts["dropped"] + counts["failed"]
    keys = [r["key"] for r in kept] + [r["key"] for r in rejected]
    assert len(keys) == len(set(keys)) == 82  # every input row exactly once
    reasons = sorted(r["error"] for r in rejected if r["status"] == "failed")
    assert "404" in reasons[0] or "404" in reasons[1]
    assert all(r["error"] for r in rejected if r["status"] == "failed")
    assert "image" not in pq.read_schema(next(out.glob("rejected/*.parquet"))).names

    # the decision, checked by hand from the written scores
    for row in kept + [r for r in rejected if r["status"] == "dropped"]:
        web = [row["web_text"]] if row["web_itm"] is not None and row["web_itm"] >= TAU else []
        synthetic = [c for c, s in zip(row["captions"], row["caption_itm"]) if s >= TAU]
        expected = set(web) | set(synthetic)
        if row in kept:
            assert set(row["texts"]) == expected and expected
        else:
            assert not expected
    # WebDataset tars read as is
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("shards/*.tar")), shardshuffle=False))
    assert len(samples) == counts["kept"]
    by_url = {r["url"]: r for r in kept}
    for sample in samples:
        meta = json.loads(sample["json"])
        row = by_url[meta["url"]]
        assert sample["txt"].decode() == row["texts"][0]
        assert sample["jpg"][:2] == b"\xff\xd8"
        assert (meta["source_key"], meta["original_width"], meta["original_height"]) == \
            (row["source_key"], row["original_width"], row["original_height"])

    # lineage: the URL list's own key and the size as downloaded, in shards and rejected/
    listed = pq.read_table(url_list).to_pydict()
    key_of = dict(zip(listed["url"], listed["key"]))
    assert all(r["source_key"] == key_of[r["url"]] for r in kept + rejected)
    assert all(r["original_width"] == r["original_height"] == 64 for r in kept)  # the synthetic images' size
    assert all(r["original_width"] is None for r in rejected if r["status"] == "failed")
    # the manifest names the user's input; the download is derived, kept apart from the dataset's files
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"][0]["url_list"] == url_list and len(m["inputs"][0]["sha256"]) == 64
    assert all("/.capfilt/download/" in d["parquet"] for d in m["derived"]["download"])
    assert not (out / "_download").exists() and not (out / "_staging").exists()
    everything = pq.read_table(glob.glob(f"{out}/**/*.parquet", recursive=True), columns=["key"])
    assert everything.num_rows == 82  # a glob over the dataset finds each row once


@pytest.fixture(scope="module")
def filter_only_run(ray_local, url_list, checkpoint, tmp_path_factory):
    """One finished filter-only run of the URL list: (its folder, its manifest). The tests below
    only read it or rerun it unchanged (a no-op they check)."""
    out = tmp_path_factory.mktemp("filter_only") / "out"
    return out, run(_config(url_list, out, checkpoint, mode="filter_only"))  # downloads into out/.capfilt/download


def test_rerunning_a_finished_run_changes_nothing(ray_local, url_list, checkpoint, filter_only_run, tmp_path):
    out, first = filter_only_run
    assert not (out / ".capfilt" / "staging").exists()
    shard_bytes = {p.name: p.read_bytes() for p in out.glob("shards/*")}
    again = run(_config(url_list, out, checkpoint, mode="filter_only"))
    assert again == first and {p.name: p.read_bytes() for p in out.glob("shards/*")} == shard_bytes
    with pytest.raises(CapfiltError, match="filter.threshold 0.5 -> 0.9"):
        run(_config(url_list, out, checkpoint, mode="filter_only", filter={"threshold": 0.9}))
    retrained = tmp_path / "retrained"  # same path and parameters, new weights: not the same run
    shutil.copytree(checkpoint, retrained)
    run(_config(url_list, tmp_path / "out2", str(retrained), mode="filter_only"))
    model = BlipPretrain.from_pretrained(retrained)
    with torch.no_grad():
        model.itm_head.bias.add_(1.0)
    model.save_pretrained(retrained)
    with pytest.raises(CapfiltError, match="filter checkpoint .* holds other weights"):
        run(_config(url_list, tmp_path / "out2", str(retrained), mode="filter_only"))


def test_img2dataset_shards_in_filter_only_mode(ray_local, url_list, checkpoint, filter_only_run, tmp_path):
    first, _ = filter_only_run  # its download: first/.capfilt/download
    again = tmp_path / "again"
    manifest = run(_config(str(first / ".capfilt" / "download"), again, checkpoint, mode="filter_only"))
    assert manifest["counts"]["rows_in"] == 82 and manifest["counts"]["failed"] == 2
    kept, rejected = _outputs(again)
    assert all(r["captions"] == [] for r in kept + rejected)
    assert all(r["origins"] == ["web"] for r in kept)
    assert {r["key"] for r in kept} == {r["key"] for r in _outputs(first)[0]}  # same input, same decision


def test_an_itc_run_decides_by_itc_and_reports_itm_beside_it(ray_local, url_list, checkpoint, tmp_path):
    """`filter.scorer: itc` decides by the ITC cosine at its threshold; ITM, compared beside it,
    gets the scores a plain ITM run gives; the report holds both; the scorer is part of the identity."""
    itm_run = tmp_path / "itm"
    run(_config(url_list, itm_run, checkpoint, mode="filter_only"))
    shards = str(itm_run / ".capfilt" / "download")
    out = tmp_path / "itc"
    itc = {"scorer": "itc", "threshold": 0.0, "compare": {"itm": TAU}}  # random projections: cosines around 0
    manifest = run(_config(shards, out, checkpoint, mode="filter_only", filter=itc))
    assert manifest["scoring"] == {"scorer": "itc", "threshold": 0.0, "compare": {"itm": TAU}}
    kept, rejected = _outputs(out)
    assert kept and [r for r in rejected if r["status"] == "dropped"]
    for row in kept + [r for r in rejected if r["status"] == "dropped"]:
        assert (row in kept) == (row["web_itc"] is not None and row["web_itc"] >= 0.0)
    assert all(r["scores"] == [pytest.approx(r["web_itc"])] for r in kept)
    plain = {r["key"]: r["web_itm"] for r in sum(_outputs(itm_run), [])}
    assert {r["key"]: r["web_itm"] for r in kept + rejected} == plain
    figures = json.loads((out / "report" / "figures.json").read_text())
    assert list(figures["scorers"]) == ["itc", "itm"] and figures["scorers"]["itc"]["decides"]
    scored = sum(r["web_itm"] is not None for r in kept + rejected)  # the non-empty web texts of rows that did not fail
    assert figures["scorers"]["itm"]["web_scored"] == figures["scorers"]["itc"]["web_scored"] == scored > 0
    with pytest.raises(CapfiltError, match='filter.scorer "itc" -> "itm"'):
        run(_config(shards, out, checkpoint, mode="filter_only"))
