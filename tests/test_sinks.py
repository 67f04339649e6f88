"""Sinks: staging Parquet (built here, as the graph writes it) -> shards, rejected, manifest, card, BLIP json."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from models.errors import CapfiltError
from pipeline import manifest as mf
from pipeline.schema import STAGING_SCHEMA, Scoring
from pipeline.sinks import drop_reason, finalize, read_shards
from pipeline.writers.webdataset_tar import sample_key

PARAMS = {"seed": 7, "filter": {"threshold": 0.5}, "captioner": {"top_p": 0.9, "captions_per_image": 2,
          "max_new_tokens": 20}, "id_column": "key",
          "storage": {"aws_secret_access_key": "SEKRIT-1", "key": "SEKRIT-2", "endpoint": "http://u:SEKRIT-3@h:9"},
          "hf_token": "SEKRIT-4", "Password": "SEKRIT-5"}
INPUTS = [{"path": "web/00000.tar", "sha256": "ab" * 32}, {"path": "web/00001.tar", "sha256": "cd" * 32}]
MODELS = [{"role": "captioner", "id": "tiny-cap", "sha256": "01" * 32},
          {"role": "filter", "id": "tiny-itm", "sha256": "02" * 32}]
TIMINGS = {"caption_s": 1.5, "filter_s": 0.5}


def _img(fmt: str, colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format=fmt)
    return buf.getvalue()


def _row(key, status, fmt="JPEG", **kw):
    ok = status != "failed"
    row = dict(key=key, url=f"http://127.0.0.1/{key}.jpg", web_text=f"alt {key}",
               image=_img(fmt, (len(key) * 20 % 255, 9, 90)) if ok else None,
               width=8 if ok else None, height=6 if ok else None, source_shard="web/00000.tar",
               captions=[f"cap a {key}", f"cap b {key}"] if ok else [], web_itm=0.2 if ok else None,
               caption_itm=[0.3, 0.1] if ok else [], status=status, error=None if ok else "cannot decode image",
               kept_texts=[], kept_origins=[], kept_scores=[],
               # lineage: the URL list's own key and the size before the downloader resized the image
               source_key=f"user-{key}", original_width=80 if ok else None, original_height=60 if ok else None)
    row.update(kw)
    return row


def _kept(key, texts, fmt="JPEG", **kw):
    return _row(key, "kept", fmt, kept_texts=[t for t, _, _ in texts], kept_origins=[o for _, o, _ in texts],
                kept_scores=[s for _, _, s in texts], **kw)


ROWS = [  # three staging files, keys deliberately out of order
    [_kept("k07", [("alt k07", "web", 0.9), ("cap a k07", "synthetic", 0.7)], web_itm=0.9, caption_itm=[0.7, 0.1]),
     _row("k02", "dropped"), _kept("k05", [("cap b k05", "synthetic", 0.8)], "PNG", caption_itm=[0.1, 0.8]),
     _row("k09", "failed")],
    [_kept("k01", [("alt k01", "web", 0.6)], web_itm=0.6), _row("k08", "dropped", captions=[], caption_itm=[]),
     _kept("web.3", [("alt web.3", "web", 0.95)], web_itm=0.95), _row("k03", "failed", error="HTTP 404")],
    [_kept("dir/k04", [("cap a dir/k04", "synthetic", 0.55)], caption_itm=[0.55, 0.2]),
     _kept("k06", [("alt k06", "web", 0.7), ("cap b k06", "synthetic", 0.65), ("cap a k06", "synthetic", 0.6)],
           web_itm=0.7, caption_itm=[0.6, 0.65])],
]
ALL = [r for f in ROWS for r in f]
KEPT = sorted(r["key"] for r in ALL if r["status"] == "kept")


def _write_staging(fs, root, files=ROWS):
    fs.makedirs(root, exist_ok=True)
    for i, rows in enumerate(files):
        with fs.open(f"{root}/part-{i}-{uuid.uuid4().hex[:6]}.parquet", "wb") as f:
            # The last file with inferred types (int64, double, null-typed error): Ray need not match the contract's.
            pq.write_table(pa.Table.from_pylist(rows, None if i == len(files) - 1 and rows else STAGING_SCHEMA), f)


def _run(staging, out, **kw):
    return finalize(staging, out, rows_per_shard=kw.pop("rows_per_shard", 2), params=kw.pop("params", PARAMS),
                    scoring=kw.pop("scoring", Scoring(threshold=0.5)), inputs=INPUTS, models=MODELS, timings=TIMINGS, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sinks")
    staging, out = base / "out" / "_staging", base / "out"
    _write_staging(fsspec.filesystem("file"), str(staging))
    return out, _run(str(staging), str(out))


def _files(out, sub, ext):
    return sorted((out / sub).glob(f"*.{ext}"))


def test_counts_and_every_key_once(run):
    out, m = run
    c = m["counts"]
    assert (c["rows_in"], c["kept"], c["dropped"], c["failed"]) == (10, 6, 2, 2)
    assert c["texts_kept"] == {"web": 4, "synthetic": 5}
    shard_keys = read_shards(str(out), columns=["key"])["key"].to_pylist()
    rejected = pa.concat_tables([pq.read_table(p) for p in _files(out, "rejected", "parquet")])
    rej_keys = rejected["key"].to_pylist()
    assert shard_keys == KEPT  # sorted by key across shards
    assert sorted(shard_keys + rej_keys) == sorted(r["key"] for r in ALL)
    assert not set(shard_keys) & set(rej_keys)
    assert not (out / "_finalize_tmp").exists() and not list(out.rglob(".*.tmp"))


def test_parquet_shards_and_manifest_hashes(run):
    out, m = run
    assert [s["name"] for s in m["shards"]] == ["00000", "00001", "00002"]
    assert [s["rows"] for s in m["shards"]] == [2, 2, 2]
    for s in m["shards"]:
        assert s["complete"] is True
        for kind in ("parquet", "tar"):
            assert hashlib.sha256((out / s[kind]).read_bytes()).hexdigest() == s[f"{kind}_sha256"]
    t = pq.read_table(out / "shards" / "00000.parquet")
    assert t.column_names == ["key", "url", "image", "width", "height", "web_text", "captions", "web_itm",
                              "caption_itm", "texts", "origins", "scores", "rounds", "captioners", "filters",
                              "thresholds", "source_shard", "source_key", "original_width", "original_height",
                              "image_sha256", "image_hash"]
    row = read_shards(str(out)).to_pylist()[KEPT.index("k06")]
    assert row["texts"] == ["alt k06", "cap b k06", "cap a k06"] and row["origins"] == ["web", "synthetic", "synthetic"]
    assert Image.open(io.BytesIO(row["image"])).size == (8, 6)
    for r in m["rejected"]:
        assert hashlib.sha256((out / r["parquet"]).read_bytes()).hexdigest() == r["sha256"]
    assert m["exports"]["blip_json"]["sha256"] == hashlib.sha256((out / "blip_json.json").read_bytes()).hexdigest()
    assert set(m["packages"]) >= {"python", "pyarrow", "webdataset"}
    assert m["inputs"] == INPUTS and m["models"] == MODELS and m["timings"] == TIMINGS
    assert m["params"]["filter"]["threshold"] == 0.5 and m["params"]["id_column"] == "key"
    assert json.loads((out / "manifest.json").read_text()) == m


CAPTIONER, FILTERS = "0c" * 32, ["0f" * 32, "1f" * 32]


@pytest.mark.parametrize("mode, keep, expected", [
    # k06 keeps its web text and two captions: (round, captioner, filter, threshold) of each, by hand
    ("capfilt", "threshold", [(2, None, "+".join(FILTERS), 0.5), (2, CAPTIONER, "+".join(FILTERS), 0.5),
                              (2, CAPTIONER, "+".join(FILTERS), 0.5)]),
    ("capfilt", "top_k", [(2, None, "+".join(FILTERS), 0.5), (2, CAPTIONER, "+".join(FILTERS), None),
                          (2, CAPTIONER, "+".join(FILTERS), None)]),
    ("caption_only", "threshold", [(2, None, None, None), (2, CAPTIONER, None, None), (2, CAPTIONER, None, None)]),
])
def test_every_kept_text_carries_what_made_and_kept_it(tmp_path, mode, keep, expected):
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"))
    lineage = {"round": 2, "captioner_sha256": CAPTIONER, "filter_sha256": FILTERS, "mode": mode, "threshold": 0.5, "scorer": "itm",
               "keep": {"captions": keep, "top_k": 1}}
    _run(str(tmp_path / "st"), str(tmp_path / "out"), lineage=lineage)
    rows = {r["key"]: r for r in read_shards(str(tmp_path / "out")).to_pylist()}
    row = rows["k06"]
    assert row["origins"] == ["web", "synthetic", "synthetic"]
    assert list(zip(row["rounds"], row["captioners"], row["filters"], row["thresholds"])) == expected
    assert all(len(r[c]) == len(r["texts"]) for r in rows.values() for c in ("rounds", "captioners", "filters"))
    with tarfile.open(tmp_path / "out" / "shards" / "00001.tar") as tar:  # k05, k06
        meta = json.loads(tar.extractfile("k06.json").read())
    assert [(t["round"], t["captioner_sha256"], t["filter_sha256"], t["threshold"]) for t in meta["texts"]] == expected


def test_without_a_lineage_the_texts_lineage_is_null(run):
    out, _ = run
    for r in read_shards(str(out)).to_pylist():
        assert r["rounds"] == r["captioners"] == r["filters"] == r["thresholds"] == [None] * len(r["texts"])


def test_tars_read_by_webdataset(run):
    out, _ = run
    by_key = {r["key"]: r for r in ALL}
    samples = list(wds.WebDataset([str(p) for p in _files(out, "shards", "tar")], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [sample_key(k) for k in KEPT]
    for s in samples:
        meta = json.loads(s["json"])
        src = by_key[meta["key"]]
        ext = "png" if meta["key"] == "k05" else "jpg"
        assert set(s) - {"__key__", "__url__", "__local_path__"} == {ext, "txt", "json"}
        assert s[ext] == src["image"]
        assert s["txt"].decode() == src["kept_texts"][0]
        assert [x["text"] for x in meta["texts"]] == src["kept_texts"]
        assert [x["origin"] for x in meta["texts"]] == src["kept_origins"]
        assert [x["itm"] for x in meta["texts"]] == pytest.approx(src["kept_scores"], abs=1e-4)
        assert meta["url"] == src["url"] and meta["web_text"] == src["web_text"] and meta["source_shard"]
        assert (meta["source_key"], meta["original_width"], meta["original_height"]) == (f"user-{meta['key']}", 80, 60)


def test_sanitised_keys(run):
    out, _ = run
    assert sample_key("web.3") == "web_3" and sample_key("dir/k04") == "dir_k04" and sample_key("../x") == "___x"
    names = [n for p in _files(out, "shards", "tar") for n in tarfile.open(p).getnames()]
    assert "web_3.jpg" in names and "dir_k04.json" in names
    assert all("/" not in n and n.count(".") == 1 for n in names)


def test_rejected_has_reasons_and_no_images(run):
    out, m = run
    t = pa.concat_tables([pq.read_table(out / r["parquet"]) for r in m["rejected"]])
    assert "image" not in t.column_names
    rows = {r["key"]: r for r in t.to_pylist()}
    assert rows["k03"]["status"] == "failed" and rows["k03"]["reason"] == "HTTP 404"
    assert rows["k02"]["reason"] == "web text ITM 0.20 < 0.5 and no synthetic caption >= 0.5 (best 0.30)"
    assert rows["k08"]["reason"] == "web text ITM 0.20 < 0.5 and no synthetic captions"
    # NaN or null scores: what the decide stage may write when a text was not scored
    assert drop_reason("", float("nan"), [None, float("nan")], 0.5) == \
        "web text not scored (empty) and no synthetic caption >= 0.5 (none scored)"
    assert rows["k02"]["web_itm"] == pytest.approx(0.2) and rows["k02"]["caption_itm"] == pytest.approx([0.3, 0.1])
    assert (rows["k02"]["source_key"], rows["k02"]["original_width"], rows["k02"]["original_height"]) == ("user-k02", 80, 60)
    assert rows["k03"]["source_key"] == "user-k03" and rows["k03"]["original_width"] is None  # failed: never downloaded


def test_blip_json_and_card(run):
    out, m = run
    entries = json.loads((out / "blip_json.json").read_text())
    expected = [{"url": r["url"], "caption": t} for k in KEPT for r in ALL if r["key"] == k for t in r["kept_texts"]]
    assert entries == expected and len(entries) == 9
    card = (out / "README.md").read_text()
    assert "license:" in card and "tiny-cap" in card and "02" * 32 in card and "| kept | 6 |" in card
    assert "Seed: 7" in card and "top_p" in card and "| texts | list<item: string> |" in card
    assert "| source_key | string | the original key" in card and "| original_width | int32 |" in card
    rejected = card[card.index("Rejected schema"):]  # the card documents both schemas
    assert "| reason | string |" in rejected and "| status | string |" in rejected and "| image |" not in rejected
    assert "`.capfilt/`" in card


def test_no_credentials_written(run):
    out, m = run
    for p in out.rglob("*"):
        if p.is_file() and "_staging" not in p.parts:
            assert b"SEKRIT" not in p.read_bytes(), p
    assert {"storage.aws_secret_access_key", "storage.key", "hf_token", "Password"} <= set(m["redacted"])
    assert m["params"]["captioner"]["max_new_tokens"] == 20 and m["params"]["storage"]["endpoint"] == "http://h:9"
    assert mf.is_secret_name("apiKey") and not mf.is_secret_name("id_column")


def test_second_finalize_is_identical_and_cleans_leftovers(tmp_path):
    out = tmp_path / "out"
    _write_staging(fsspec.filesystem("file"), str(out / "_staging"))
    first = _run(str(out / "_staging"), str(out))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # What an interrupted run, or an earlier run with more shards, leaves behind.
    (out / "shards" / ".00001.tar.tmp").write_bytes(b"partial")
    (out / "shards" / "00099.parquet").write_bytes(b"stale")
    (out / "_finalize_tmp" / "shards" / "00000").mkdir(parents=True)
    (out / "_finalize_tmp" / "shards" / "00000" / "00000.parquet").write_bytes(b"junk")
    second = _run(str(out / "_staging"), str(out))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    for rel, data in before.items():
        if rel.name != "manifest.json":
            assert after[rel] == data, rel
    first.pop("created"), second.pop("created")
    assert first == second


def test_duplicate_key_is_a_clear_error(tmp_path):
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"), [ROWS[0], [ROWS[0][1]]])
    with pytest.raises(CapfiltError, match="duplicate key.*'k02'"):
        _run(str(tmp_path / "st"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_duplicates_first_keeps_the_first_staged_copy(tmp_path):
    # After a kill between a write and its checkpoint the graph may stage a row twice.
    again = [dict(ROWS[0][1], status="failed", error="retry"), dict(ROWS[0][0]), dict(ROWS[0][0])]
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"), [ROWS[0], again])
    m = _run(str(tmp_path / "st"), str(tmp_path / "out"), duplicates="first")
    c = m["counts"]
    assert (c["rows_in"], c["kept"], c["dropped"], c["failed"], c["repeats_dropped"]) == (4, 2, 1, 1, 3)
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "00000.parquet").to_pylist()
    assert {r["key"]: r["status"] for r in rejected} == {"k02": "dropped", "k09": "failed"}
    assert read_shards(str(tmp_path / "out"), columns=["key"])["key"].to_pylist() == ["k05", "k07"]


def test_key_collision_after_sanitising(tmp_path):
    rows = [[_kept("a.b", [("x", "web", 0.9)]), _kept("a_b", [("y", "web", 0.9)])]]
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"), rows)
    with pytest.raises(CapfiltError, match="collide.*'a_b'"):
        _run(str(tmp_path / "st"), str(tmp_path / "out"))


def test_bad_staging_is_a_clear_error(tmp_path):
    with pytest.raises(CapfiltError, match="does not exist"):
        _run(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "st").mkdir()
    pq.write_table(pa.table({"key": ["a"], "status": ["kept"]}), tmp_path / "st" / "x.parquet")
    with pytest.raises(CapfiltError, match="lacks column"):
        _run(str(tmp_path / "st"), str(tmp_path / "out"))
    with pytest.raises(CapfiltError, match="no manifest.json"):
        read_shards(str(tmp_path / "out"))


def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    root = f"memory://capfilt-{uuid.uuid4().hex[:8]}"
    try:
        _write_staging(fs, f"{root}/_staging")
        m = _run(f"{root}/_staging", root, rows_per_shard=4)
        assert [s["rows"] for s in m["shards"]] == [4, 2]
        assert read_shards(root, columns=["key"])["key"].to_pylist() == KEPT
        assert read_shards(root.removeprefix("memory:/"), columns=["key"], filesystem=fs).num_rows == len(KEPT)
        assert hashlib.sha256(fs.cat(f"{root}/shards/00001.tar")).hexdigest() == m["shards"][1]["tar_sha256"]
        assert fs.exists(f"{root}/README.md") and not fs.exists(f"{root}/_finalize_tmp")
    finally:
        fs.rm(root, recursive=True)


def test_nothing_kept(tmp_path):
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"), [[_row("k1", "dropped"), _row("k2", "failed")]])
    m = _run(str(tmp_path / "st"), str(tmp_path / "out"))
    assert m["shards"] == [] and m["counts"]["rows_in"] == 2 and len(m["rejected"]) == 1
    assert json.loads((tmp_path / "out" / "blip_json.json").read_text()) == []
    assert read_shards(str(tmp_path / "out")).num_rows == 0
    # Staging files with no rows at all: an empty, complete output.
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "empty"), [[], []])
    m = _run(str(tmp_path / "empty"), str(tmp_path / "out2"))
    assert m["counts"]["rows_in"] == 0 and m["shards"] == [] and m["rejected"] == []


# The bytes finalize wrote for ROWS (rows_per_shard 2) before the row schema and the writers moved
# out of this module (issue 23), computed then by the code of b58315a: the same staging rows must
# give the same bytes. Parquet records its writer's version and the images are Pillow's encoding,
# so the pin holds for the versions it was made with. The Parquet files' pins were made again when
# issue 28 added the fingerprint columns (image_sha256, image_hash: null for these hand-made
# rows; rejected/ also duplicate_of, duplicate_in, duplicate_match); the tars and the BLIP json,
# which carry none of them, kept their bytes. The shards' pins were made again when issue 28 gave
# every kept text its lineage (rounds, captioners, filters, thresholds: null lists without a
# lineage; the tars' KEY.json the same keys per text): the tars' image and txt members kept their bytes.
GOLDEN_VERSIONS = {"pyarrow": "26.0.1", "Pillow": "13.0.0"}
GOLDEN = {
    "blip_json.json": "0184702952e47d80e726cb6d4ecc0d83bda8e05f6a01d2e812865888b014c52b",
    "rejected/00000.parquet": "82196e608bcad45f5e583123aa1f1a81c4326d8fb769d31622e684d99f02ef42",
    "rejected/00001.parquet": "7da7576d15e9360693e6249624e148429857777349b93221d8cf685f821b6fca",
    "shards/00000.parquet": "eb2711788591680f87e5abf6378b9873d94a7ebdf5ccfe287af54f76a2539387",
    "shards/00000.tar": "62af2fce029970a0c377547a8ae607ba0cd0f01ce8a0de0c2ab2c57a88f800bf",
    "shards/00001.parquet": "8263f65a1fb828237bcddf47e23c7c497446587c8ca67e0247cffe9e902d2e94",
    "shards/00001.tar": "386d31b997d76b1e6727cf0db7af675a80ce81a05d9a9c7842ebd84b26b43601",
    "shards/00002.parquet": "60b6d4ddbd81dcdd2210ca1b948982cfabc7048107ccd5880be637624b249c3f",
    "shards/00002.tar": "350928a0341c576b42fdc1b0e185a8c5bbf86a832746f8cc1e1abb58a24d7eef",
}


def test_the_same_rows_give_the_bytes_they_gave_before_the_writers_moved(run):
    from importlib import metadata

    versions = {name: metadata.version(name) for name in GOLDEN_VERSIONS}
    if versions != GOLDEN_VERSIONS:
        pytest.skip(f"the pinned bytes were made with {GOLDEN_VERSIONS}, this environment has {versions}")
    out, _ = run
    written = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
               if p.is_file() and "_staging" not in p.parts and p.name not in ("manifest.json", "README.md")}
    assert written == GOLDEN


def test_a_registered_writer_gets_every_output_file_and_its_files_survive_a_rerun(tmp_path, monkeypatch):
    """A new output format: one Writer subclass in the writer registry. It sees every kept shard in
    key order, adds its fields to the manifest entry and its exports, and a rerun keeps its files."""
    from pipeline import sinks
    from pipeline.writers.base import Writer

    class KeysTxt(Writer):
        rows = "shards"

        def write(self, name, rows):
            with self.root.atomic(f"shards/{name}.keys.txt") as sink:
                sink.write("\n".join(rows["key"].to_pylist()).encode())
            self.exports = {"keys_txt": {"files": self.exports.get("keys_txt", {}).get("files", 0) + 1}}
            return {"keys_txt": f"shards/{name}.keys.txt", "keys_txt_sha256": sink.sha256}

    monkeypatch.setattr(sinks, "WRITERS", (*sinks.WRITERS, KeysTxt))
    _write_staging(fsspec.filesystem("file"), str(tmp_path / "st"))
    for _ in range(2):  # the second run prunes stale files, not this writer's
        m = _run(str(tmp_path / "st"), str(tmp_path / "out"))
    out = tmp_path / "out"
    assert [(out / s["keys_txt"]).read_text().split("\n") for s in m["shards"]] == [KEPT[0:2], KEPT[2:4], KEPT[4:6]]
    assert all(hashlib.sha256((out / s["keys_txt"]).read_bytes()).hexdigest() == s["keys_txt_sha256"] for s in m["shards"])
    assert list(m["shards"][0]) == ["name", "rows", "parquet", "tar", "keys_txt", "parquet_sha256", "tar_sha256",
                                    "keys_txt_sha256", "complete"]
    assert m["exports"]["keys_txt"] == {"files": 3} and m["exports"]["blip_json"]["entries"] == 9


def test_scores_of_another_scorer_name_their_columns_reasons_and_tar_fields(tmp_path):
    """A run decided by ITC with ITM compared: the published columns follow the scorers, the reason
    quotes the deciding scorer and its threshold, the tar's texts carry the deciding score."""
    scoring = Scoring("itc", 0.3, (("itm", 0.5),))
    rows = [dict(r, web_itc=r["web_itm"], caption_itc=r["caption_itm"]) for r in ROWS[0]]
    (tmp_path / "st").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, scoring.staging_schema()), tmp_path / "st" / "a.parquet")
    m = _run(str(tmp_path / "st"), str(tmp_path / "out"), scoring=scoring)
    assert m["scoring"] == {"scorer": "itc", "threshold": 0.3, "compare": {"itm": 0.5}}
    shard = read_shards(str(tmp_path / "out"))
    assert shard.column_names[7:11] == ["web_itc", "caption_itc", "web_itm", "caption_itm"]
    rejected = pq.read_table(tmp_path / "out" / m["rejected"][0]["parquet"]).to_pylist()
    assert {r["key"]: r["reason"] for r in rejected}["k02"] == \
        "web text ITC 0.20 < 0.3 and no synthetic caption >= 0.3 (best 0.30)"
    tar = tmp_path / "out" / m["shards"][0]["tar"]
    meta = [json.loads(s["json"]) for s in wds.WebDataset([str(tar)], shardshuffle=False)]
    assert set(meta[0]["texts"][0]) == {"text", "origin", "itc", "round", "captioner_sha256", "filter_sha256", "threshold"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ITC cosine similarity" in card and "| web_itm | float | ITM match probability of the web text" in card
