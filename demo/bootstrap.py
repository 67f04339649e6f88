"""`capfilt demo`: the embedded default, BLIP's bootstrapping on the synthetic world, through the
general bootstrap (workflows/) and its injection points (workflows/rounds.py Embedding):

- prepare: render the world, serve its web on 127.0.0.1 and download it with img2dataset (once),
  and train the vision warm-up (once) that every round's image encoder starts from;
- truth: the world's truth of every web text, for the CapFilt report;
- summarise: BLIP's Table 1 with what the truth says (noise before and after the filter, the
  filter's precision and recall, the kept synthetic captions' correctness) and the warm-up's figures.
"""
from __future__ import annotations

import json
import logging

import torch

from demo.config import DemoConfig, load
from demo.table1 import table1
from demo.truth import table1_figures, truth_for_report
from demo.warmup import FIGURES, train_vision_warmup
from demo.world import SynthConfig, generate, serve_synthetic
from pipeline.download import download, read_stats
from workflows import console
from workflows.bootstrap_cmd import bootstrap
from workflows.bootstrap_config import BootstrapConfig
from workflows.rounds import Embedding, given_data

log = logging.getLogger(__name__)


def make_world(demo: DemoConfig) -> None:
    """Render the synthetic world the config names, unless it is made already."""
    cfg, world = demo.bootstrap, demo.demo.world
    if not (demo.world_dir / "synth.json").exists():
        generate(demo.world_dir, SynthConfig(seed=cfg.seed, web=world.web, human=world.human, test=world.test,
                                             noise=world.noise, image_size=world.image_size,
                                             objects=list(world.objects)), overwrite=True)


# The console steps prepare opens (workflows/console.py): the bootstrap numbers them with its own.
STEPS = ("world + download", "vision warm-up")


def prepare(demo: DemoConfig) -> dict:
    """The world's web shards, human captions and test split (made once), and the warm-up (once)."""
    world = demo.demo.world
    synth, shards = demo.world_dir, demo.shards_dir
    with console.step(STEPS[0]) as s:
        if (synth / "synth.json").exists() and list(shards.glob("*_stats.json")):
            console.already_done()
        make_world(demo)
        if not list(shards.glob("*_stats.json")):
            with serve_synthetic(synth, demo.out / "url_list.parquet") as urls:
                download(urls, str(shards), image_size=world.image_size, shard_size=500, timeout=10,
                         allow_hosts=("127.0.0.1",))
        stats = read_stats(str(shards))
        s.done(f"{world.web} web, {world.human} human, {world.test} test images; "
               f"{stats.successes}/{stats.count} downloaded")
    data = given_data(demo.bootstrap)
    with console.step(STEPS[1]) as s:
        before = warmup_figures(demo)
        figures = warmup(demo)
        if figures is None:
            s.done("none: the rounds start from a random ViT")
        else:
            if figures == before:
                console.already_done()
            s.done(f"{figures['steps']} steps  held-out " + "  ".join(
                f"{a} {100 * v:.0f}%" for a, v in figures["accuracy"].items()))
            data["vision_warmup_accuracy"] = json.dumps(figures["accuracy"])
    return data


def warmup(demo: DemoConfig) -> dict | None:
    """Train (or reuse) the vision warm-up when the rounds start from it; its figures, else None."""
    folder = demo.warmup_dir
    if folder is None:
        return None
    t = demo.bootstrap.train
    if t.compute.threads:
        torch.set_num_threads(t.compute.threads)
    optim = demo.bootstrap.optim("pretrain")
    return train_vision_warmup(folder, t.model.preset, 0, demo.demo.vision_warmup, seed=demo.bootstrap.seed,
                               batch_size=optim.batch_size, lr=optim.lr,
                               device="cuda" if t.compute.use_gpu else "cpu")


def warmup_figures(demo: DemoConfig) -> dict | None:
    """The warm-up's figures when the rounds started from it and it has run; else None."""
    folder = demo.warmup_dir
    return json.loads((folder / FIGURES).read_text()) if folder is not None and (folder / FIGURES).exists() else None


def embedding(demo: DemoConfig) -> Embedding:
    def summarise(cfg: BootstrapConfig, data: dict, rounds: list[dict]) -> tuple[str, dict]:
        capfilt0 = demo.out / "round0_capfilt"
        done = str(capfilt0) if (capfilt0 / "manifest.json").exists() else None
        truth = table1_figures(data["web"], demo.world_dir, done)
        figures = warmup_figures(demo)
        return table1(rounds, truth, figures), {"truth": truth, "vision_warmup": figures}

    return Embedding(prepare=lambda cfg: prepare(demo),
                     truth=lambda data, shards: truth_for_report(shards, demo.world_dir),
                     summarise=summarise, steps=STEPS)


def run(config: str, rounds: int | None = None) -> dict:
    demo = load(config, rounds=rounds)
    return bootstrap(demo.bootstrap, embedding(demo))
