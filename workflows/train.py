"""Training jobs as Ray Train `TorchTrainer`s: `capfilt pretrain`, `capfilt finetune --task caption|filter`,
`capfilt eval`.

A run lives at `{storage_path}/{name}`: Ray Train's checkpoints (our format plus train_state.pt),
the tokenizer it started with, and when it ends `model/` (the final weights, what CapFilt and the
next job load) with `history.json` (losses over the steps). Relaunching the same name resumes the
run from its last checkpoint; a finished run relaunched does nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

import fsspec
import torch

from models.checkpoint import local_folder
from models.errors import CapfiltError
from models.tokenizer import blip_tokenizer, train_wordpiece
from pipeline import dashboard
from workflows.evaluate import evaluate
from workflows.train_config import TrainConfig, load, validate
from workflows.train_data import human_pieces, karpathy_images, shard_pieces
from workflows import console, train_checkpoints
from workflows.train_checkpoints import TRAIN_STATE
from workflows.train_loop import train_loop

log = logging.getLogger(__name__)


def _absolute(path: str) -> str:
    return path if not path or "://" in path else os.path.abspath(path)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute: Ray Train workers run in a folder of their own."""
    d, m = cfg.data, cfg.model
    data = dataclasses.replace(d, shards=[_absolute(p) for p in d.shards], human=[_absolute(p) for p in d.human],
                               test=_absolute(d.test), image_root=_absolute(d.image_root))
    model = dataclasses.replace(m, init=_absolute(m.init), tokenizer=_absolute(m.tokenizer), vit_init=_absolute(m.vit_init))
    ev = dataclasses.replace(cfg.eval, captioner=_absolute(cfg.eval.captioner))
    return dataclasses.replace(cfg, data=data, model=model, eval=ev)


def run_dir(cfg: TrainConfig) -> str:
    root = cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    return root.rstrip("/") + "/" + cfg.name


def _tokenizer_dir(cfg: TrainConfig, where: str) -> str:
    """The tokenizer every worker loads: the init checkpoint's, a given one, or one learnt from the
    human captions once (kept in the run folder, so a resumed run reuses it)."""
    if cfg.model.init:
        return cfg.model.init
    fs, path = fsspec.core.url_to_fs(cfg.model.tokenizer or where)
    if cfg.model.tokenizer and fs.isdir(path):
        return cfg.model.tokenizer
    target = where.rstrip("/") + "/tokenizer"
    tfs, tpath = fsspec.core.url_to_fs(target)
    if tfs.exists(tpath.rstrip("/") + "/tokenizer.json"):
        return target
    if cfg.model.tokenizer:
        tokenizer = blip_tokenizer(cfg.model.tokenizer)
    else:
        texts = [c for f in cfg.data.human for _, caps in karpathy_images(f) for c in caps]
        if not texts:
            raise CapfiltError("model.vocab_size learns a vocabulary from data.human, which is empty")
        tokenizer = train_wordpiece(texts, vocab_size=cfg.model.vocab_size)
    with local_folder(target, write=True) as local:
        tokenizer.save_pretrained(str(local))
    return target


def pieces_of(cfg: TrainConfig) -> list[dict]:
    pieces = [p for s in cfg.data.shards for p in shard_pieces(s)]
    pieces += [p for h in cfg.data.human for p in human_pieces(h, cfg.data.image_root)]
    if not pieces:
        raise CapfiltError("the training data is empty: no complete shards, downloaded rows or captions found")
    return [dataclasses.asdict(p) for p in pieces]


def _ray_init(cfg: TrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # under `ray job submit`: join the cluster as it is
        ray.init()
        dashboard.joined(cfg.compute.dashboard)
    else:
        dashboard.announce(ray.init(**ray_init_kwargs(cfg)), cfg.compute.dashboard)


def ray_init_kwargs(cfg: TrainConfig) -> dict:
    """The arguments of the local `ray.init` a job starts Ray with: as pipeline.run, more logical
    CPUs than cores, so fractional workers and Ray's own tasks never wait on each other (torch
    threads are pinned per worker)."""
    c = cfg.compute
    cpus = max(2 * (os.cpu_count() or 1), int(c.num_workers * c.cpus_per_worker) + 1)
    return dashboard.init_kwargs(cpus, c.dashboard, log_to_driver=True)


def in_process(cfg: TrainConfig) -> bool:
    """Whether the job trains in this process (Ray Train's local mode) rather than in Ray Train
    workers: `compute.launcher` local, or auto for one CPU worker on no cluster. In this process a
    job starts in about a second instead of ~25 s (controller, worker group, their imports), keeps
    its checkpoints itself (workflows/train_checkpoints.py), and a killed one resumes when
    relaunched; max_failures (restarts of a lost worker) needs Ray Train workers."""
    c = cfg.compute
    if c.launcher == "auto":
        return c.num_workers == 1 and not c.use_gpu and not os.environ.get("RAY_ADDRESS")
    return c.launcher == "local"


# Ray Train's own fixed costs on a machine of our own (no cluster): the controller polls its
# workers every 2 s by default, so a finished job waits up to that long to end; the preemption
# watcher is one more actor process, for cloud spot instances.
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def _trainer(cfg: TrainConfig, loop, config: dict):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    c = cfg.compute
    local = in_process(cfg)
    if not local and not os.environ.get("RAY_ADDRESS"):
        for name, value in LOCAL_RAY_TRAIN_ENV.items():  # read by the controller, which the driver's env reaches
            os.environ.setdefault(name, value)
    return TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=0 if local else c.num_workers, use_gpu=c.use_gpu,
                                     resources_per_worker={"CPU": c.cpus_per_worker, **({"GPU": 1} if c.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        run_config=RunConfig(name=cfg.name, storage_path=run_dir(cfg).rsplit("/", 1)[0],
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )


def train(cfg: TrainConfig) -> dict:
    """Pre-train or fine-tune as `cfg` says; returns where the model went and its loss history."""
    cfg = absolute_paths(validate(cfg))
    if cfg.task == "eval":
        return evaluate_job(cfg)
    where = run_dir(cfg)
    fs, root = fsspec.core.url_to_fs(where)
    final = root + "/model"
    if fs.exists(final + "/history.json"):
        console.already_done()
        log.info("%s is finished: nothing to do (choose another name to train again)", where)
        return _summary(where, json.loads(fs.cat_file(final + "/history.json")))
    config = {"cfg": cfg.to_dict(), "pieces": pieces_of(cfg), "tokenizer": _tokenizer_dir(cfg, where)}
    local = in_process(cfg)
    if local:
        config["run"] = where
    else:
        _ray_init(cfg)
    result = _trainer(cfg, train_loop, config).fit()
    if result.error is not None:
        raise CapfiltError(f"training run {cfg.name} failed: {result.error}")
    last = train_checkpoints.latest(where) if local else result.checkpoint
    if last is None:
        raise CapfiltError(f"training run {cfg.name} ended without a checkpoint")
    state = _publish(last, fs, final)
    history = {"task": cfg.task, "name": cfg.name, "steps": state["step"] if state else None,
               "resumed_at": state["resumed_at"] if state else [], "precision": state.get("precision") if state else None,
               "history": state["history"] if state else []}
    with fs.open(final + "/history.json", "w") as fh:  # written last: marks the run finished
        json.dump(history, fh, indent=1)
    return _summary(where, history)


def _publish(checkpoint, fs, final: str) -> dict | None:
    """Copy the last checkpoint's model folder (not its train_state.pt) to `final`; return the state.
    `checkpoint`: a Ray Train Checkpoint, or the path of one of ours."""
    state = None
    fs.makedirs(final, exist_ok=True)
    folder = local_folder(checkpoint) if isinstance(checkpoint, str) else checkpoint.as_directory()
    with folder as local:
        for path in sorted(Path(local).iterdir()):
            if path.name == TRAIN_STATE:
                state = torch.load(path, weights_only=True)
            elif path.is_file():
                fs.put_file(str(path), f"{final}/{path.name}")
    return state


def _summary(where: str, history: dict) -> dict:
    return {"run": where, "model": where + "/model", **history}


def eval_loop(config: dict) -> None:
    import ray.train
    cfg = TrainConfig.from_dict(config["cfg"])
    if ray.train.get_context().get_world_rank() != 0:
        return
    torch.set_num_threads(cfg.compute.threads or max(1, int(cfg.compute.cpus_per_worker)))
    e = cfg.eval
    out = evaluate(cfg.model.init, cfg.data.test, cfg.data.image_root, k_test=e.k_test, num_beams=e.num_beams,
                   max_length=e.max_length, min_length=e.min_length, batch_size=e.batch_size,
                   device="cuda" if cfg.compute.use_gpu else "cpu", prompt=cfg.optim.prompt, captioner=e.captioner,
                   image_size=cfg.model.image_size, precision=cfg.compute.precision)
    fs, path = fsspec.core.url_to_fs(cfg.model.init.rstrip("/") + "/eval.json")
    with fs.open(path, "w") as fh:
        json.dump({"test": cfg.data.test, "captioner": e.captioner or cfg.model.init, **out}, fh, indent=1)
    ray.train.report(out["figures"])


def evaluate_job(cfg: TrainConfig) -> dict:
    """`capfilt eval`: one Ray Train worker (a GPU one when asked) scores the checkpoint; the
    figures land in `{checkpoint}/eval.json`."""
    cfg = dataclasses.replace(cfg, compute=dataclasses.replace(cfg.compute, num_workers=1))
    if not in_process(cfg):
        _ray_init(cfg)
    result = _trainer(cfg, eval_loop, {"cfg": cfg.to_dict()}).fit()
    if result.error is not None:
        raise CapfiltError(f"evaluation {cfg.name} failed: {result.error}")
    fs, path = fsspec.core.url_to_fs(cfg.model.init.rstrip("/") + "/eval.json")
    return json.loads(fs.cat_file(path))


# -- command line -------------------------------------------------------------------------------

def add_parsers(sub: argparse._SubParsersAction) -> None:
    for command, helptext in (("pretrain", "pre-train MED (ITC + ITM + LM) with Ray Train"),
                              ("finetune", "fine-tune the captioner (LM) or the filter (ITC + ITM) on human captions"),
                              ("eval", "retrieval R@1/5/10 and BLEU-4/CIDEr of a checkpoint on a Karpathy test file")):
        p = sub.add_parser(command, help=helptext)
        p.add_argument("--config", required=True, help="training config (YAML); see configs/train.example.yaml")
        p.add_argument("--name", help="override the run name")
        if command == "finetune":
            p.add_argument("--task", required=True, choices=("caption", "filter"))
        if command == "eval":
            p.add_argument("--checkpoint", help="override model.init: the checkpoint to evaluate")
        dashboard.add_options(p)
        p.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    task = {"pretrain": "pretrain", "eval": "eval"}.get(args.command) or args.task
    cfg = load(args.config, init=getattr(args, "checkpoint", None), task=task, name=args.name)
    board = dashboard.from_args(cfg.compute.dashboard, args)
    cfg = validate(dataclasses.replace(cfg, compute=dataclasses.replace(cfg.compute, dashboard=board)))
    out = train(cfg)
    if cfg.task == "eval":
        print(json.dumps(out["figures"], indent=2))
    else:
        last = out["history"][-1] if out.get("history") else {}
        print(json.dumps({"model": out["model"], "steps": out.get("steps"), "last": last}, indent=2))
    return 0
