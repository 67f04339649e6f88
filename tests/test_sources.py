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
