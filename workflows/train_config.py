"""The config of a training job (pre-train, fine-tune the captioner or the filter, evaluate):
YAML in, validated dataclasses out, one clear message per mistake."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import CapfiltError
from models.precision import DEFAULT_PRECISION, PRECISIONS
from models.sampling import DEFAULT_PROMPT
from workflows.train_step import COMPILE, STEPS
from pipeline import dashboard
from pipeline.config import build, read_yaml
from pipeline.dashboard import Dashboard

TASKS = ("pretrain", "caption", "filter", "eval")
LAUNCHERS = ("auto", "ray", "local")
# the losses each task trains (BLIP: the captioner is the decoder with LM; the filter the
# image-grounded encoder with ITC + ITM)
LOSSES = {"pretrain": ("itc", "itm", "lm"), "caption": ("lm",), "filter": ("itc", "itm")}
# tokens a training text is cut to (BLIP's: 30 words in pre-training, 40 for the captioner with its
# prompt, 35 for retrieval), when data.max_length is 0
TEXT_LENGTH = {"pretrain": 30, "caption": 40, "filter": 35}


@dataclass
class DataSection:
    shards: list[str] = field(default_factory=list)  # CapFilt outputs or raw img2dataset folders
    human: list[str] = field(default_factory=list)  # COCO-Karpathy JSON files (human captions)
    image_root: str = ""  # where the JSON's image paths start; "" = the folder above annotations/
    test: str = ""  # Karpathy test JSON for evaluation (5 captions per image)
    shuffle_buffer: int = 1000
    max_length: int = 0  # tokens a text is cut to; 0 = the task's (TEXT_LENGTH)


@dataclass
class ModelSection:
    preset: str = "base"  # for a model built from scratch (pre-training)
    init: str = ""  # a checkpoint to start from (fine-tuning: the pre-trained model)
    vit_init: str = ""  # pre-training from scratch: a timm ViT checkpoint (BLIP: ImageNet) for the image encoder
    tokenizer: str = ""  # a checkpoint folder or a vocab.txt; "" with vocab_size > 0 learns one
    vocab_size: int = 0  # learn a WordPiece vocabulary of this size from the human captions
    image_size: int = 0  # 0: the preset's (224) to pre-train, its fine-tuning size (384) otherwise
    grad_checkpointing: bool = False


@dataclass
class OptimSection:
    epochs: int = 20
    steps: int = 0  # > 0: stop after this many steps instead (tests, smoke runs)
    batch_size: int = 32  # per worker
    lr: float = 3e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_lr: float = 1e-6
    warmup_steps: int = 3000  # pre-training: linear warm-up, then lr x lr_decay per epoch
    lr_decay: float = 0.9
    schedule: str = ""  # "" = step (pre-training) or cosine (fine-tuning)
    prompt: str = DEFAULT_PROMPT  # the captioner's prompt, masked from its loss
    # the image encoder's lr as a share of lr: below 1 a pre-trained ViT (ImageNet, or the demo's
    # warm-up) keeps more of what it knew while the new text parts learn at the full rate
    vit_lr_scale: float = 1.0


@dataclass
class AugmentSection:
    enabled: bool = True  # BLIP's: random resized crop, horizontal flip, RandAugment
    hflip: bool = True
    randaugment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])


@dataclass
class TrainCompute:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads: int = 0  # torch threads per worker; 0 = its CPUs (at least 1)
    precision: str = DEFAULT_PRECISION  # auto: bf16 where the device runs it natively (models/precision.py), else fp32
    # ray: Ray Train workers (several, GPUs, restarts of a lost worker); local: this process (starts
    # in a second); auto: local for one CPU worker off a cluster (workflows/train.py in_process)
    launcher: str = "auto"
    step: str = "fast"  # fast (fused AdamW, no per-step read-back) | eager (the plain path, for debugging)
    compile: str = "auto"  # torch.compile the encoders in the fast step: on | off | auto (on for CUDA)
    dashboard: Dashboard = field(default_factory=Dashboard)  # Ray's dashboard on 127.0.0.1, for a Ray the job starts


@dataclass
class EvalSection:
    captioner: str = ""  # the checkpoint whose captions are scored; "" = model.init
    k_test: int = 256  # ITC candidates reranked by ITM (BLIP: 256 on COCO)
    num_beams: int = 3
    max_length: int = 20
    min_length: int = 5
    batch_size: int = 64


@dataclass
class TrainConfig:
    task: str = "pretrain"
    name: str = ""  # the run's name: relaunching the same name resumes it
    storage_path: str = "runs/train"  # any fsspec path
    checkpoint_every: int = 500  # steps (and at the end)
    max_failures: int = 3
    log_every: int = 50
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    compute: TrainCompute = field(default_factory=TrainCompute)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return build(cls, values, "train config")

    @property
    def losses(self) -> tuple[str, ...]:
        return LOSSES[self.task]

    @property
    def text_length(self) -> int:
        return self.data.max_length or TEXT_LENGTH.get(self.task, TEXT_LENGTH["pretrain"])

    @property
    def schedule(self) -> str:
        return self.optim.schedule or ("step" if self.task == "pretrain" else "cosine")


def validate(cfg: TrainConfig, mistakes: list[str] = ()) -> TrainConfig:
    """Every mistake in one message: the structural `mistakes` build collected, then the values."""
    problems = list(mistakes)
    if cfg.task not in TASKS:
        problems.append(f"task={cfg.task!r}: use one of {TASKS}")
    if not cfg.name:
        problems.append("name is empty: name the run (relaunching the same name resumes it)")
    if cfg.task in ("pretrain", "caption", "filter") and not (cfg.data.shards or cfg.data.human):
        problems.append("data.shards and data.human are both empty: give cleaned or raw shards and/or "
                        "Karpathy caption files")
    if cfg.task in ("caption", "filter", "eval") and not cfg.model.init:
        problems.append(f"task {cfg.task} needs model.init (the checkpoint to fine-tune or evaluate)")
    if cfg.task == "eval" and not cfg.data.test:
        problems.append("task eval needs data.test (a Karpathy test JSON)")
    if cfg.task == "pretrain" and not cfg.model.init and not cfg.model.tokenizer and cfg.model.vocab_size <= 0:
        problems.append("pre-training from scratch needs model.tokenizer (a folder or a vocab.txt) or model.vocab_size > 0")
    if cfg.model.vit_init and (cfg.task != "pretrain" or cfg.model.init):
        problems.append("model.vit_init starts the image encoder of a new model: use it only to pre-train "
                        "without model.init (a checkpoint already has its image encoder)")
    if cfg.optim.batch_size < 2:
        problems.append("optim.batch_size must be at least 2 (ITM draws its negatives from the batch)")
    if not 0.0 <= cfg.optim.vit_lr_scale <= 1.0:
        problems.append(f"optim.vit_lr_scale={cfg.optim.vit_lr_scale}: give a share of optim.lr in [0, 1]")
    if cfg.optim.epochs < 1 and cfg.optim.steps < 1:
        problems.append("give optim.epochs or optim.steps (>= 1)")
    if cfg.schedule not in ("step", "cosine"):
        problems.append(f"optim.schedule={cfg.optim.schedule!r}: use 'step' or 'cosine'")
    if cfg.compute.num_workers < 1:
        problems.append("compute.num_workers must be at least 1")
    if cfg.compute.launcher not in LAUNCHERS:
        problems.append(f"compute.launcher={cfg.compute.launcher!r}: use one of {LAUNCHERS}")
    elif cfg.compute.launcher == "local" and cfg.compute.num_workers != 1:
        problems.append(f"compute.launcher local trains in this process: it takes num_workers 1, not "
                        f"{cfg.compute.num_workers} (use launcher ray for several workers)")
    if cfg.compute.step not in STEPS:
        problems.append(f"compute.step={cfg.compute.step!r}: use one of {STEPS}")
    if cfg.compute.compile not in COMPILE:
        problems.append(f"compute.compile={cfg.compute.compile!r}: use one of {COMPILE}")
    if cfg.compute.precision not in PRECISIONS:
        problems.append(f"compute.precision={cfg.compute.precision!r}: use one of {PRECISIONS}")
    problems += dashboard.problems(cfg.compute.dashboard)
    if cfg.checkpoint_every < 1:
        problems.append("checkpoint_every must be at least 1 step")
    if problems:
        raise CapfiltError("the training config has mistakes:\n  - " + "\n  - ".join(problems))
    return cfg


def load(path: str | Path, init: str | None = None, **overrides) -> TrainConfig:
    """The config at `path`, top-level keys overridden, `init` (when given) as model.init."""
    values = read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if init:
        values["model"] = {**(values.get("model") or {}), "init": init}
    mistakes: list[str] = []
    cfg = build(TrainConfig, values, str(path), mistakes)
    return validate(cfg, mistakes)
