"""The CapFilt graph on S3: img2dataset shards and the checkpoint on a real S3-protocol server (moto on
127.0.0.1, behind a proxy that injects faults), the outputs written back there and read back; no
credential in anything written; transient 500s and stalls retried, a store that keeps failing ends in
one clear error naming the path."""
from __future__ import annotations

import json
import logging
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from models.errors import CapfiltError
from models.pretrain import BlipPretrain
from pipeline import storage
from pipeline.config import RunConfig, build, load
from pipeline.run import run
from demo.world import SynthConfig, generate, serve_folder, write_url_list
from tests.s3_server import ACCESS_KEY, SECRET_KEY, s3_environment

BUCKET = "capfilt"
WEB = f"s3://{BUCKET}/web"
MODEL = f"s3://{BUCKET}/models/pretrain"
N_WEB = 24  # + one URL that 404s


@pytest.fixture(scope="module")
def s3():
    """moto behind the fault proxy; the environment points botocore, s3fs and pyarrow at it."""
    with s3_environment(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def ray_s3(s3):
    """Ray started after the environment names the store: its workers inherit it, as on a node."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs_on_s3(s3, tmp_path_factory, tiny_cfg, tiny_tokenizer):
    """img2dataset shards downloaded from the synthetic web on 127.0.0.1, then put to s3://capfilt/web/;
    a tiny checkpoint saved straight to s3://capfilt/models/pretrain through models/checkpoint.py."""
    from pipeline.download import download

    root = tmp_path_factory.mktemp("s3web")
    world = root / "world"
    generate(world, SynthConfig(seed=3, web=N_WEB, human=0, test=0))
    with serve_folder(world / "web") as base:
        urls = write_url_list(world, base, world / "urls.parquet")
        rows = pq.read_table(urls).to_pylist()
        rows.append({**rows[0], "key": "web_404", "url": f"{base}/missing.jpg"})
        pq.write_table(pa.Table.from_pylist(rows), urls)
        download(urls, root / "shards", image_size=64, shard_size=9, timeout=5, allow_hosts=("127.0.0.1",))
    fs, _ = storage.filesystem(WEB)
    fs.put(str(root / "shards") + "/", f"{BUCKET}/web", recursive=True)

    torch.manual_seed(0)
    model = BlipPretrain(tiny_cfg)
    with torch.no_grad():  # texts on both sides of the threshold (see test_capfilt_run.py)
        model.itm_head.weight.mul_(200.0)
    model.save_pretrained(MODEL, tokenizer=tiny_tokenizer)
    return {"web": WEB, "model": MODEL}


def _config(out: str, mode: str = "capfilt", **storage_section) -> RunConfig:
    values = {
        "input": {"path": WEB}, "output": out, "mode": mode, "image_size": 64,
        "captioner": {"checkpoint": MODEL, "max_length": 10},
        "filter": {"checkpoints": [MODEL], "threshold": 0.5},
        "compute": {"batch_size": 8, "rows_per_block": 8, "rows_per_shard": 10},
        "storage": {"max_attempts": 5, "connect_timeout": 5.0, "read_timeout": 10.0, **storage_section},
    }
    return build(RunConfig, values, "test")


def _read_back(out: str) -> dict:
    """The outputs as a reader elsewhere sees them: pyarrow over s3fs, from the manifest's lists."""
    fs, root = storage.filesystem(out)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    kept = pa.concat_tables([pq.read_table(f"{root}/{s['parquet']}", filesystem=fs) for s in manifest["shards"]])
    rejected = pa.concat_tables([pq.read_table(f"{root}/{r['parquet']}", filesystem=fs)
                                 for r in manifest["rejected"]])
    members = []
    for s in manifest["shards"]:
        with fs.open(f"{root}/{s['tar']}", "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            members += tar.getnames()
    return {"fs": fs, "root": root, "manifest": manifest, "kept": kept, "rejected": rejected, "members": members}


def test_capfilt_on_s3_survives_transient_faults_and_writes_no_secret(ray_s3, s3, inputs_on_s3, caplog):
    """Input, checkpoint and output on S3, while the store answers 500 now and then (in the driver,
    in Ray's read tasks and in its write tasks) and stalls once past the read timeout: the retries
    absorb it all, the counts reconcile, and the outputs read back from S3 carry no credential."""
    caplog.set_level(logging.INFO)
    out = f"s3://{BUCKET}/out"
    proxy = s3.proxy
    proxy.clear()
    proxy.fail(6, every=5)  # every 5th request, 6 times
    proxy.fail(1, match=lambda m, p: m == "GET" and ".tar" in p)  # a tar read in a worker
    proxy.fail(1, match=lambda m, p: m == "PUT" and "/out/.capfilt/staging/" in p)  # a staging write in a worker
    proxy.stall(1, seconds=3.0, match=lambda m, p: m == "GET" and "/web/" in p and ".parquet" in p)
    try:
        manifest = run(_config(out, read_timeout=1.0), progress_every=1.0)
    finally:
        faults = list(proxy.faults)
        proxy.clear()
    assert len(faults) >= 6, faults
    assert any(a == "fail" and m == "GET" and ".tar" in p for a, m, p in faults)  # in Ray's read tasks
    assert any(m == "PUT" and "/out/.capfilt/staging/" in p for a, m, p in faults)  # in Ray's write tasks
    assert any(a == "stall" for a, m, p in faults)

    c = manifest["counts"]
    assert c["rows_in"] == N_WEB + 1 == c["kept"] + c["dropped"] + c["failed"]
    assert c["failed"] == 1 and c["kept"] > 0  # the 404, and only it

    got = _read_back(out)
    assert got["manifest"]["counts"] == c
    assert len(got["kept"]) == c["kept"] and len(got["rejected"]) == c["dropped"] + c["failed"]
    keys = got["kept"]["key"].to_pylist() + got["rejected"]["key"].to_pylist()
    assert len(keys) == len(set(keys)) == N_WEB + 1  # every input row exactly once
    assert len(got["members"]) == 3 * c["kept"]  # KEY.jpg, KEY.txt, KEY.json per kept row
    assert all(len(t) for t in got["kept"]["texts"].to_pylist())
    fs, root = got["fs"], got["root"]
    assert not fs.exists(f"{root}/.capfilt/staging")  # removed once the manifest landed
    assert all(i["parquet"].startswith("s3://") for i in got["manifest"]["inputs"])
    assert fs.exists(f"{root}/.capfilt/run.json")  # the run's identity, beside the dataset
    assert got["manifest"]["models"][0]["sha256"]

    # no credential in anything written or logged
    written = [f"{root}/manifest.json", f"{root}/README.md", f"{root}/blip_json.json"]
    written += fs.glob(f"{root}/report/**")
    assert f"{root}/report/index.html" in written, "the report was not written to S3"
    for path in written:
        if fs.isfile(path):
            assert SECRET_KEY.encode() not in fs.cat_file(path), path
    assert SECRET_KEY not in caplog.text
    assert "storage" not in got["manifest"]["params"]  # where the data lives is not a parameter

    # a rerun over the same store is a no-op
    assert run(_config(out))["counts"] == c


def test_a_store_that_keeps_failing_ends_in_one_clear_error(ray_s3, s3, inputs_on_s3, capfd):
    out = f"s3://{BUCKET}/out-broken"
    s3.proxy.clear()
    capfd.readouterr()
    # every read of the input tars fails (in Ray's read tasks), whatever the retries
    s3.proxy.fail(None, match=lambda m, p: m == "GET" and "/web/" in p and ".tar" in p)
    start = time.perf_counter()
    try:
        with pytest.raises(CapfiltError) as err:
            run(_config(out, mode="filter_only", max_attempts=2))
    finally:
        s3.proxy.clear()
    message = str(err.value)
    console = capfd.readouterr()
    assert "Traceback" not in console.err + console.out  # Ray Data's traces go to its log file only
    assert time.perf_counter() - start < 90
    assert f"reading {WEB}" in message  # the path
    assert "InternalError" in message or "500" in message  # the cause
    assert "Traceback" not in message and len(message) < 1200 and len(message.splitlines()) <= 3, message
    assert SECRET_KEY not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained 200-line traceback

    # persistent stalls on the driver's side: retried, then the same kind of message
    s3.proxy.stall(None, seconds=3.0)
    start = time.perf_counter()
    try:
        storage.configure(storage.StorageSection(max_attempts=2, read_timeout=0.3, connect_timeout=1.0))
        with pytest.raises(CapfiltError) as err:
            storage.exists(f"{WEB}/00000.parquet")
    finally:
        s3.proxy.clear()
        storage.configure()
    assert f"{WEB}/00000.parquet" in str(err.value) and "timeout" in str(err.value).lower(), str(err.value)
    assert time.perf_counter() - start < 30


def test_endpoint_and_retries_from_the_config_reach_every_filesystem(s3, inputs_on_s3, tmp_path, monkeypatch):
    """No AWS_ENDPOINT_URL in the environment: the config's storage.endpoint_url is used by the path
    checks, by Ray's filesystem and, through FSSPEC_S3, by the workers; credentials stay out of it."""
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3fs.S3FileSystem.clear_instance_cache()
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(json.dumps({**_config("s3://capfilt/elsewhere").to_dict(),
                                    "storage": {"endpoint_url": s3.url, "max_attempts": 3}}))
    try:
        cfg = load(cfg_file)  # the paths on S3 are checked through the configured endpoint
        assert cfg.storage.endpoint_url == s3.url
        env = storage.worker_env()
        opts = json.loads(env[storage.ENV])
        assert opts["endpoint_url"] == s3.url
        assert opts["config_kwargs"]["retries"] == {"total_max_attempts": 3, "mode": "standard"}
        assert SECRET_KEY not in env[storage.ENV] and ACCESS_KEY not in env[storage.ENV]
        arrow = storage.arrow_filesystem(WEB)
        assert arrow.get_file_info(f"{BUCKET}/web/00000.parquet").size > 0
        assert storage.arrow_filesystem("/tmp/x") is None
    finally:
        storage.configure()
        s3fs.S3FileSystem.clear_instance_cache()

    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**_config("s3://capfilt/x").to_dict(),
                               "storage": {"options": {"secret": "x", "client_kwargs": {"aws_session_token": "y"}},
                                           "endpoint_url": "http://user:pw@host:9000"}}))
    with pytest.raises(CapfiltError) as err:
        load(bad, check_paths=False)
    assert "credential-like ['client_kwargs.aws_session_token', 'secret']" in str(err.value)
    assert "user:password@" in str(err.value) and "user:pw" not in str(err.value)


def test_scrub_masks_credentials_in_storage_options_urls_and_the_environment(monkeypatch):
    from pipeline import manifest as mf

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN")
    params = {
        "storage": {"endpoint_url": "http://minio:9000", "key": "AKIAEXAMPLE", "secret": "s3cr3t-value",
                    "client_kwargs": {"aws_secret_access_key": "x", "region_name": "eu-west-1"},
                    "config_kwargs": {"retries": {"max_attempts": 5}}},
        "input": {"path": "s3://AKIA:s3cr3t@bucket/web"},
        "signed": "https://bucket.s3.amazonaws.com/a.jpg?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc123&v=1",
        "sas": "https://acct.blob.core.windows.net/c/a.jpg?sv=2020&sig=SIGNATURE%3D&se=2026",
        "note": "ran with wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY by mistake; token FwoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN",
    }
    clean, dropped = mf.scrub(params)
    text = json.dumps(clean)
    for secret in ("AKIAEXAMPLE", "s3cr3t", "abc123", "SIGNATURE", "wJalrXUtnFEMI", "FwoGZXIvYXdzEJr"):
        assert secret not in text, secret
    assert sorted(dropped) == ["storage.client_kwargs.aws_secret_access_key", "storage.key", "storage.secret"]
    assert clean["storage"]["endpoint_url"] == "http://minio:9000"
    assert clean["storage"]["client_kwargs"] == {"region_name": "eu-west-1"}
    assert clean["storage"]["config_kwargs"] == {"retries": {"max_attempts": 5}}
    assert clean["input"]["path"] == "s3://bucket/web" and clean["signed"].endswith("&v=1")
    assert "sv=2020" in clean["sas"] and "se=2026" in clean["sas"]
