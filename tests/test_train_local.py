"""A job that trains in this process (compute.launcher local, auto for one CPU worker): no Ray
processes, its own checkpoints under the run folder, a killed job resumes when relaunched."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from demo.world import SynthConfig, generate
from models.errors import CapfiltError
from workflows.train import in_process, train
from workflows.train_config import TrainConfig, validate


def _cfg(**compute) -> TrainConfig:
    return TrainConfig(task="pretrain", name="x", compute=dict_to(**compute))


def dict_to(**values):
    from workflows.train_config import TrainCompute

    return TrainCompute(**values)


def test_auto_trains_one_cpu_worker_in_this_process_off_a_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert in_process(_cfg())
    assert not in_process(_cfg(num_workers=2))
    assert not in_process(_cfg(use_gpu=True))
    assert not in_process(_cfg(launcher="ray"))
    assert in_process(_cfg(launcher="local"))
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # a submitted job: the cluster's workers train
    assert not in_process(_cfg())
    with pytest.raises(CapfiltError, match="launcher local trains in this process: it takes num_workers 1"):
        validate(TrainConfig.from_dict({"task": "pretrain", "name": "x", "data": {"human": ["h.json"]},
                                        "model": {"vocab_size": 50}, "compute": {"launcher": "local", "num_workers": 2}}))


def _job(root, human: str, steps: int) -> dict:
    return {"task": "pretrain", "name": "local", "storage_path": str(root / "runs"), "checkpoint_every": 5,
            "log_every": 5, "data": {"human": [human]}, "model": {"preset": "tiny", "vocab_size": 300},
            "optim": {"steps": steps, "batch_size": 8, "warmup_steps": 0}, "augment": {"enabled": False},
            "compute": {"threads": 1, "precision": "fp32"}}


def test_a_killed_in_process_job_resumes_from_its_own_checkpoint(tmp_path):
    import ray

    synth = tmp_path / "synth"
    generate(synth, SynthConfig(seed=3, web=8, human=48, test=8))
    human = str(synth / "annotations" / "human.json")
    values = _job(tmp_path, human, steps=60)
    (tmp_path / "job.json").write_text(json.dumps(values))
    run = tmp_path / "runs" / "local"
    script = ("import json, sys; from workflows.train import train; from workflows.train_config import TrainConfig;"
              f"train(TrainConfig.from_dict(json.load(open({str(tmp_path / 'job.json')!r}))))")
    first = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not list(run.glob("checkpoint_*/train_state.pt")):
        time.sleep(0.05)
    assert first.poll() is None, "the job ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (run / "model" / "history.json").exists()

    out = train(TrainConfig.from_dict(values))
    assert not ray.is_initialized()  # no Ray processes: the loop ran in this one
    assert out["steps"] == 60 and out["resumed_at"] and out["resumed_at"][0] % 5 == 0 and out["resumed_at"][0] >= 5
    steps = [h["step"] for h in out["history"]]
    assert steps == sorted(steps) and steps[-1] == 60  # one history, carried over the kill
    assert len(list(run.glob("checkpoint_*"))) <= 2  # the newest two are kept
    assert (run / "model" / "model.safetensors").exists()
    again = train(TrainConfig.from_dict(values))  # a finished job relaunched: nothing to do
    assert again["history"] == out["history"]


def test_a_checkpoint_killed_while_its_state_is_copied_is_not_one(tmp_path, monkeypatch):
    """A kill while train_state.pt is copied up leaves a checkpoint folder that is skipped: the
    newest complete one is resumed (the kill in the test above can land there; it once did)."""
    import fsspec

    from workflows import train_checkpoints as ckpt

    def write(folder):
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
        (folder / ckpt.TRAIN_STATE).write_bytes(b"s" * 1000)

    run = str(tmp_path / "run")
    first = ckpt.save(run, 5, write)
    real_put = fsspec.implementations.local.LocalFileSystem.put_file

    def killed_mid_copy(self, lpath, rpath, **kw):  # half the bytes, then the process dies
        if os.path.basename(lpath) == ckpt.TRAIN_STATE:
            with open(rpath, "wb") as fh:
                fh.write(open(lpath, "rb").read()[:500])
            raise KeyboardInterrupt
        return real_put(self, lpath, rpath, **kw)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "put_file", killed_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(run, 10, write)
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoint_00000010").is_dir()  # the torn folder is there...
    assert ckpt.latest(run) == first  # ...and is not a checkpoint
