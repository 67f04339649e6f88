"""What a rerun may do with an output folder (pipeline/rerun.py), on plain files, no Ray."""
from __future__ import annotations

import json

import pytest

from models.errors import CapfiltError
from pipeline import rerun
from pipeline.identity import RUN, WORK

IDENTITY = {"format": "capfilt-run/1", "version": "0.1.0", "precision": "fp32",
            "inputs": [{"url_list": "/data/urls.parquet", "sha256": "a" * 64, "bytes": 10}],
            "models": [{"role": "captioner", "checkpoint": "/m/cap", "sha256": "b" * 64}],
            "params": {"filter": {"threshold": 0.5}, "seed": 0, "download": {"image_size": 64}}}


def _changed(**parts) -> dict:
    return json.loads(json.dumps({**IDENTITY, **parts}))


def test_diff_names_each_change_in_one_line():
    other = _changed(version="0.2.0", precision="bf16", params={"filter": {"threshold": 0.0}, "seed": 0},
                     inputs=[{**IDENTITY["inputs"][0], "sha256": "c" * 64}],
                     models=[{**IDENTITY["models"][0], "sha256": "d" * 64}])
    lines = rerun.diff(IDENTITY, other)
    assert "capfilt version 0.1.0 -> 0.2.0" in lines
    assert "filter.threshold 0.5 -> 0.0" in lines and "download.image_size 64 -> (unset)" in lines
    assert any(line.startswith("the models' precision on this machine fp32 -> bf16") for line in lines)
    assert "input /data/urls.parquet changed in place (sha256 aaaaaaaaaaaa… -> cccccccccccc…)" in lines
    assert "captioner checkpoint /m/cap holds other weights (sha256 bbbbbbbbbbbb… -> dddddddddddd…)" in lines
    assert rerun.diff(None, IDENTITY) == [
        "its identity was not recorded (made by a version before identities, or its record is lost)"]


def test_settle_starts_resumes_refuses_and_restarts(tmp_path):
    out = str(tmp_path / "out")
    assert rerun.settle(out, IDENTITY) is None  # fresh: the identity is written first
    assert json.loads((tmp_path / "out" / WORK / RUN).read_text()) == IDENTITY
    (tmp_path / "out" / WORK / "staging").mkdir()
    assert rerun.settle(out, IDENTITY) is None and (tmp_path / "out" / WORK / "staging").exists()  # resumed
    other = _changed(params={**IDENTITY["params"], "seed": 1})
    with pytest.raises(CapfiltError, match="(?s)partial work.*seed 0 -> 1.*--restart"):
        rerun.settle(out, other)
    download = tmp_path / "out" / WORK / "download"
    rerun.prepare_download(out, {"url_list": IDENTITY["inputs"][0]})  # records what the cache is made of
    download.mkdir()
    (download / "00000.parquet").write_text("kept")
    assert rerun.settle(out, other, restart=True) is None  # partial work discarded, the download cache judged apart
    assert not (tmp_path / "out" / WORK / "staging").exists()
    assert json.loads((tmp_path / "out" / WORK / RUN).read_text())["params"]["seed"] == 1
    rerun.prepare_download(out, {"url_list": IDENTITY["inputs"][0]})
    assert (download / "00000.parquet").exists()  # the same list and settings: kept
    rerun.prepare_download(out, {"url_list": {**IDENTITY["inputs"][0], "sha256": "e" * 64}})
    assert not download.exists()  # another list: downloaded again, never mixed


def test_work_without_an_identity_is_refused(tmp_path):
    (tmp_path / "out" / "_staging").mkdir(parents=True)  # what a version before identities leaves
    with pytest.raises(CapfiltError, match="its identity was not recorded"):
        rerun.settle(str(tmp_path / "out"), IDENTITY)
    assert rerun.settle(str(tmp_path / "out"), IDENTITY, restart=True) is None
    assert not (tmp_path / "out" / "_staging").exists()
