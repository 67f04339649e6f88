"""Fixtures and helpers for end-to-end runs: a tiny checkpoint, a small synthetic web served on
127.0.0.1 (as a URL list, and downloaded once into img2dataset shards), run configs, reading the
outputs back, and a `capfilt run` driver killed with SIGKILL once some rows are staged.

Import the fixtures into a test module (`from tests.fixtures_run import run_checkpoint, web`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.config import RunConfig, build
from pipeline.identity import STAGING, work
from demo.world import SynthConfig, generate, serve_folder, write_url_list

REPO = Path(__file__).resolve().parents[1]
ROWS = 24  # small: every run here is a few seconds once Ray is up


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory, tiny_cfg, tiny_tokenizer) -> str:
    from models.pretrain import BlipPretrain

    torch.manual_seed(0)
    model = BlipPretrain(tiny_cfg)
    with torch.no_grad():  # a random ITM head scores near 0.5 and leans to "match": spread it around 0.5
        model.itm_head.weight.mul_(20.0)
        model.itm_head.bias[1] -= 1.9
    folder = tmp_path_factory.mktemp("models") / "pretrain"
    model.save_pretrained(folder, tokenizer=tiny_tokenizer)
    return str(folder)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """(served world folder, URL list path, img2dataset shards of it): ROWS synthetic web images."""
    from pipeline.download import download

    root = tmp_path_factory.mktemp("runweb")
    generate(root / "world", SynthConfig(seed=3, web=ROWS, human=0, test=0, image_size=48))
    with serve_folder(root / "world" / "web") as base:
        urls = write_url_list(root / "world", base, root / "urls.parquet")
        shards = root / "shards"
        download(urls, shards, image_size=48, shard_size=10, timeout=5, allow_hosts=("127.0.0.1",))
        yield root / "world", urls, shards


def config(input_path, out, checkpoint, **overrides) -> RunConfig:
    """A small run config; each override section is merged into the defaults below."""
    values = {
        "input": {"path": str(input_path)}, "output": str(out), "image_size": 48,
        "captioner": {"checkpoint": checkpoint, "max_length": 10},
        "filter": {"checkpoints": [checkpoint], "threshold": 0.5},
        # fp32 explicitly: bit-identical captions across batchings hold where the kernels are batch-invariant
        "compute": {"batch_size": 4, "rows_per_block": 4, "rows_per_shard": 10, "precision": "fp32"},
        "download": {"image_size": 48, "timeout": 5, "shard_size": 10, "allow_hosts": ["127.0.0.1"]},
    }
    for section, value in overrides.items():
        values[section] = {**values.get(section, {}), **value} if isinstance(value, dict) else value
    return build(RunConfig, values, "test")


def outputs(out: Path) -> tuple[list[dict], list[dict]]:
    """(kept rows, rejected rows), each sorted by key."""
    shards = sorted(out.glob("shards/*.parquet"))
    kept = pq.read_table(shards).to_pylist() if shards else []
    rejected = sorted(out.glob("rejected/*.parquet"))
    rows = pq.read_table(rejected).to_pylist() if rejected else []
    return sorted(kept, key=lambda r: r["key"]), sorted(rows, key=lambda r: r["key"])


def staged_rows(out: Path) -> int:
    staging = Path(work(str(out), STAGING))
    rows = 0
    for f in staging.glob("*.parquet") if staging.exists() else []:
        try:
            rows += pq.ParquetFile(f).metadata.num_rows
        except Exception:  # a file Ray is still writing: counted on a later look
            pass
    return rows


def kill_driver(cfg: RunConfig, yaml_path: Path, *, staged: int = 1, after: float | None = None,
                timeout: float = 240) -> int:
    """Start `capfilt run` on `cfg` in its own process group and SIGKILL it once `staged` rows are
    staged (or `after` seconds from its start, when given); returns the rows staged by then. The
    group goes down with it, so no worker of the killed run writes on behind the next one."""
    yaml_path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "run", "--config", str(yaml_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = Path(cfg.output)
    start = time.time()
    try:
        while proc.poll() is None and time.time() - start < timeout:
            if (after is not None and time.time() - start >= after) or (after is None and staged_rows(out) >= staged):
                break
            time.sleep(0.1)
        done = staged_rows(out)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the driver, by PID, mid-run
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the killed driver's own Ray processes, if any outlived it
        except ProcessLookupError:
            pass
    return done
