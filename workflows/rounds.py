"""BLIP's bootstrapping loop, one step per function (the Dagster assets call these):

    round k: pre-train from scratch (round 0: raw web + human; round k: round k-1's CapFilt
    output + human) -> fine-tune the captioner (LM) and the filter (ITC + ITM) on human captions
    -> evaluate (retrieval with the filter, CIDEr with the captioner) -> CapFilt the web shards
    with them (feeds round k+1)

Every step is idempotent: a training run whose `model/history.json` exists and a CapFilt output
whose manifest is complete are reused, so a killed bootstrap rerun picks up where it stopped.

An embedding (the demo, demo/) adds to the loop only through `Embedding`: it makes the data the
config names, gives the truth of a CapFilt output's web texts for its report, and adds to the
summary. Production never imports it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.errors import CapfiltError
from pipeline import manifest as mf
from pipeline import storage
from pipeline.report import write_report
from workflows.bootstrap_config import (BootstrapConfig, capfilt_config, eval_config, finetune_config,
                                        pretrain_config)
from workflows import console
from workflows.launch import IN_PROCESS, Launch

log = logging.getLogger(__name__)


def given_data(cfg: BootstrapConfig) -> dict:
    """The web shards, human captions and test split the config names, each checked to exist."""
    d = cfg.data
    missing = [p for p in (d.web, *d.human, d.test) if not storage.exists(p)]
    if missing:
        raise CapfiltError(f"the bootstrap's data is missing: {', '.join(missing)} (data.web, data.human, data.test)")
    return {"web": d.web, "human": list(d.human), "test": d.test}


@dataclass
class Embedding:
    """What an embedding of the bootstrap adds through the general injection points.

    prepare(cfg) -> data: makes the data the config names (e.g. renders and downloads a world) and
        returns {"web", "human", "test", ...}; extra keys become the data asset's metadata.
    truth(data, capfilt_output) -> {run key: {"noise", "correct"}} or None: what the report knows of
        the web texts (pipeline/report.py write_report's truth).
    summarise(cfg, data, rounds) -> (table, extra): the bootstrap's table (Markdown) and more figures
        for report/bootstrap.json, from the rounds' figures.
    steps: the console steps (workflows/console.py step) prepare opens itself, in order; none:
        the data asset is one step, "data".
    """
    prepare: Callable[[BootstrapConfig], dict] = given_data
    truth: Callable[[dict, str], dict | None] | None = None
    summarise: Callable[[BootstrapConfig, dict, list[dict]], tuple[str, dict]] | None = None
    steps: tuple[str, ...] = ()


# -- training ---------------------------------------------------------------------------------

def pretrain(cfg: BootstrapConfig, k: int, data: dict, shards: str, launch: Launch = IN_PROCESS) -> str:
    """Round k's model, pre-trained from scratch on `shards` + the human captions."""
    return launch.train(pretrain_config(cfg, k, shards, data["human"]))["model"]


def finetune(cfg: BootstrapConfig, k: int, data: dict, init: str, task: str, launch: Launch = IN_PROCESS) -> str:
    """Round k's captioner (task caption) or filter (task filter), fine-tuned apart from `init`."""
    return launch.train(finetune_config(cfg, k, task, init, data["human"]))["model"]


def evaluate(cfg: BootstrapConfig, k: int, data: dict, filter_ckpt: str, captioner: str,
             launch: Launch = IN_PROCESS) -> dict:
    """Retrieval (filter) and CIDEr (captioner) on the test split; cached in eval.json."""
    saved = Path(filter_ckpt) / "eval.json"
    if saved.exists():
        out = json.loads(saved.read_text())
        if out.get("captioner") == captioner:
            console.already_done()
            return out["figures"]
    return launch.train(eval_config(cfg, k, filter_ckpt, captioner, data["test"]))["figures"]


# -- CapFilt ----------------------------------------------------------------------------------

def capfilt(cfg: BootstrapConfig, data: dict, captioner: str, filter_ckpt: str, name: str,
            shards: str | None = None, embedding: Embedding | None = None, *, round: int | None = None,
            previous: str = "", against: list[str] = (), launch: Launch = IN_PROCESS) -> dict:
    """CapFilt the web shards (or `shards`) with a captioner and a filter into `out/name`; returns
    the manifest with the output's path. `round`: the round whose models these are; `previous`
    and `against`: the earlier versions of the dataset it is diffed and deduplicated against
    (workflows/bootstrap_config.py capfilt_config); `launch`: where the run runs
    (workflows/launch.py). With an embedding that knows the truth, the report says what the
    filter did to the noise."""
    source = shards or data["web"]
    run_cfg = capfilt_config(cfg, source, captioner, filter_ckpt, str(Path(cfg.out) / name), round=round,
                             previous=previous, against=against)
    if storage.exists(run_cfg.output.rstrip("/") + "/" + mf.MANIFEST):  # run reuses it (or refuses a stranger's)
        console.already_done()
    manifest = launch.capfilt(run_cfg, progress_every=30)
    truth = embedding.truth(data, source) if embedding and embedding.truth else None
    if truth is not None:
        write_report(run_cfg.output, threshold=run_cfg.filter.threshold, truth=truth)
    return {"output": run_cfg.output, **manifest}


# -- the table across rounds --------------------------------------------------------------------

def rounds_table(rounds: list[dict], noisy: dict[int, float | None] | None = None) -> str:
    """BLIP's Table 1 for the rounds run: the no-CapFilt model (round 0) against the CapFilt ones;
    `noisy`: the noisy share of each round's pre-training web texts, where it is known."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    head = "| model | pre-training data |" + (" noisy web texts |" if noisy is not None else "")
    lines = [head + " TR R@1 | TR R@5 | IR R@1 | IR R@5 | CIDEr |",
             "|---|---|" + ("---|" if noisy is not None else "") + "---|---|---|---|---|"]
    for r in rounds:
        f, k = r["eval"], r["round"]
        data = "raw web + human" if k == 0 else f"round {k - 1} CapFilt (kept web + synthetic) + human"
        cells = f"| round {k} ({'no CapFilt' if k == 0 else 'CapFilt'}) | {data} |"
        if noisy is not None:
            cells += f" {pct(noisy.get(k))} |"
        lines.append(cells + f" {f['txt_r1']:.1f} | {f['txt_r5']:.1f} | {f['img_r1']:.1f} | {f['img_r5']:.1f} | "
                     f"{f['cider']:.3f} |")
    return "\n".join(lines)
