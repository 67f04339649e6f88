"""The bootstrap's config, one tree: the training config (workflows/train_config.py) and the CapFilt
run config (pipeline/config.py) are templates inside it, which every round's jobs change with
`dataclasses.replace`. Every default is the template's own, written once where the template is.

    out, seed, rounds, finetune_image_size, data    the bootstrap's own
    train:    TrainConfig     every training job starts from it (model, optim, augment, compute, eval)
    pretrain: {optim keys}    what pre-training changes in train.optim (e.g. steps, lr, warmup_steps)
    caption:  {optim keys}    ... the captioner's fine-tuning
    filter:   {optim keys}    ... the filter's fine-tuning
    capfilt:  RunConfig       every CapFilt run starts from it (captioner options, filter, compute)
    checks                    the asset checks' bounds
    launch                    where the jobs run: in the Dagster process, or as Ray jobs on a cluster
                              (workflows/launch.py)

The bootstrap sets per job what only it knows: the task, name, storage path and seed of each
training job, its data and starting checkpoint; the input, output, checkpoints, seed and image size
of each CapFilt run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import local_folder, read_config
from models.errors import CapfiltError
from pipeline.config import Mistakes, RunConfig, build, listing, read_yaml
from workflows import launch
from workflows.launch import LaunchSection
from workflows.train_config import OptimSection, TrainConfig
from workflows.train_config import validate as validate_train

JOBS = ("pretrain", "caption", "filter")


@dataclass
class DataSection:
    web: str = ""  # img2dataset folder of web shards
    human: list[str] = field(default_factory=list)  # COCO-Karpathy JSON of human captions
    test: str = ""  # Karpathy test JSON (5 captions per image)


@dataclass
class ChecksSection:  # asset checks guard each round
    min_keep_rate: float = 0.2
    max_keep_rate: float = 0.99


@dataclass
class BootstrapConfig:
    out: str = "runs/bootstrap"
    seed: int = 0  # every job's and every CapFilt run's seed
    rounds: int = 2
    # the image size of fine-tuning, evaluation and CapFilt; 0 = the preset's (BLIP: 384 after
    # pre-training at 224)
    finetune_image_size: int = 0
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: dict = field(default_factory=dict)
    caption: dict = field(default_factory=dict)
    filter: dict = field(default_factory=dict)
    capfilt: RunConfig = field(default_factory=RunConfig)
    checks: ChecksSection = field(default_factory=ChecksSection)
    launch: LaunchSection = field(default_factory=LaunchSection)

    def optim(self, job: str) -> OptimSection:
        """train.optim with what `job` changes in it."""
        return dataclasses.replace(self.train.optim, **getattr(self, job))

    @property
    def train_root(self) -> Path:
        return Path(self.out) / "train"


def from_dict(values: dict, where: str) -> BootstrapConfig:
    """A bootstrap config from a mapping; every mistake of it, and of the jobs it makes, in one
    message, found now rather than an hour into the bootstrap."""
    mistakes = Mistakes()
    cfg = build(BootstrapConfig, values, where, mistakes)
    found = list(mistakes)
    if cfg.rounds < 1:
        found.append("rounds must be at least 1")
    if not (cfg.data.web and cfg.data.human and cfg.data.test):
        found.append("give data.web (img2dataset shards), data.human (Karpathy JSON) and data.test")
    found += launch.problems(cfg.launch)
    optim = dataclasses.asdict(cfg.train.optim)
    for job in JOBS:  # each job's optim is train.optim with its keys: checked as one OptimSection
        build(OptimSection, {**optim, **getattr(cfg, job)}, f"{where}: {job} (over train.optim)", found)
    if not found:
        human = cfg.data.human
        for make in (lambda: pretrain_config(cfg, 0, cfg.data.web, human),
                     lambda: finetune_config(cfg, 0, "caption", "pretrained", human),
                     lambda: finetune_config(cfg, 0, "filter", "pretrained", human),
                     lambda: eval_config(cfg, 0, "filter", "captioner", cfg.data.test)):
            try:
                make()
            except CapfiltError as err:
                found += [line[4:] for line in str(err).splitlines()[1:]] or [str(err)]
    if found:
        raise listing(f"{where} has mistakes", found)
    return cfg


def load(path: str | Path, **overrides) -> BootstrapConfig:
    """The bootstrap config in a YAML file, top-level keys overridden (e.g. rounds)."""
    values = read_yaml(path)
    if "demo" in values:
        raise CapfiltError(f"{path} is the demo's config (it has a demo section): run it with "
                           f"`capfilt demo --config {path}`")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values, str(path))


# -- each job's config, from the templates ------------------------------------------------------

def _job(cfg: BootstrapConfig, task: str, name: str, *, model: dict, data: dict, optim: OptimSection | None = None,
         **sections) -> TrainConfig:
    t = cfg.train
    job = dataclasses.replace(
        t, task=task, name=name, storage_path=str(cfg.train_root), seed=cfg.seed,
        model=dataclasses.replace(t.model, **model), data=dataclasses.replace(t.data, **data),
        optim=optim or t.optim, **sections)
    return validate_train(job)


def pretrain_config(cfg: BootstrapConfig, k: int, shards: str, human: list[str]) -> TrainConfig:
    """Round k's pre-training from scratch on `shards` + the human captions; every round after the
    first speaks round 0's vocabulary."""
    model = {"init": "", "image_size": 0}
    if k > 0:
        model.update(tokenizer=str(cfg.train_root / "round0_pretrain" / "tokenizer"), vocab_size=0)
    return _job(cfg, "pretrain", f"round{k}_pretrain", model=model, data={"shards": [shards], "human": list(human)},
                optim=cfg.optim("pretrain"))


def finetune_config(cfg: BootstrapConfig, k: int, task: str, init: str, human: list[str]) -> TrainConfig:
    """Round k's captioner (task caption) or filter (task filter), fine-tuned apart from `init` on
    the human captions alone."""
    job = "caption" if task == "caption" else "filter"
    model = {"init": init, "image_size": cfg.finetune_image_size, "vit_init": "", "tokenizer": "", "vocab_size": 0}
    return _job(cfg, task, f"round{k}_{'captioner' if task == 'caption' else 'filter'}", model=model,
                data={"shards": [], "human": list(human)}, optim=cfg.optim(job))


def eval_config(cfg: BootstrapConfig, k: int, filter_ckpt: str, captioner: str, test: str) -> TrainConfig:
    model = {"init": filter_ckpt, "image_size": cfg.finetune_image_size, "vit_init": "", "tokenizer": "",
             "vocab_size": 0}
    return _job(cfg, "eval", f"round{k}_eval", model=model, data={"shards": [], "human": [], "test": test},
                eval=dataclasses.replace(cfg.train.eval, captioner=captioner))


def capfilt_config(cfg: BootstrapConfig, shards: str, captioner: str, filter_ckpt: str, output: str, *,
                   round: int | None = None, previous: str = "", against: list[str] = ()) -> RunConfig:
    """A CapFilt run of the web `shards` with this round's captioner and filter, at the fine-tuning
    size (the filter checkpoint's, unless the bootstrap names one). `round` is the bootstrap round
    whose models make it (each kept text carries it); a dataset version names the `previous`
    version it is diffed against and the earlier versions it is deduplicated `against` (beside
    those the template's dedup.against names)."""
    with local_folder(filter_ckpt) as local:
        size = cfg.finetune_image_size or read_config(local)[1].finetune_image_size
    c = cfg.capfilt
    extra = [str(p) for p in against if str(p) not in c.dedup.against]
    return dataclasses.replace(
        c, input=dataclasses.replace(c.input, path=shards), output=output, image_size=size, seed=cfg.seed,
        captioner=dataclasses.replace(c.captioner, checkpoint=captioner),
        filter=dataclasses.replace(c.filter, checkpoints=[filter_ckpt]),
        dedup=dataclasses.replace(c.dedup, against=[*c.dedup.against, *extra]),
        lineage=dataclasses.replace(c.lineage, round=c.lineage.round if round is None else round,
                                    previous=previous or c.lineage.previous))
