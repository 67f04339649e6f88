"""Duplicates: exact copies (the same bytes) and near copies (re-encoded, resized, slightly cropped,
made here in code) go to rejected/ as `duplicate` with the key they copy, within a run and against
an earlier version; no row is lost and the counts reconcile. The index is checked against a
brute-force reference, the hash's reach against images made in code."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.errors import CapfiltError
from pipeline.config import validate
from pipeline.dedup import find
from pipeline.fingerprint import Fingerprint, distance
from pipeline.run import run
from tests.fixtures_dedup import COPIES, decoded, encode, photo, write_folder
from tests.fixtures_run import config, outputs, run_checkpoint  # noqa: F401  (fixtures)

SPEC = SimpleNamespace(exact=True, near=True, hash="dhash", hash_size=8, max_distance=8, against=[])
TAU = 0.5


def _brute_force(rows, spec, earlier):
    """The rule of pipeline/dedup.py by hand: rows in preference order, each compared with every
    row that stays so far (earlier versions' first), by sha256, then the nearest hash in reach."""
    stays = [(k, s, int(h, 16), v) for v, t in earlier for k, s, h in zip(t["key"], t["image_sha256"], t["image_hash"])]
    order = sorted((i for i, s in enumerate(rows["image_sha256"]) if s),
                   key=lambda i: (rows["status"][i] != "kept", -rows["pixels"][i], rows["key"][i]))
    found = {}
    for i in order:
        sha, h = rows["image_sha256"][i], int(rows["image_hash"][i], 16)
        same = [(k, v) for k, s, _, v in stays if s == sha]
        near = sorted(((bin(h ^ o).count("1"), n) for n, (_, _, o, _) in enumerate(stays)))
        if same:
            found[i] = (*same[0], "exact")
        elif near and near[0][0] <= spec.max_distance:
            d, n = near[0]
            found[i] = (stays[n][0], stays[n][3], f"near (hash distance {d})")
        else:
            stays.append((rows["key"][i], sha, h, None))
    return found


def test_the_banded_index_finds_what_comparing_every_pair_finds():
    rng = np.random.default_rng(0)
    n, bits = 400, 64
    hashes = [int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)) for _ in range(n // 2)]
    for _ in range(n - len(hashes)):  # copies of earlier hashes with 0..12 bits flipped
        h = hashes[int(rng.integers(0, len(hashes)))]
        for b in rng.choice(bits, int(rng.integers(0, 13)), replace=False):
            h ^= 1 << int(b)
        hashes.append(h)
    shas = [f"s{int(rng.integers(0, 350))}" for _ in range(n)]  # some exact copies, with unrelated hashes
    rows = {"key": [f"k{i:03d}" for i in range(n)], "status": list(rng.choice(["kept", "dropped"], n)),
            "image_sha256": shas, "image_hash": [f"{h:016x}" for h in hashes],
            "pixels": list(rng.choice([64 * 64, 128 * 128], n))}
    rows["image_sha256"][5] = rows["image_hash"][5] = None  # a failed row: no fingerprint, never a copy
    earlier = [("v1", {"key": ["old0", "old1"], "image_sha256": [shas[7], "x"], "image_hash": ["0" * 16, rows["image_hash"][9]]})]
    got = {i: (m.of, m.within, m.how) for i, m in find(rows, SPEC, earlier).items()}
    assert got == _brute_force(rows, SPEC, earlier)
    assert 100 < len(got) < n and 5 not in got and got[7][:2] == ("old0", "v1")
    assert find(rows, SimpleNamespace(**{**vars(SPEC), "exact": False, "near": False})) == {}


def test_copies_made_in_code_stay_within_reach_and_distinct_images_do_not():
    fp = Fingerprint()
    originals = [encode(photo(seed)) for seed in range(40)]
    hashes = [int(fp(b, decoded(b))[1], 16) for b in originals]
    apart = [distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(apart) > SPEC.max_distance  # 780 pairs of distinct images: none within reach
    for name, (make, _) in COPIES.items():
        reach = [distance(h, int(fp(c, decoded(c))[1], 16)) for h, c in zip(hashes, map(make, originals))]
        assert max(reach) <= SPEC.max_distance, (name, reach)


def _world(tmp_path, name, groups, distinct, failed=0, seed=0):
    """An input folder: for each (seed, copies) of `groups` an original and those copies, `distinct`
    images with no copy, and `failed` rows that did not download. Returns (path, {key: group})."""
    rows, group_of = [], {}
    for g, (s, copies) in enumerate(groups):
        original = encode(photo(s))
        rows.append({"key": f"{name}g{g}a", "caption": f"picture {s}", "jpg": original})  # first by key
        group_of[f"{name}g{g}a"] = g
        for c in copies:
            rows.append({"key": f"{name}g{g}{c}", "caption": f"picture {s}", "jpg": COPIES[c][0](original)})
            group_of[f"{name}g{g}{c}"] = g
    rows += [{"key": f"{name}d{i}", "caption": f"other {i}", "jpg": encode(photo(1000 + seed + i))} for i in range(distinct)]
    rows += [{"key": f"{name}f{i}", "caption": "lost", "jpg": None} for i in range(failed)]
    return write_folder(tmp_path / name, rows), group_of


def _config(path, out, checkpoint, **dedup):
    return config(path, out, checkpoint, mode="filter_only", filter={"threshold": TAU}, dedup=dedup)


def _everything(out):
    kept, rejected = outputs(out)
    return kept, rejected, {r["key"]: {"status": "kept", **r} for r in kept + rejected}


def _kept_by_score(r):
    return r["web_itm"] is not None and r["web_itm"] >= TAU


@pytest.fixture(scope="module")
def first(ray_local, tmp_path_factory, run_checkpoint):
    tmp = tmp_path_factory.mktemp("dedup")
    groups = [(1, list(COPIES)), (2, ["png", "half_size"]), (3, ["same_bytes", "cropped_2pct"])]
    path, group_of = _world(tmp, "a", groups, distinct=6, failed=1)
    out = tmp / "v1"
    return out, run(_config(path, out, run_checkpoint)), group_of


def test_a_run_sends_every_copy_to_rejected_with_the_key_it_copies(first):
    out, m, group_of = first
    c = m["counts"]
    kept, rejected, rows = _everything(out)
    assert len(rows) == len(kept) + len(rejected) == c["rows_in"] == 3 + 5 + 2 + 2 + 6 + 1  # every row once
    assert c["rows_in"] == c["kept"] + c["dropped"] + c["failed"] + c["duplicates"]
    assert (c["duplicates"], c["failed"], c["duplicates_within_run"]) == (9, 1, 9)
    copies = [r for r in rejected if r["status"] == "duplicate"]
    assert len(copies) == 9 and all(r["reason"] == "duplicate" and r["duplicate_in"] is None for r in copies)
    for g in range(3):
        members = [rows[k] for k, gg in group_of.items() if gg == g]
        stays = [r for r in members if r["status"] != "duplicate"]
        assert len(stays) == 1  # one copy stays, the others name it
        assert {r["duplicate_of"] for r in members if r["status"] == "duplicate"} == {stays[0]["key"]}
        # the copy that stays: a kept one if any would have been kept, then the larger image, then the key
        best = sorted(members, key=lambda r: (not _kept_by_score(r), -(r["width"] * r["height"]), r["key"]))[0]
        assert stays[0]["key"] == best["key"] and stays[0]["status"] == ("kept" if _kept_by_score(best) else "dropped")
    for r in copies:  # how each matched, from the two rows' own fingerprints
        of = rows[r["duplicate_of"]]
        d = distance(int(r["image_hash"], 16), int(of["image_hash"], 16))
        assert r["duplicate_match"] == ("exact" if r["image_sha256"] == of["image_sha256"] else f"near (hash distance {d})")
    assert {r["duplicate_match"] for r in copies} >= {"exact", "near (hash distance 0)"}  # same bytes; the PNG
    assert all(r["status"] in ("kept", "dropped", "failed") for k, r in rows.items() if k not in group_of)


def test_a_second_version_dedups_against_the_first(first, tmp_path, run_checkpoint):
    v1, _, _ = first
    kept1, rejected1, _ = _everything(v1)
    old = {r["key"]: r for r in kept1}
    dropped1 = [r["key"] for r in rejected1 if r["status"] == "dropped" and r["key"].startswith("ad")]
    # copies of two published images and of one that v1 dropped, beside new images
    rows = [{"key": "bnew0", "caption": "new", "jpg": encode(photo(500))},
            {"key": "bnew1", "caption": "new", "jpg": encode(photo(501))}]
    published = sorted(old)[:2]
    v1_bytes = {r["key"]: r["image"] for r in kept1}
    rows += [{"key": "bcopy0", "caption": "seen", "jpg": v1_bytes[published[0]]},
             {"key": "bcopy1", "caption": "seen", "jpg": COPIES["half_size"][0](v1_bytes[published[1]])}]
    if dropped1:  # the same image as a distinct one v1 dropped (_world made it from seed 1000 + i)
        rows.append({"key": "bagain", "caption": "dropped before", "jpg": encode(photo(1000 + int(dropped1[0][2:])))})
    path = write_folder(tmp_path / "b", rows)
    m = run(_config(path, tmp_path / "v2", run_checkpoint, against=[str(v1)]))
    c = m["counts"]
    kept, rejected, got = _everything(tmp_path / "v2")
    assert len(got) == c["rows_in"] == len(rows) == c["kept"] + c["dropped"] + c["failed"] + c["duplicates"]
    assert c["duplicates_of_earlier_versions"] == c["duplicates"] == 2
    assert (got["bcopy0"]["duplicate_of"], got["bcopy0"]["duplicate_in"], got["bcopy0"]["duplicate_match"]) == \
        (published[0], str(v1), "exact")
    assert (got["bcopy1"]["duplicate_of"], got["bcopy1"]["duplicate_in"]) == (published[1], str(v1))
    assert all(got[k]["status"] != "duplicate" for k in ("bnew0", "bnew1", "bagain") if k in got)  # v1 did not publish it


def test_an_earlier_version_that_is_no_dataset_is_one_clear_error_before_anything_runs(tmp_path, run_checkpoint):
    path, _ = _world(tmp_path, "c", [], distinct=1)
    cfg = _config(path, tmp_path / "out", run_checkpoint, against=[str(tmp_path / "nothing")], hash="md5")
    with pytest.raises(CapfiltError) as err:
        validate(cfg)
    assert "dedup.against" in str(err.value) and "no manifest.json" in str(err.value)
    assert "dedup.hash='md5'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_datasets_loads_the_finished_run_as_is(first, tmp_path):
    """`datasets.load_dataset(<output folder>)`: the kept rows, as many as the manifest counts, the
    images decoded; the "rejected" config: the dropped, failed and duplicate rows."""
    import datasets

    out, m, _ = first
    kept, rejected, _ = _everything(out)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"] and ds["train"].num_rows == m["counts"]["kept"] == len(kept)
    assert isinstance(ds["train"].features["image"], datasets.Image)
    by_key = {r["key"]: r for r in kept}
    for row in ds["train"]:
        want = by_key.pop(row["key"])
        assert row["texts"] == want["texts"] and row["origins"] == want["origins"]
        assert row["image"].size == decoded(want["image"]).size and row["image_sha256"] == want["image_sha256"]
    assert not by_key
    r = datasets.load_dataset(str(out), "rejected", cache_dir=str(tmp_path / "hf"))["train"]
    c = m["counts"]
    assert r.num_rows == c["dropped"] + c["failed"] + c["duplicates"] == len(rejected)
    assert sorted(r["duplicate_of"], key=str) == sorted((x["duplicate_of"] for x in rejected), key=str)


def test_a_refresh_over_the_same_input_diffs_against_the_previous_version(first, tmp_path, run_checkpoint):
    """The same rows again at a stricter threshold, deduplicated against v1 and diffed with it: a row
    is no copy of itself, and the diff is what the two outputs say row by row."""
    v1, m1, _ = first
    path = m1["inputs"][0]["parquet"].rsplit("/", 1)[0]
    cfg = _config(path, tmp_path / "v3", run_checkpoint, against=[str(v1)])
    # stricter: halfway between the lowest and the highest score v1 kept (the random model's
    # scores move with the tiny vocabulary; a fixed 0.6 might drop nothing)
    scores = sorted(r["web_itm"] for r in outputs(v1)[0])
    assert len(scores) >= 2 and scores[0] < scores[-1], scores
    tau = round((scores[0] + scores[-1]) / 2, 6)
    cfg.filter.threshold, cfg.lineage.previous, cfg.lineage.round = tau, str(v1), 1
    m = run(cfg)
    c = m["counts"]
    assert c["duplicates_of_earlier_versions"] == 0 and c["duplicates"] == m1["counts"]["duplicates"]
    before = {r["key"] for r in outputs(v1)[0]}
    _, _, now = _everything(tmp_path / "v3")
    removed = {}
    for k in before:
        if now[k]["status"] != "kept":
            removed[now[k]["status"]] = removed.get(now[k]["status"], 0) + 1
    kept = {k for k, r in now.items() if r["status"] == "kept"}
    assert m["lineage"]["diff"] == {"against": str(v1), "previous_kept": len(before), "kept": len(kept),
                                    "added": len(kept - before), "kept_again": len(kept & before),
                                    "removed": dict(sorted(removed.items()))}
    assert removed.get("dropped")  # the stricter threshold drops some of what v1 kept
    assert (m["lineage"]["round"], m["lineage"]["threshold"], m["lineage"]["scorer"]) == (1, tau, "itm")
    assert m["lineage"]["filter_sha256"] == [x["sha256"] for x in m["models"] if x["role"] == "filter"]
    card = (tmp_path / "v3" / "README.md").read_text()
    assert f"{len(kept - before)} added, {len(kept & before)} kept again" in card and "round 1" in card


def test_a_refresh_writes_the_next_version_deduplicated_and_diffed_against_the_last(first, tmp_path, run_checkpoint):
    """The refresh job's path (workflows/dagster_defs.py capfilt_shards, as the sensor calls it):
    the dataset holds v1 (the first run, copied in); the shard that arrived since becomes v2, and
    it holds a byte copy of an image v1 published. v2 names v1 as its previous version, dedups
    against it and diffs with it; every kept text carries the promoted round and models. The
    expected diff is recomputed here from the two outputs, row by row."""
    import hashlib
    import json
    import shutil
    from pathlib import Path

    from workflows.bootstrap_config import BootstrapConfig
    from workflows.dagster_defs import PROMOTED, capfilt_shards
    from workflows.rounds import Embedding

    cfg = BootstrapConfig(out=str(tmp_path / "boot"), finetune_image_size=48,
                          capfilt=config(tmp_path, tmp_path / "unused", run_checkpoint, filter={"threshold": TAU}))
    v1 = Path(cfg.out) / "dataset" / "v1"
    shutil.copytree(first[0], v1)
    (Path(cfg.out) / PROMOTED).write_text(json.dumps({"round": 3, "captioner": run_checkpoint,
                                                      "filter": run_checkpoint, "figures": {}}))
    kept1, _, _ = _everything(v1)
    assert kept1, "v1 kept nothing: the copy below needs a published image"
    # the new shard: new images and a byte copy of one v1 published
    path, _ = _world(tmp_path, "s", [], distinct=3, seed=20)
    rows = pq.read_table(Path(path) / "00000.parquet").to_pylist()
    rows = [{"key": r["key"], "caption": r["caption"], "jpg": r["jpg"]} for r in rows]
    rows.append({"key": "scopy", "caption": "seen before", "jpg": kept1[0]["image"]})
    web = tmp_path / "web"
    write_folder(web, rows)
    for suffix in (".parquet", "_stats.json"):
        (web / f"00000{suffix}").rename(web / f"00001{suffix}")
    out = capfilt_shards(cfg, ["00001"], embedding=Embedding(prepare=lambda _: {"web": str(web)}))
    v2 = Path(out["output"])
    m = json.loads((v2 / "manifest.json").read_text())
    assert out["version"] == "v2" and m["lineage"]["previous"] == str(v1) and m["params"]["dedup"]["against"] == [str(v1)]
    kept, rejected, now = _everything(v2)
    assert (now["scopy"]["status"], now["scopy"]["duplicate_of"], now["scopy"]["duplicate_in"]) == \
        ("duplicate", kept1[0]["key"], str(v1))
    assert m["counts"]["duplicates_of_earlier_versions"] == 1
    before = {r["key"] for r in kept1}
    removed = {}
    for k in before:  # v2 read the new shard alone: v1's rows are not in its input
        status = now[k]["status"] if k in now else "not_in_input"
        if status != "kept":
            removed[status] = removed.get(status, 0) + 1
    after = {r["key"] for r in kept}
    assert removed == {"not_in_input": len(before)} and after - before  # the new shard's images are new
    assert out["diff"] == m["lineage"]["diff"] == {
        "against": str(v1), "previous_kept": len(before), "kept": len(after), "added": len(after - before),
        "kept_again": len(after & before), "removed": dict(sorted(removed.items()))}
    card = (v2 / "README.md").read_text()
    assert f"{len(after - before)} added, {len(after & before)} kept again, removed {len(before)} not_in_input" in card
    assert "round 3" in card
    sha = hashlib.sha256((Path(run_checkpoint) / "model.safetensors").read_bytes()).hexdigest()
    for r in kept:  # what made and kept each text: the promoted round and models, the threshold
        assert r["rounds"] == [3] * len(r["texts"]) and r["filters"] == [sha] * len(r["texts"])
        assert r["captioners"] == [sha if o == "synthetic" else None for o in r["origins"]]
        assert r["thresholds"] == [TAU] * len(r["texts"])
    assert any("synthetic" in r["origins"] for r in kept)
