"""`capfilt demo`: the largest part of the bootstrap that exists, on the embedded default config.

synthesise the web -> serve it on 127.0.0.1 and download it with img2dataset -> pre-train the
tiny MED with ITC + ITM + LM -> save, reload at the fine-tuning size as captioner and filter, and
measure on the clean test split what they learnt.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from models.errors import CapfiltError
from pipeline.config import build

log = logging.getLogger(__name__)


@dataclass
class SynthSection:
    web: int = 2000
    human: int = 1000
    test: int = 200
    noise: float = 0.4
    image_size: int = 64


@dataclass
class ModelSection:
    preset: str = "tiny"
    vocab_size: int = 1000


@dataclass
class PretrainSection:
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    precision: str = "bf16"
    log_every: int = 25


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    synth: SynthSection = field(default_factory=SynthSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)


def load_config(path: str | Path) -> DemoConfig:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise CapfiltError(f"config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise CapfiltError(f"config {path} is not valid YAML: {err}") from None
    return build(DemoConfig, values, str(path))


def read_shards(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Downloaded (image, alt-text) pairs from img2dataset's tars, images as uint8 (N, H, W, 3)."""
    import webdataset as wds

    tars = sorted(str(p) for p in folder.glob("*.tar"))
    images, texts = [], []
    for sample in wds.WebDataset(tars, shardshuffle=False):
        images.append(np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
        texts.append(sample["txt"].decode("utf-8"))
    return np.stack(images), texts


def read_karpathy(root: Path, name: str) -> tuple[list[str], list]:
    entries = json.loads((root / "annotations" / f"{name}.json").read_text())
    return [e["image"] for e in entries], [e["caption"] for e in entries]


def load_images(root: Path, paths: list[str]) -> np.ndarray:
    cache: dict[str, np.ndarray] = {}
    for p in paths:
        if p not in cache:
            cache[p] = np.asarray(Image.open(root / p).convert("RGB"))
    return np.stack([cache[p] for p in paths])


def pretrain(model, tokenizer, images: np.ndarray, texts: list[str], cfg: PretrainSection, seed: int) -> None:
    """A plain in-process loop over random batches (the Ray Train job replaces it)."""
    from models.losses import alpha_ramp
    from models.preprocess import autocast, normalise
    from models.tokenizer import encode

    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )
    steps_per_epoch = max(1, len(texts) // cfg.batch_size)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    device = torch.device("cpu")
    model.train()
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(len(texts), generator=generator)[: cfg.batch_size]
        ids, padding = encode(tokenizer, [texts[i] for i in idx], max_length=30)
        with autocast(device, cfg.precision):
            losses = model(normalise(pixels[idx]), ids, padding, alpha=alpha_ramp(step, steps_per_epoch, model.cfg.alpha))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % cfg.log_every == 0 or step == cfg.steps:
            figures = "  ".join(f"{k[5:]} {v.item():.3f}" for k, v in losses.items())
            print(f"  step {step:>4}/{cfg.steps}  {figures}  ({time.perf_counter() - start:.0f} s)", flush=True)


def evaluate(out: Path, synth_dir: Path, ckpt: Path, image_size: int) -> None:
    """What the pre-trained model learnt, on the clean test split (truth read here only)."""
    import pyarrow.parquet as pq

    from models.captioner import Captioner
    from models.filter import Filter
    from pipeline.synth import judge

    paths, captions = read_karpathy(synth_dir, "test")
    images = load_images(synth_dir, paths)
    first = [c[0] for c in captions]
    filt = Filter.from_pretrained(ckpt, image_size=image_size, device="cpu")
    matched = filt.itm(images, first)
    shuffled = filt.itm(images, first[1:] + first[:1])
    print(f"  ITM match probability on {len(first)} test images: true caption {matched.mean():.3f}, "
          f"another image's caption {shuffled.mean():.3f}")
    image_feat, text_feat = filt.features(images, first)
    hits = (image_feat @ text_feat.T).argmax(1) == torch.arange(len(first))
    print(f"  ITC image-to-text R@1: {hits.float().mean().item():.1%} (chance {1 / len(first):.1%})")
    cap = Captioner.from_pretrained(ckpt, image_size=image_size, device="cpu")
    written = [c[0] for c in cap.caption(images, method="nucleus", top_p=0.9, max_length=20, seed=0)]
    truth = {r["key"]: r for r in pq.read_table(synth_dir / "truth" / "test.parquet").to_pylist()}
    verdicts = [judge(truth[Path(p).stem], text).correct for p, text in zip(paths, written)]
    print(f"  nucleus captions judged correct against the truth: {sum(verdicts)}/{len(verdicts)}")
    for p, text, ok in list(zip(paths, written, verdicts))[:5]:
        print(f"    {Path(p).stem}: {text!r} ({'correct' if ok else 'wrong'})")


def capfilt(out: Path, synth_dir: Path, shards: Path, ckpt: Path, image_size: int) -> None:
    """CapFilt the downloaded web with the round-0 model as both captioner and filter, and say
    from the truth what it did to the noise (the truth is read here, after the run, only)."""
    import pyarrow.parquet as pq

    from pipeline.config import RunConfig
    from pipeline.run import run as run_capfilt
    from pipeline.sinks import read_shards
    from pipeline.synth import judge

    target = out / "capfilt_round0"
    if target.exists():  # the demo is a fresh run each time: its model was just trained anew
        shutil.rmtree(target)
    cfg = build(RunConfig, {
        "input": {"path": str(shards)}, "output": str(target), "image_size": image_size,
        "captioner": {"checkpoint": str(ckpt), "max_length": 20}, "filter": {"checkpoints": [str(ckpt)]},
        "compute": {"batch_size": 32, "rows_per_shard": 1000},
    }, "demo")
    counts = run_capfilt(cfg, progress_every=30)["counts"]
    print(f"   rows in {counts['rows_in']} = kept {counts['kept']} + dropped {counts['dropped']} + failed "
          f"{counts['failed']}; texts kept: {counts['texts_kept']['web']} web, {counts['texts_kept']['synthetic']} synthetic")
    source = {}
    for f in sorted(shards.glob("*.parquet")):
        t = pq.read_table(f, columns=["key", "source_key"])
        source.update(zip(t.column("key").to_pylist(), t.column("source_key").to_pylist()))
    truth = {r["key"]: r for r in pq.read_table(synth_dir / "truth" / "web.parquet").to_pylist()}
    noisy = lambda key: not truth[source[key]]["judged_correct"]  # noqa: E731
    before = sum(noisy(k) for k in source) / max(1, len(source))
    kept = read_shards(str(out / "capfilt_round0"), columns=["key", "texts", "origins"]).to_pylist()
    web_kept = [r["key"] for r in kept if "web" in r["origins"]]
    after = f"{sum(noisy(k) for k in web_kept) / len(web_kept):.1%}" if web_kept else "n/a (none kept)"
    synthetic = [(r["key"], t) for r in kept for t, o in zip(r["texts"], r["origins"]) if o == "synthetic"]
    right = sum(judge(truth[source[k]], t).correct for k, t in synthetic)
    print(f"   noisy share of web texts: {before:.1%} before the filter, {after} among those kept")
    print(f"   kept synthetic captions judged correct: {right}/{len(synthetic)}")
    from pipeline.report import truth_from_synth, write_report

    page = write_report(str(out / "capfilt_round0"), threshold=cfg.filter.threshold,
                        truth=truth_from_synth(str(shards), str(synth_dir)))
    print(f"   report with the filter's precision and recall per noise type: {page}")


def run(args: argparse.Namespace) -> int:
    from models.config import MEDConfig
    from models.pretrain import BlipPretrain
    from models.tokenizer import train_wordpiece
    from pipeline.download import download
    from pipeline.synth import SynthConfig, generate, serve_synthetic

    cfg = load_config(args.config)
    if args.steps is not None:
        cfg.pretrain.steps = args.steps
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    s = cfg.synth
    synth_dir, shards = out / "synth", out / "web_shards"
    print(f"1. synthesising the web ({s.web} web, {s.human} human, {s.test} test images) into {synth_dir}")
    generate(synth_dir, SynthConfig(seed=cfg.seed, web=s.web, human=s.human, test=s.test, noise=s.noise,
                                    image_size=s.image_size), overwrite=True)
    print(f"2. serving it on 127.0.0.1 and downloading with img2dataset into {shards}")
    with serve_synthetic(synth_dir, out / "url_list.parquet") as url_list:
        stats = download(url_list, shards, image_size=s.image_size, shard_size=500, timeout=10,
                         allow_hosts=("127.0.0.1",))
    print(f"   {stats.successes} downloaded, {stats.failed} failed, of {stats.count} rows in {stats.shards} shards")

    web_images, web_texts = read_shards(shards)
    human_paths, human_texts = read_karpathy(synth_dir, "human")
    images = np.concatenate([web_images, load_images(synth_dir, human_paths)])
    texts = web_texts + human_texts
    tokenizer = train_wordpiece(human_texts, vocab_size=cfg.model.vocab_size)
    model_cfg = MEDConfig.preset(cfg.model.preset, image_size=s.image_size).with_tokenizer(tokenizer)
    model = BlipPretrain(model_cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"3. pre-training MED '{cfg.model.preset}' ({n_params / 1e6:.1f}M parameters) on {len(texts)} pairs "
          f"(noisy web + human), {cfg.pretrain.steps} steps of {cfg.pretrain.batch_size}")
    pretrain(model, tokenizer, images, texts, cfg.pretrain, cfg.seed)
    ckpt = out / "checkpoints" / "pretrain_round0"
    model.save_pretrained(ckpt, tokenizer=tokenizer)
    finetune_size = model_cfg.finetune_image_size
    print(f"4. saved {ckpt}; loading it as captioner and filter at {finetune_size} px (position embeddings interpolated)")
    evaluate(out, synth_dir, ckpt, finetune_size)
    print(f"5. CapFilt over the downloaded web with this model as captioner and filter (not fine-tuned yet) "
          f"into {out / 'capfilt_round0'}")
    capfilt(out, synth_dir, shards, ckpt, finetune_size)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded default (configs/demo.yaml)")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=None, help="override pretrain.steps")
    p.set_defaults(func=run)
