"""Can ITM read shape and size at the demo's budget when its negatives ask it to?

    python -m bench.itm_signal [RUN] [--config configs/demo.yaml] [--pairs shape,size]

Fine-tunes round 0's filter again, in this process, from RUN's pre-trained model (`train/
round0_pretrain/model`) with the demo config's filter job (steps, batch, lr, schedule, the ViT's
share of the rate) twice:

- **BLIP's recipe**: ITC + ITM, one hard negative text and image per pair drawn from the batch;
- **plus minimal pairs**: the same, and each step a second ITM term on a batch of human images,
  each with a true caption and that caption with one attribute changed (`--pairs`, by the
  world's own grammar, demo.world.captions.corrupt): a negative that only reading the attribute
  tells apart. This uses the world's truth to train, so it is a diagnosis, never the demo's recipe.

Then prints each filter's ITM AUC on RUN's web texts, clean against one wrong attribute, per
number of objects. If the second reads shape where the first does not, ITM can learn it in the
budget and what it lacks is negatives that ask for it (`python -m bench.false_negatives` counts
them). Figures, not pass/fail. About 2 x 1.5 minutes on 2 cores at the demo's settings.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ATTRIBUTES = ("colour", "shape", "size", "position", "relation")


def minimal_pairs(scenes, attributes: tuple[str, ...], seed: int = 0, tries: int = 40) -> list[tuple[int, str, str]]:
    """(scene index, a true caption, that caption with one of `attributes` changed) for each scene
    where the grammar can change one of them."""
    from demo.world.captions import corrupt, describe, realize

    rng = np.random.default_rng(seed)
    out = []
    for i, scene in enumerate(scenes):
        for _ in range(tries):  # corrupt picks the attribute: draw until it is one asked for
            plan = describe(scene, rng)
            wrong, attribute = corrupt(plan, scene, rng)
            if attribute in attributes:
                out.append((i, realize(plan), realize(wrong)))
                break
    return out


def _images(folder: Path, keys, size: int):
    """The split's images of `keys`, normalised at `size` pixels: (N, 3, size, size)."""
    from PIL import Image

    from models.preprocess import normalise, to_uint8_batch

    return normalise(to_uint8_batch([Image.open(folder / f"{k}.jpg") for k in keys], size))


def finetune(run: Path, cfg, human: dict, pairs: list[tuple[int, str, str]], seed: int = 0):
    """Round 0's filter fine-tuned again from RUN's pre-trained model: the demo's filter job (cfg)
    on `human` (images, captions, image_of), plus an ITM term on `pairs` when there are any.
    Returns the model (eval mode) and tokenizer."""
    import torch
    import torch.nn.functional as F

    from models.losses import alpha_ramp
    from models.pretrain import BlipPretrain
    from models.tokenizer import encode, load_tokenizer
    from workflows.train_loop import lr_at, optimizer_for, set_lr

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(run / "train" / "round0_pretrain" / "tokenizer"))
    images, captions, image_of = human["images"], human["captions"], human["image_of"]
    model = BlipPretrain.from_pretrained(cfg.model.init, image_size=images.shape[-1], strict=False)
    optimizer = optimizer_for(model, cfg)
    o, rng, start = cfg.optim, np.random.default_rng(seed), time.perf_counter()
    per_epoch = max(1, len(captions) // o.batch_size)
    model.train()
    for step in range(o.steps):
        set_lr(optimizer, lr_at(step, 0, o.steps, cfg))
        pick = torch.from_numpy(rng.integers(0, len(captions), o.batch_size))
        ids, padding = encode(tokenizer, [captions[i] for i in pick], cfg.text_length)
        # the fine-tuning jobs' ramp: distillation reaches alpha after one epoch (workflows/train_loop.py)
        losses = model(images[image_of[pick]], ids, padding, alpha=alpha_ramp(step, per_epoch, model.cfg.alpha, 1.0),
                       image_ids=image_of[pick], tasks=("itc", "itm"))
        loss = losses["loss_itc"] + losses["loss_itm"]
        if pairs:
            chosen = [pairs[i] for i in rng.integers(0, len(pairs), o.batch_size)]
            ids, padding = encode(tokenizer, [p[1] for p in chosen] + [p[2] for p in chosen], cfg.text_length)
            embeds = model.encode_image(images[[p[0] for p in chosen]])
            logits = model.itm_head(model.encode_grounded(ids, padding, torch.cat([embeds, embeds]))[:, 0])
            labels = torch.cat([torch.ones(len(chosen)), torch.zeros(len(chosen))]).long()
            loss = loss + F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    log.info("%d steps in %.0f s", o.steps, time.perf_counter() - start)
    return model.eval(), tokenizer


def web_itm(web, images, model, tokenizer, length: int):
    """`web` (truth rows) with each text's softmax(ITM)[match] under `model`; images row-aligned."""
    import torch
    import torch.nn.functional as F

    from models.tokenizer import encode

    scores = []
    with torch.no_grad():
        for i in range(0, len(web), 64):
            ids, padding = encode(tokenizer, list(web.caption[i:i + 64]), length)
            hidden = model.encode_grounded(ids, padding, model.encode_image(images[i:i + 64]))[:, 0]
            scores.append(F.softmax(model.itm_head(hidden), dim=-1)[:, 1])
    return web.assign(itm=torch.cat(scores).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/demo")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--pairs", default="shape,size", help="attributes the minimal pairs change")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import pyarrow.parquet as pq
    import torch

    from bench.filter_reading import attribute_aucs
    from demo.config import load
    from demo.world.world import Scene
    from models.checkpoint import read_config
    from workflows.bootstrap_config import finetune_config

    run = Path(args.run)
    init = run / "train" / "round0_pretrain" / "model"
    if not init.exists():
        raise SystemExit(f"{run} holds no round-0 pre-trained model: run `capfilt demo` (one round is enough) first")
    human_json = [str(run / "synth" / "annotations" / "human.json")]  # named for the job's checks; read here from the truth
    cfg = finetune_config(load(args.config).bootstrap, 0, "filter", str(init), human_json)
    size = cfg.model.image_size or read_config(init)[1].finetune_image_size  # as the filter job picks it
    truth = pq.read_table(run / "synth" / "truth" / "human.parquet").to_pandas()
    first = truth.drop_duplicates("key").sort_values("key")
    index = {k: i for i, k in enumerate(first.key)}
    human = {"images": _images(run / "synth" / "human", first.key, size), "captions": list(truth.caption),
             "image_of": torch.tensor([index[k] for k in truth.key])}
    web = pq.read_table(run / "synth" / "truth" / "web.parquet").to_pandas()
    web = web[web.noise != "empty"].reset_index(drop=True)
    web_images = _images(run / "synth" / "web", web.key, size)
    scenes = [Scene.from_json(s) for s in first.scene]
    recipes = {"BLIP's negatives": [], f"+ minimal pairs ({args.pairs})": minimal_pairs(scenes, tuple(args.pairs.split(",")))}
    for name, pairs in recipes.items():
        model, tokenizer = finetune(run, cfg, human, pairs)
        scored = web_itm(web, web_images, model, tokenizer, cfg.text_length)
        clean = scored.noise == "clean"
        print(f"{name} ({len(pairs)} pairs): clean web texts kept {100 * (scored.itm >= 0.5)[clean].mean():.1f}%")
        for n, per in attribute_aucs(scored, "itm").items():
            print(f"  {n}-object scenes, ITM AUC clean vs one wrong attribute: "
                  + "  ".join(f"{a} {per[a][1]:.2f} (n={per[a][0]})" for a in ATTRIBUTES if a in per))


if __name__ == "__main__":
    main()
