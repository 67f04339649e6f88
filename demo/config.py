"""The demo's config: a bootstrap config (workflows/bootstrap_config.py) plus a `demo` section, the
synthetic world that stands in for the data and the vision warm-up that stands in for BLIP's
ImageNet start. One YAML (configs/demo.yaml), read once.

The demo fills what the bootstrap config would name in production: `data.web`, `data.human` and
`data.test` (the world, rendered and downloaded under `out`), and, with a warm-up,
`train.model.vit_init` (the warm-up's checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from demo.warmup import CHECKPOINT
from demo.world.world import N_OBJECTS_P
from models.errors import CapfiltError
from pipeline.config import Mistakes, build, listing, read_yaml
from workflows.bootstrap_config import BootstrapConfig
from workflows.bootstrap_config import from_dict as bootstrap_from_dict

WARMUP = "vision_warmup"  # the warm-up's folder under the bootstrap's train/


@dataclass
class WorldSection:  # demo/world/splits.py SynthConfig: what the synthetic web looks like
    web: int = 2000
    human: int = 1000
    test: int = 200
    noise: float = 0.4  # share of noisy web alt-texts
    image_size: int = 64
    objects: list[int] = field(default_factory=lambda: list(N_OBJECTS_P))  # scene sizes that may be drawn


@dataclass
class DemoSection:
    world: WorldSection = field(default_factory=WorldSection)
    # train the ViT this many steps on labelled scenes first, the demo's stand-in for BLIP's
    # ImageNet start (demo/warmup.py); 0: a random start
    vision_warmup: int = 0


@dataclass
class DemoConfig:
    demo: DemoSection
    bootstrap: BootstrapConfig
    warmup: bool = False  # every round's image encoder starts from the vision warm-up

    @property
    def out(self) -> Path:
        return Path(self.bootstrap.out)

    @property
    def world_dir(self) -> Path:
        return self.out / "synth"

    @property
    def shards_dir(self) -> Path:
        return Path(self.bootstrap.data.web)

    @property
    def warmup_dir(self) -> Path | None:
        """Where the vision warm-up lives when the rounds start from it; None otherwise (a random
        start, or a train.model.vit_init the config names itself)."""
        return self.bootstrap.train_root / WARMUP if self.warmup else None


def from_dict(values: dict, where: str) -> DemoConfig:
    """The demo config from a mapping; every mistake of it in one message."""
    values = dict(values)
    mistakes = Mistakes()
    section = build(DemoSection, values.pop("demo", None) or {}, f"{where}: demo", mistakes)
    if mistakes:
        raise listing(f"{where} has mistakes", list(mistakes))
    if values.get("data"):
        raise CapfiltError(f"{where}: the demo makes its own data (demo.world): leave data out, or run "
                           "`capfilt bootstrap` on a config that names your own data")
    out = Path(values.get("out") or BootstrapConfig.out)
    annotations = out / "synth" / "annotations"
    values["data"] = {"web": str(out / "web_shards"), "human": [str(annotations / "human.json")],
                      "test": str(annotations / "test.json")}
    train = dict(values.get("train") or {})
    model = dict(train.get("model") or {})
    warmup = section.vision_warmup > 0 and not model.get("vit_init")
    if warmup:  # every round's image encoder starts from the warm-up's checkpoint
        model["vit_init"] = str(out / "train" / WARMUP / CHECKPOINT)
        values["train"] = {**train, "model": model}
    return DemoConfig(section, bootstrap_from_dict(values, where), warmup)


def load(path: str | Path, **overrides) -> DemoConfig:
    """The demo config in a YAML file, top-level keys overridden (e.g. rounds)."""
    values = read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values, str(path))
