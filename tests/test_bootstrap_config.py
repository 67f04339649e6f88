"""The bootstrap's one config tree: the training and CapFilt configs are templates the rounds change
with dataclasses.replace, so every key a user sets reaches each job, and nothing is rebuilt by hand."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models.errors import CapfiltError
from pipeline.config import RunConfig
from workflows.bootstrap_config import (capfilt_config, eval_config, finetune_config, from_dict, load,
                                        pretrain_config)
from workflows.train_config import TrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATA = {"web": "web", "human": ["human.json"], "test": "test.json"}


def _cfg(**values):
    return from_dict({"out": "/o", "seed": 7, "data": DATA, "train": {"model": {"preset": "tiny", "vocab_size": 50}},
                      **values}, "bootstrap.yaml")


def test_the_example_loads_and_the_demo_is_refused_with_its_command():
    cfg = load(CONFIGS / "bootstrap.example.yaml")
    assert cfg.optim("pretrain").warmup_steps == 3000 and cfg.optim("caption").batch_size == 64
    with pytest.raises(CapfiltError, match="capfilt demo --config"):
        load(CONFIGS / "demo.yaml")


def test_each_job_is_the_template_with_what_only_the_round_knows():
    cfg = _cfg(train={"model": {"preset": "tiny", "vocab_size": 50, "vit_init": "vit.pth"}, "checkpoint_every": 7,
                      "compute": {"precision": "fp32", "threads": 3}, "optim": {"batch_size": 8, "lr": 0.1}},
               pretrain={"steps": 5, "lr": 0.01}, caption={"steps": 3}, finetune_image_size=96)
    first, later = pretrain_config(cfg, 0, "web", ["h.json"]), pretrain_config(cfg, 1, "/o/round0_capfilt", ["h.json"])
    cap = finetune_config(cfg, 0, "caption", "/o/train/round0_pretrain/model", ["h.json"])
    ev = eval_config(cfg, 0, "/o/train/round0_filter/model", "/o/train/round0_captioner/model", "t.json")
    for job in (first, later, cap, ev):  # the template's keys reach every job; the bootstrap's seed too
        assert (job.checkpoint_every, job.compute.precision, job.compute.threads, job.seed) == (7, "fp32", 3, 7)
        assert job.storage_path == "/o/train"
    assert (first.optim.steps, first.optim.lr, first.optim.batch_size) == (5, 0.01, 8)  # pretrain over train.optim
    assert (cap.optim.steps, cap.optim.lr) == (3, 0.1)
    assert first.model.vit_init == later.model.vit_init == "vit.pth" and first.model.vocab_size == 50
    assert later.model.tokenizer == "/o/train/round0_pretrain/tokenizer" and later.model.vocab_size == 0
    assert later.data.shards == ["/o/round0_capfilt"]
    assert (cap.task, cap.name, cap.model.init, cap.model.image_size, cap.model.vit_init) == (
        "caption", "round0_captioner", "/o/train/round0_pretrain/model", 96, "")
    assert (ev.task, ev.data.test, ev.eval.captioner) == ("eval", "t.json", "/o/train/round0_captioner/model")


def test_a_capfilt_run_is_the_template_with_the_rounds_paths(tmp_path, tiny_cfg, tiny_tokenizer):
    from models.pretrain import BlipPretrain

    BlipPretrain(tiny_cfg).save_pretrained(tmp_path / "filter", tokenizer=tiny_tokenizer)
    cfg = _cfg(capfilt={"captioner": {"max_length": 20, "top_p": 0.8}, "filter": {"threshold": 0.3},
                        "compute": {"batch_size": 5, "rows_per_shard": 11}})
    run = capfilt_config(cfg, "web", "cap", str(tmp_path / "filter"), "/o/round0_capfilt")
    template = cfg.capfilt
    assert isinstance(run, RunConfig) and run.compute == template.compute
    assert (run.input.path, run.output, run.seed) == ("web", "/o/round0_capfilt", 7)
    assert (run.captioner.checkpoint, run.captioner.max_length, run.captioner.top_p) == ("cap", 20, 0.8)
    assert (run.filter.checkpoints, run.filter.threshold) == ([str(tmp_path / "filter")], 0.3)
    assert run.image_size == tiny_cfg.finetune_image_size  # the filter's own fine-tuning size when none is set


def test_the_demo_makes_the_jobs_the_old_hand_translation_made():
    """configs/demo.yaml through the templates gives each job the values rounds.py used to spell
    out by hand (checkpoint_every 100, max_failures 2, no augmentation, the step counts and rates;
    the captioner's steps since raised from 100 to 300 in the config, the filter's from 80 to 320)."""
    from demo.config import load as load_demo

    cfg = load_demo(CONFIGS / "demo.yaml").bootstrap
    pre = pretrain_config(cfg, 0, "web", ["h.json"])
    cap = finetune_config(cfg, 0, "caption", "init", ["h.json"])
    filt = finetune_config(cfg, 0, "filter", "init", ["h.json"])
    assert (pre.checkpoint_every, pre.log_every, pre.max_failures, pre.augment.enabled) == (100, 50, 2, False)
    assert (pre.optim.steps, pre.optim.batch_size, pre.optim.lr, pre.optim.warmup_steps, pre.optim.vit_lr_scale) == (
        200, 32, 0.001, 50, 0.1)
    assert (cap.optim.steps, cap.optim.lr, cap.optim.warmup_steps, filt.optim.steps) == (300, 0.0005, 0, 320)
    assert (cap.model.image_size, pre.eval.k_test, pre.compute.precision) == (64, 16, "fp32")
    expected = {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)
                if f.name not in ("task", "name", "storage_path", "seed", "checkpoint_every", "log_every",
                                  "max_failures", "data", "model", "optim", "augment", "compute", "eval")}
    assert {k: getattr(pre, k) for k in expected} == expected  # nothing else differs from the defaults
    c = cfg.capfilt
    assert (c.captioner.max_length, c.filter.threshold, c.compute.batch_size, c.compute.rows_per_shard) == (
        20, 0.5, 64, 1000)


def test_every_mistake_of_the_tree_is_one_message():
    with pytest.raises(CapfiltError) as err:
        from_dict({"rounds": 0, "pretrain": {"stpes": 3}, "train": {"optim": {"batch_size": 1}},
                   "capfilt": {"filter": {"treshold": 0.5}}}, "b.yaml")
    text = str(err.value)
    for part in ("rounds must be at least 1", "['stpes']", "['treshold']", "give data.web"):
        assert part in text, part
    with pytest.raises(CapfiltError, match="batch_size must be at least 2"):
        _cfg(train={"model": {"preset": "tiny", "vocab_size": 50}, "optim": {"batch_size": 1}})


def test_where_the_jobs_run_is_checked_with_the_rest(monkeypatch):
    """launch (workflows/launch.py): in-process unless it names a cluster's job server, and a value
    that cannot be one is reported with the config's other mistakes, before anything runs."""
    from workflows import launch

    assert _cfg().launch.ray_jobs == "" and isinstance(launch.launcher(_cfg().launch), launch.InProcess)
    assert _cfg(launch={"ray_jobs": "http://127.0.0.1:8265"}).launch.ray_jobs == "http://127.0.0.1:8265"
    with pytest.raises(CapfiltError) as err:
        _cfg(rounds=0, launch={"ray_jobs": "127.0.0.1:8265", "python": " ", "poll_seconds": 0.0})
    text = str(err.value)
    for part in ("rounds must be at least 1", "launch.ray_jobs='127.0.0.1:8265' must be the job server's http(s)://HOST:PORT",
                 "launch.python is empty", "launch.poll_seconds=0.0 must be above 0"):
        assert part in text, part
    # where only ray[data,train] is installed, the job server's client is not there: say what to install
    from pipeline import dashboard

    monkeypatch.setattr(dashboard, "missing_packages", lambda: "No module named 'aiohttp'")
    with pytest.raises(CapfiltError, match=r"launch.ray_jobs needs Ray's job-submission packages.*ray\[default\]"):
        _cfg(launch={"ray_jobs": "https://head:8265"})
