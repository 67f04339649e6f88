"""A published dataset is exactly what its config says (end to end on local Ray, tiny models, a
synthetic web on 127.0.0.1): work is resumed or reused only under the same run identity, a
changed input is a new identity, and a row's captions depend on its key alone, so a run killed
and resumed writes what an uninterrupted one writes."""
from __future__ import annotations

import hashlib
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.errors import CapfiltError
from pipeline.run import run
from tests.fixtures_run import ROWS, config, kill_driver, outputs, run_checkpoint, staged_rows, web  # noqa: F401


def _published(out) -> dict:
    """Everything a reader of the dataset sees: the rows (every column) and the files' checksums."""
    kept, rejected = outputs(out)
    m = __import__("json").loads((out / "manifest.json").read_text())
    # repeats_dropped is the run's history, not its data: how many rows a killed run had staged
    # that the resumed one staged again (finalize keeps one copy of each)
    counts = {k: v for k, v in m["counts"].items() if k != "repeats_dropped"}
    return {"kept": kept, "rejected": rejected, "counts": counts,
            "files": [(s["name"], s["parquet_sha256"], s["tar_sha256"]) for s in m["shards"]]
            + [(r["name"], r["sha256"]) for r in m["rejected"]], "blip": m["exports"]["blip_json"]["sha256"]}


def test_a_url_list_changed_in_place_is_another_identity(ray_local, web, run_checkpoint, tmp_path):
    _, urls, _ = web
    listed = tmp_path / "urls.parquet"
    table = pq.read_table(urls).slice(0, 8)
    pq.write_table(table, listed)
    out = tmp_path / "out"
    cfg = config(listed, out, run_checkpoint, mode="filter_only")
    first = run(cfg)
    assert first["inputs"] == [{"url_list": str(listed), "sha256": hashlib.sha256(listed.read_bytes()).hexdigest(),
                                "bytes": listed.stat().st_size}]
    assert len(first["derived"]["download"]) == 1  # the download's shards: derived from the input, listed apart
    assert run(cfg) == first  # the same identity: nothing to do

    url = table.column("url").to_pylist()
    url[0] = url[0].rsplit("/", 1)[0] + "/gone.jpg"
    changed = table.set_column(table.column_names.index("caption"), "caption",
                               pa.array([f"changed caption {i}" for i in range(len(table))]))
    pq.write_table(changed.set_column(table.column_names.index("url"), "url", pa.array(url)), listed)  # in place
    with pytest.raises(CapfiltError) as err:
        run(cfg)
    message = str(err.value)
    assert "finished dataset" in message and f"input {listed} changed in place (sha256" in message
    assert "--restart" in message

    second = run(cfg, restart=True)
    kept, rejected = outputs(out)
    rows = {r["source_key"]: r for r in kept + rejected}
    keys = table.column("key").to_pylist()
    assert sorted(rows) == sorted(keys) and second["inputs"][0]["sha256"] != first["inputs"][0]["sha256"]
    assert all(rows[k]["web_text"] == f"changed caption {i}" for i, k in enumerate(keys))  # downloaded again
    assert rows[keys[0]]["status"] == "failed" and "404" in rows[keys[0]]["reason"]


def test_captions_do_not_depend_on_batching(ray_local, web, run_checkpoint, tmp_path):
    """The same config and seed, batched two ways: the same bytes (fp32 on CPU: batch-invariant kernels)."""
    _, _, shards = web
    common = dict(captioner={"num_captions": 2}, seed=5)
    run(config(shards, tmp_path / "a", run_checkpoint, compute={"batch_size": 2, "rows_per_block": 3}, **common))
    run(config(shards, tmp_path / "b", run_checkpoint, compute={"batch_size": 7, "rows_per_block": 12}, **common))
    a, b = _published(tmp_path / "a"), _published(tmp_path / "b")
    assert [r["captions"] for r in a["kept"] + a["rejected"]] == [r["captions"] for r in b["kept"] + b["rejected"]]
    assert a == b


def _random_config(rng: random.Random) -> dict:
    return dict(mode=rng.choice(["capfilt", "capfilt", "caption_only"]), seed=rng.randrange(1000),
                captioner={"num_captions": rng.choice([1, 2]), "top_p": rng.choice([0.5, 0.9, 1.0])},
                filter={"threshold": rng.choice([0.45, 0.5, 0.55]), "max_texts": rng.choice([0, 1])})


@pytest.mark.parametrize("example", [0, 1])
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(ray_local, web, run_checkpoint, tmp_path, example):
    """Property, over random small configs: SIGKILL the driver at a random moment, rerun the same
    config: rows, captions, scores, decisions and the files' bytes equal those of an uninterrupted
    run batched otherwise. Example 0 reads the URL list with the two-pool layout and is killed at a
    random time (start-up, download or graph); example 1 reads shards and is killed once a random
    number of rows are staged, and its partial work also answers a run under another threshold:
    refused, with one message naming the change, and `restart` (on a copy of that partial work, so
    the resume above runs on the original) discards the old rows and redoes it."""
    rng = random.Random(22_000 + example)
    _, urls, shards = web
    source = urls if example == 0 else shards
    drawn = _random_config(rng)
    compute = {"batch_size": rng.choice([2, 3]), "rows_per_block": rng.choice([2, 3]),
               "layout": "separate" if example == 0 else "fused"}
    run(config(source, tmp_path / "reference", run_checkpoint, **drawn,
               compute={"batch_size": rng.choice([5, 8]), "rows_per_block": rng.choice([6, 12])}))
    killed = config(source, tmp_path / "out", run_checkpoint, compute=compute, **drawn)
    if example == 0:
        staged = kill_driver(killed, tmp_path / "run.yaml", after=rng.uniform(3.0, 15.0))
    else:
        staged = kill_driver(killed, tmp_path / "run.yaml", staged=rng.randint(1, ROWS // 2))
        assert 0 < staged < ROWS, "the kill came too late to test resuming"
    assert not (tmp_path / "out" / "manifest.json").exists()
    if example == 1:
        threshold = drawn["filter"]["threshold"]
        other = {**drawn, "filter": {**drawn["filter"], "threshold": 0.0}}
        with pytest.raises(CapfiltError) as err:
            run(config(source, tmp_path / "out", run_checkpoint, compute=compute, **other))
        message = str(err.value)
        assert "partial work" in message and f"filter.threshold {threshold} -> 0.0" in message and "--restart" in message
        assert len(message.splitlines()) == 3  # the header, the one change, the ways out
        assert staged_rows(tmp_path / "out") >= staged  # refused before anything was touched
        shutil.copytree(tmp_path / "out", tmp_path / "restarted")  # the same partial work, for the restart below
    run(killed)
    assert _published(tmp_path / "out") == _published(tmp_path / "reference"), (drawn, compute, staged)
    if example == 1:
        restarted = tmp_path / "restarted"
        assert staged_rows(restarted) >= staged
        manifest = run(config(source, restarted, run_checkpoint, compute=compute, **other), restart=True)
        kept, rejected = outputs(restarted)  # the old run's rows are discarded, not mixed in
        assert manifest["params"]["filter"]["threshold"] == 0.0 and len(kept) + len(rejected) == ROWS
        assert not [r for r in rejected if r["status"] == "dropped"], "at 0.0 every scored text passes"
        assert not any(f"< {threshold}" in (r["reason"] or "") for r in rejected)
