"""BLIP's bootstrapping loop, one step per function (the Dagster assets call these):

    round k: pre-train from scratch (round 0: raw web + human; round k: round k-1's CapFilt
    output + human) -> fine-tune the captioner (LM) and the filter (ITC + ITM) on human captions
    -> evaluate (retrieval with the filter, CIDEr with the captioner) -> CapFilt the web shards
    with them (feeds round k+1)

Every step is idempotent: a training run whose `model/history.json` exists and a CapFilt output
whose manifest is complete are reused, so a killed bootstrap rerun picks up where it stopped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import CapfiltError
from models.precision import DEFAULT_PRECISION
from pipeline.config import build, read_yaml
from demo.world.world import N_OBJECTS_P

log = logging.getLogger(__name__)


@dataclass
class SynthSection:  # the demo's synthetic world (demo/world); enabled: it stands in for the data
    enabled: bool = False
    web: int = 2000
    human: int = 1000
    test: int = 200
    noise: float = 0.4
    image_size: int = 64
    objects: list[int] = field(default_factory=lambda: list(N_OBJECTS_P))  # scene sizes that may be drawn


@dataclass
class DataSection:
    web: str = ""  # img2dataset folder of web shards (the demo: synthesised and downloaded)
    human: list[str] = field(default_factory=list)  # COCO-Karpathy JSON of human captions
    test: str = ""  # Karpathy test JSON (5 captions per image)


@dataclass
class ModelSection:
    preset: str = "base"
    tokenizer: str = ""  # a folder or vocab.txt; "" with vocab_size > 0 learns one from the human captions
    vocab_size: int = 0
    vit_init: str = ""  # a timm ViT checkpoint (BLIP: ImageNet) every round's image encoder starts from


@dataclass
class StepsSection:
    pretrain: int = 400
    caption: int = 150
    filter: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    warmup_steps: int = 50
    # synthetic world without model.vit_init: train the ViT this many steps on labelled scenes first,
    # the demo's stand-in for BLIP's ImageNet start (demo/warmup.py); 0: random start
    vision_warmup: int = 0
    # every job's image-encoder lr as a share of its lr (optim.vit_lr_scale); the demo's warm-up
    # ViT trained at the full rate forgot most of its shape (linear probe 79% -> 45% in round 0)
    vit_lr_scale: float = 1.0


@dataclass
class ComputeSection:
    num_workers: int = 1
    cpus_per_worker: float = 2.0
    threads: int = 0
    use_gpu: bool = False
    precision: str = DEFAULT_PRECISION  # every job's and CapFilt's (auto: bf16 where the device runs it natively)
    capfilt_batch_size: int = 64


@dataclass
class ChecksSection:  # asset checks guard each round
    min_keep_rate: float = 0.2
    max_keep_rate: float = 0.99


@dataclass
class BootstrapConfig:
    out: str = "runs/bootstrap"
    seed: int = 0
    rounds: int = 2
    threshold: float = 0.5
    # fine-tuning and CapFilt image size; 0 = the preset's (BLIP: 384 after pre-training at 224).
    # The CPU demo keeps its pre-training size: the tiny preset's 96 px more than doubles the cost.
    finetune_image_size: int = 0
    synth: SynthSection = field(default_factory=SynthSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    steps: StepsSection = field(default_factory=StepsSection)
    compute: ComputeSection = field(default_factory=ComputeSection)
    checks: ChecksSection = field(default_factory=ChecksSection)
    k_test: int = 16


def load(path: str | Path, **overrides) -> BootstrapConfig:
    values = read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    mistakes: list[str] = []  # structural and value mistakes, all in one message
    cfg = build(BootstrapConfig, values, str(path), mistakes)
    if cfg.rounds < 1:
        mistakes.append("rounds must be at least 1")
    if not cfg.synth.enabled and not (cfg.data.web and cfg.data.human and cfg.data.test):
        mistakes.append("give data.web, data.human and data.test (or enable synth for the demo)")
    if mistakes:
        raise CapfiltError(f"{path} has mistakes:\n  - " + "\n  - ".join(mistakes))
    return cfg


# -- the data ---------------------------------------------------------------------------------

def prepare_data(cfg: BootstrapConfig) -> dict:
    """The web shards, human captions and test split: given, or (demo) synthesised and downloaded
    over 127.0.0.1 once."""
    if not cfg.synth.enabled:
        return {"web": cfg.data.web, "human": list(cfg.data.human), "test": cfg.data.test, "synth": None}
    from pipeline.download import download
    from demo.world import SynthConfig, generate, serve_synthetic

    out = Path(cfg.out)
    synth, shards = out / "synth", out / "web_shards"
    s = cfg.synth
    if not (synth / "synth.json").exists():
        generate(synth, SynthConfig(seed=cfg.seed, web=s.web, human=s.human, test=s.test, noise=s.noise,
                                    image_size=s.image_size, objects=list(s.objects)), overwrite=True)
    if not list(shards.glob("*_stats.json")):
        with serve_synthetic(synth, out / "url_list.parquet") as urls:
            download(urls, shards, image_size=s.image_size, shard_size=500, timeout=10, allow_hosts=("127.0.0.1",))
    return {"web": str(shards), "human": [str(synth / "annotations" / "human.json")],
            "test": str(synth / "annotations" / "test.json"), "synth": str(synth)}


# -- training ---------------------------------------------------------------------------------

def _train_cfg(cfg: BootstrapConfig, task: str, name: str, **sections):
    from workflows.train_config import TrainConfig, validate

    c = cfg.compute
    values = {
        "task": task, "name": name, "storage_path": str(Path(cfg.out) / "train"), "seed": cfg.seed,
        "checkpoint_every": 100, "log_every": 50, "max_failures": 2,
        # the synthetic captions name sizes, places and left/right: crops and flips would falsify them
        "augment": {"enabled": not cfg.synth.enabled},
        "compute": {"num_workers": c.num_workers, "cpus_per_worker": c.cpus_per_worker, "threads": c.threads,
                    "use_gpu": c.use_gpu, "precision": c.precision},
        "eval": {"k_test": cfg.k_test},
    }
    values.update(sections)
    return validate(TrainConfig.from_dict(values))


def _warmup_dir(cfg: BootstrapConfig) -> Path | None:
    """Where the demo's vision warm-up lives when the rounds start from it (synthetic world,
    steps.vision_warmup > 0, no model.vit_init); None otherwise."""
    if cfg.model.vit_init or not (cfg.synth.enabled and cfg.steps.vision_warmup > 0):
        return None
    return Path(cfg.out) / "train" / "vision_warmup"


def vit_init(cfg: BootstrapConfig) -> str:
    """The checkpoint each round's image encoder starts from: model.vit_init, or a ViT trained once
    on labelled scenes (see _warmup_dir); "" for a random start."""
    out = _warmup_dir(cfg)
    if out is None:
        return cfg.model.vit_init
    from demo.warmup import CHECKPOINT, train_vision_warmup

    if cfg.compute.threads:
        import torch

        torch.set_num_threads(cfg.compute.threads)
    device = "cuda" if cfg.compute.use_gpu else "cpu"
    train_vision_warmup(out, cfg.model.preset, 0, cfg.steps.vision_warmup, seed=cfg.seed,
                        batch_size=cfg.steps.batch_size, lr=cfg.steps.lr, device=device)
    return str(out / CHECKPOINT)


def vision_warmup_figures(cfg: BootstrapConfig) -> dict | None:
    """The warm-up's figures (warmup.json) when the rounds started from it and it has run; else None."""
    from demo.warmup import FIGURES

    out = _warmup_dir(cfg)
    return json.loads((out / FIGURES).read_text()) if out is not None and (out / FIGURES).exists() else None


def pretrain(cfg: BootstrapConfig, k: int, data: dict, shards: str) -> str:
    """Round k's model, pre-trained from scratch on `shards` + the human captions."""
    from workflows.train import train

    s = cfg.steps
    model = {"preset": cfg.model.preset, "tokenizer": cfg.model.tokenizer, "vocab_size": cfg.model.vocab_size}
    if k > 0:  # every round speaks the same vocabulary: round 0's tokenizer
        model = {"preset": cfg.model.preset, "tokenizer": str(Path(cfg.out) / "train" / "round0_pretrain" / "tokenizer")}
    model["vit_init"] = vit_init(cfg)
    tc = _train_cfg(cfg, "pretrain", f"round{k}_pretrain", model=model,
                    data={"shards": [shards], "human": data["human"]},
                    optim={"steps": s.pretrain, "batch_size": s.batch_size, "lr": s.lr, "warmup_steps": s.warmup_steps,
                           "vit_lr_scale": s.vit_lr_scale})
    return train(tc)["model"]


def finetune(cfg: BootstrapConfig, k: int, data: dict, init: str, task: str) -> str:
    """Round k's captioner (task caption) or filter (task filter), fine-tuned apart from `init`."""
    from workflows.train import train

    s = cfg.steps
    tc = _train_cfg(cfg, task, f"round{k}_{'captioner' if task == 'caption' else 'filter'}",
                    model={"init": init, "image_size": cfg.finetune_image_size},
                    data={"human": data["human"]},
                    optim={"steps": s.caption if task == "caption" else s.filter, "batch_size": s.batch_size,
                           "lr": s.finetune_lr, "warmup_steps": 0, "vit_lr_scale": s.vit_lr_scale})
    return train(tc)["model"]


def evaluate(cfg: BootstrapConfig, k: int, data: dict, filter_ckpt: str, captioner: str) -> dict:
    """Retrieval (filter) and CIDEr (captioner) on the test split; cached in eval.json."""
    from workflows.train import train

    saved = Path(filter_ckpt) / "eval.json"
    if saved.exists():
        out = json.loads(saved.read_text())
        if out.get("captioner") == captioner:
            return out["figures"]
    tc = _train_cfg(cfg, "eval", f"round{k}_eval", model={"init": filter_ckpt, "image_size": cfg.finetune_image_size},
                    data={"test": data["test"]}, eval={"k_test": cfg.k_test, "captioner": captioner})
    return train(tc)["figures"]


# -- CapFilt ----------------------------------------------------------------------------------

def capfilt(cfg: BootstrapConfig, k: int, data: dict, captioner: str, filter_ckpt: str, shards: str | None = None,
            name: str | None = None) -> dict:
    """CapFilt the web shards with round k's captioner and filter; returns the manifest."""
    from models.checkpoint import local_folder, read_config
    from pipeline.config import RunConfig
    from pipeline.config import build as build_run
    from pipeline.run import run

    with local_folder(filter_ckpt) as local:
        size = cfg.finetune_image_size or read_config(local)[1].finetune_image_size
    target = Path(cfg.out) / (name or f"round{k}_capfilt")
    run_cfg = build_run(RunConfig, {
        "input": {"path": shards or data["web"]}, "output": str(target), "image_size": size, "seed": cfg.seed,
        "captioner": {"checkpoint": captioner, "max_length": 20}, "filter": {"checkpoints": [filter_ckpt],
                                                                           "threshold": cfg.threshold},
        "compute": {"batch_size": cfg.compute.capfilt_batch_size, "rows_per_shard": 1000,
                    "precision": cfg.compute.precision,
                    "num_gpus": 0.5 if cfg.compute.use_gpu else 0.0},
    }, "bootstrap")
    manifest = run(run_cfg, progress_every=30)
    if data.get("synth"):  # the demo: say from the truth what the filter did
        from pipeline.report import truth_from_synth, write_report

        write_report(str(target), threshold=cfg.threshold, truth=truth_from_synth(shards or data["web"], data["synth"]))
    return {"output": str(target), **manifest}


# -- what the rounds did, from the truth (demo) -------------------------------------------------

def truth_figures(data: dict, capfilt_out: str | None) -> dict:
    """Noisy share of the web texts before and after the filter, the filter's precision and recall
    per noise type, share of clean web texts kept, correctness of kept synthetic captions."""
    import pyarrow.parquet as pq

    from pipeline.sinks import read_shards
    from pipeline.sources import shard_parquets
    from demo.world import judge

    synth = Path(data["synth"])
    truth = {r["key"]: r for r in pq.read_table(synth / "truth" / "web.parquet").to_pylist()}
    source = {}
    for f in shard_parquets(data["web"]):
        t = pq.read_table(f, columns=["key", "source_key", "status"])
        source.update({k: s for k, s, st in zip(t["key"].to_pylist(), t["source_key"].to_pylist(),
                                                 t["status"].to_pylist()) if st == "success"})
    noisy = {k: not truth[s]["judged_correct"] for k, s in source.items()}
    out = {"web_texts": len(noisy), "noisy_before": sum(noisy.values()) / max(1, len(noisy))}
    # A filter that reads colour but not shape, size, place or relation can at best drop every
    # mismatch, junk, empty and wrong-colour text and keep the finer errors at its clean rate
    # (whatever that rate, it cancels): the least noisy share such a filter can leave.
    fine = sum(1 for k, s in source.items() if noisy[k] and truth[s]["noise"] == "wrong_attribute"
               and truth[s]["attribute"] != "colour")
    out["noisy_floor_colour_only"] = fine / max(1, fine + sum(not v for v in noisy.values()))
    if capfilt_out is None:
        return out
    kept = read_shards(capfilt_out, columns=["key", "texts", "origins"]).to_pylist()
    web_kept = {r["key"] for r in kept if "web" in r["origins"]}
    out["noisy_after"] = sum(noisy[k] for k in web_kept) / max(1, len(web_kept))
    clean = [k for k in noisy if not noisy[k]]
    out["clean_kept"] = sum(k in web_kept for k in clean) / max(1, len(clean))
    def drop_rates(group) -> dict[str, float]:
        """Share of the web texts dropped in each group that group(truth row) names (None: none)."""
        counts: dict[str, list[int]] = {}
        for k, s in source.items():
            g = group(truth[s])
            if g is not None:
                c = counts.setdefault(g, [0, 0])
                c[0] += 1
                c[1] += k not in web_kept
        return {g: d / n for g, (n, d) in sorted(counts.items())}

    out["dropped_by_noise"] = drop_rates(lambda t: t["noise"])
    out["dropped_by_attribute"] = drop_rates(lambda t: t["attribute"] if t["noise"] == "wrong_attribute" else None)
    dropped_noisy = sum(1 for k in noisy if noisy[k] and k not in web_kept)
    dropped = sum(1 for k in noisy if k not in web_kept)
    out["filter_precision"] = dropped_noisy / max(1, dropped)
    out["filter_recall"] = dropped_noisy / max(1, sum(noisy.values()))
    synthetic = [(r["key"], t) for r in kept for t, o in zip(r["texts"], r["origins"]) if o == "synthetic"]
    correct = sum(judge(truth[source[k]], t).correct for k, t in synthetic)
    out["synthetic_kept"] = len(synthetic)
    out["synthetic_correct"] = correct / max(1, len(synthetic))
    # the whole kept set, as round k+1 trains on it: kept web texts and kept synthetic captions
    noisy_web_kept = sum(noisy[k] for k in web_kept)
    out["noisy_kept_set"] = (noisy_web_kept + len(synthetic) - correct) / max(1, len(web_kept) + len(synthetic))
    return out


def table1(rounds: list[dict], truth: dict | None, warmup: dict | None = None) -> str:
    """BLIP Table 1 for the rounds run: the no-CapFilt model (round 0) against the CapFilt ones;
    `warmup`: the figures of the demo's vision warm-up, when the rounds started from it."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    lines = ["| model | pre-training data | noisy web texts | TR R@1 | TR R@5 | IR R@1 | IR R@5 | CIDEr |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        f = r["eval"]
        data = "raw web + human" if r["round"] == 0 else f"round {r['round'] - 1} CapFilt (kept web + synthetic) + human"
        noisy = None
        if truth is not None:
            noisy = truth.get("noisy_before") if r["round"] == 0 else truth.get("noisy_after")
        lines.append(f"| round {r['round']} ({'no CapFilt' if r['round'] == 0 else 'CapFilt'}) | {data} | {pct(noisy)} | "
                     f"{f['txt_r1']:.1f} | {f['txt_r5']:.1f} | {f['img_r1']:.1f} | {f['img_r5']:.1f} | {f['cider']:.3f} |")
    if truth is not None and "noisy_after" in truth:
        lines += ["", f"Filter (round 0, τ): precision {pct(truth['filter_precision'])}, recall "
                      f"{pct(truth['filter_recall'])} as a noise detector; clean web texts kept {pct(truth['clean_kept'])}; "
                      f"kept synthetic captions judged correct {pct(truth['synthetic_correct'])} "
                      f"({truth['synthetic_kept']}); whole kept set (web + synthetic) noisy "
                      f"{pct(truth['noisy_kept_set'])}",
                  "Web texts dropped by noise type: " + ", ".join(
                      f"{n} {pct(v)}" for n, v in truth["dropped_by_noise"].items())
                  + " (wrong attribute by attribute: " + ", ".join(
                      f"{a} {pct(v)}" for a, v in truth["dropped_by_attribute"].items()) + ")",
                  f"A filter that saw colour but not shape, size, place or relation would leave at best "
                  f"{pct(truth['noisy_floor_colour_only'])} of the kept web texts noisy"]
    if warmup is not None:
        lines += [f"Every round's image encoder started from a classifier of labelled one-object scenes "
                  f"({warmup['steps']} steps; held-out accuracy " + ", ".join(
                      f"{a} {pct(v)} (chance {pct(warmup['chance'][a])})" for a, v in warmup["accuracy"].items())
                  + "), the demo's stand-in for BLIP's ImageNet start"]
    return "\n".join(lines)
