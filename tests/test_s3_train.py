"""A short pre-training that reads its data from and writes its run to S3 (moto on 127.0.0.1): raw
img2dataset shards and Karpathy human captions (with their images) on s3://, Ray Train's storage_path
on s3://, the final model read back from there."""
from __future__ import annotations

import json
import uuid

import pytest
import ray

from pipeline import storage
from demo.world import SynthConfig, generate, serve_synthetic
from tests.s3_server import SECRET_KEY, s3_environment

BUCKET = "capfilt-train"


@pytest.fixture(scope="module")
def s3_data(tmp_path_factory):
    from pipeline.download import download

    root = tmp_path_factory.mktemp("s3train")
    synth = root / "synth"
    generate(synth, SynthConfig(seed=9, web=24, human=16, test=0))
    with serve_synthetic(synth, root / "urls.parquet") as urls:
        download(urls, root / "web_shards", image_size=64, shard_size=12, timeout=10, allow_hosts=("127.0.0.1",))
    with s3_environment(BUCKET) as server:
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.put(str(root / "web_shards") + "/", f"{BUCKET}/web", recursive=True)
        for part in ("annotations", "human"):
            fs.put(str(synth / part) + "/", f"{BUCKET}/synth/{part}", recursive=True)
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # workers inherit the S3 environment
        try:
            yield server
        finally:
            ray.shutdown()


def test_short_pretraining_reads_and_writes_s3(s3_data):
    from models.pretrain import BlipPretrain
    from workflows.train import train
    from workflows.train_config import TrainConfig

    name = f"s3-pretrain-{uuid.uuid4().hex[:8]}"
    cfg = TrainConfig.from_dict({
        "task": "pretrain", "name": name, "storage_path": f"s3://{BUCKET}/runs",
        "checkpoint_every": 2, "log_every": 1, "max_failures": 0, "seed": 0,
        "data": {"shards": [f"s3://{BUCKET}/web"], "human": [f"s3://{BUCKET}/synth/annotations/human.json"],
                 "shuffle_buffer": 64},
        "model": {"preset": "tiny", "vocab_size": 200},
        "optim": {"batch_size": 8, "steps": 4, "lr": 1e-3, "warmup_steps": 2},
        "augment": {"enabled": False},
        "compute": {"num_workers": 1, "cpus_per_worker": 1.0, "threads": 1, "precision": "auto"},
    })
    out = train(cfg)
    assert out["steps"] == 4 and out["model"] == f"s3://{BUCKET}/runs/{name}/model"
    fs, _ = storage.filesystem(out["model"])
    run = f"{BUCKET}/runs/{name}"
    assert fs.isfile(f"{run}/model/model.safetensors") and fs.isfile(f"{run}/model/history.json")
    assert fs.glob(f"{run}/checkpoint_*"), "Ray Train wrote no checkpoint to S3"
    history = json.loads(fs.cat_file(f"{run}/model/history.json"))["history"]
    assert history and all(h["loss"] == h["loss"] for h in history)  # finite losses over the steps
    model = BlipPretrain.from_pretrained(out["model"])  # read back from S3
    assert model.cfg.vocab_size > 0
    for path in fs.find(run):
        if path.endswith((".json", ".txt")):
            assert SECRET_KEY.encode() not in fs.cat_file(path), path
