"""Reading img2dataset shards: rows keep their download errors, images come from the shard's tar
(scanned once per worker, then read by offset), and an unreadable tar fails its rows, not the block."""
import io
import tarfile

import numpy as np
import pytest

from pipeline.sources import img2dataset as sources


def _shard(folder, images: dict[str, bytes]) -> str:
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, data in images.items():
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", b"alt text")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(folder / "00000.parquet")


def _batch(path: str, keys, status=None):
    n = len(keys)
    status = status or ["success"] * n
    return {"key": np.array(keys, dtype=object), "url": np.array([f"http://x/{k}" for k in keys], dtype=object),
            "caption": np.array([f"text {k}" for k in keys], dtype=object), "path": np.array([path] * n, dtype=object),
            "status": np.array(status, dtype=object),
            "error_message": np.array([None if s == "success" else "HTTP 404" for s in status], dtype=object)}


@pytest.fixture(autouse=True)
def _fresh_index():
    sources._TAR_INDEX.clear()
    yield
    sources._TAR_INDEX.clear()


def test_blocks_of_one_shard_read_their_own_images(tmp_path):
    images = {f"{i:09d}": bytes([i]) * (100 + 37 * i) for i in range(6)}
    path = _shard(tmp_path, images)
    first = sources.attach_images(_batch(path, ["000000000", "000000001", "000000002"], ["success", "failed", "success"]))
    assert str(tmp_path / "00000.tar") in sources._TAR_INDEX  # scanned once ...
    second = sources.attach_images(_batch(path, ["000000005", "000000003", "000000004"]))  # ... then read by offset
    got = dict(zip(first["key"].to_pylist() + second["key"].to_pylist(),
                   first["image"].to_pylist() + second["image"].to_pylist()))
    assert got["000000001"] is None and first["error"].to_pylist()[1] == "download: HTTP 404"
    assert all(got[k] == images[k] for k in got if k != "000000001")
    assert second["error"].null_count == 3 and second["web_text"].to_pylist()[0] == "text 000000005"


def test_a_missing_member_and_an_unreadable_tar_fail_their_rows(tmp_path):
    path = _shard(tmp_path, {"000000000": b"jpeg bytes"})
    table = sources.attach_images(_batch(path, ["000000000", "000000009"]))
    assert table["image"].to_pylist()[0] == b"jpeg bytes"
    assert table["error"].to_pylist() == [None, "source: image missing from 00000.tar"]
    sources._TAR_INDEX.clear()
    (tmp_path / "00000.tar").write_bytes(b"not a tar at all" * 3)
    table = sources.attach_images(_batch(path, ["000000000"]))
    assert table["image"].to_pylist() == [None]
    assert table["error"].to_pylist()[0].startswith("source: cannot read 00000.tar")


# -- the source protocol and its registry ----------------------------------------------------------

def _folder(tmp_path):
    """An img2dataset-like folder of two shards: rows with their download status, tars, stats files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "i2d"
    folder.mkdir()
    for shard, keys in (("00000", ["000000000", "000000001", "000000002"]), ("00001", ["000010000"])):
        status = ["success", "failed_to_download", "success"][: len(keys)]
        pq.write_table(pa.table({"key": keys, "caption": ["a red square", "x", ""][: len(keys)], "status": status}),
                       folder / f"{shard}.parquet")
        with tarfile.open(folder / f"{shard}.tar", "w") as tar:
            for k, s in zip(keys, status):
                if s == "success":
                    info = tarfile.TarInfo(f"{k}.jpg")
                    info.size = len(k.encode())
                    tar.addfile(info, io.BytesIO(k.encode()))
        (folder / f"{shard}_stats.json").write_text("{}")
    return folder


def test_sources_are_picked_by_what_the_path_is(tmp_path):
    from models.errors import CapfiltError
    from pipeline.sources.registry import KINDS, pick, readable_at

    folder = _folder(tmp_path)
    urls = tmp_path / "list.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1/a.jpg,a\n")
    assert list(KINDS) == ["img2dataset", "urls"]
    assert pick(str(folder)).name == "img2dataset" and pick(str(urls)).name == "urls"
    assert pick(str(folder), "urls").name == "urls"  # a format given is taken as given
    assert readable_at(str(folder)).name == "img2dataset" and readable_at(str(urls)) is None
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "notes.txt", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(CapfiltError, match="is none of the inputs CapFilt reads.*NNNNN_stats.json.*URL list file"):
            pick(str(path))
    with pytest.raises(CapfiltError, match="read once fetched into the img2dataset format"):
        KINDS["urls"].count(str(urls))
    assert KINDS["urls"].describe(str(urls))[0]["bytes"] == urls.stat().st_size


def test_an_img2dataset_folder_counts_describes_and_reads_pairs_and_images(tmp_path):
    import hashlib

    from pipeline.sources.registry import KINDS

    folder = _folder(tmp_path)
    source = KINDS["img2dataset"]
    assert source.count(str(folder)) == 4  # every row, the failed download included
    described = source.describe(str(folder))
    assert [d["shard"] for d in described] == ["00000", "00001"]
    assert described[0]["sha256"] == hashlib.sha256((folder / "00000.parquet").read_bytes()).hexdigest()
    assert described[0]["tar_bytes"] == (folder / "00000.tar").stat().st_size
    # training: only rows that downloaded and have a text
    assert source.pairs(str(folder)) == [(str(folder / "00000.parquet"), 1), (str(folder / "00001.parquet"), 1)]
    assert source.read_pairs(str(folder / "00000.parquet"), 0, 1) == [("000000000", b"000000000", "a red square")]
    # the report: images of rows by their shard, from what describe recorded
    images = source.images(described, {"00000": {"000000002"}, "00001": {"000010000"}, "00009": {"x"}})
    assert images == {"000000002": b"000000002", "000010000": b"000010000"}
    assert KINDS["urls"].images(described, {"00000": {"000000002"}}) == {}


def test_training_reads_a_raw_folder_through_its_source(tmp_path):
    from models.errors import CapfiltError
    from workflows.train_data import Piece, read_piece, shard_pieces, uid

    folder = _folder(tmp_path)
    pieces = shard_pieces(str(folder))
    part = str(folder / "00000.parquet")
    assert pieces == [Piece("raw", part, 0, 1, 1, source="img2dataset"),
                      Piece("raw", str(folder / "00001.parquet"), 0, 1, 1, source="img2dataset")]
    [sample] = read_piece(pieces[0])
    assert (sample.image, sample.texts, sample.uid) == (b"000000000", ["a red square"], uid(part, "000000000"))
    with pytest.raises(CapfiltError, match="neither a CapFilt output .* nor raw input read in place"):
        shard_pieces(str(tmp_path))
