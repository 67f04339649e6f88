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


def _human(run: Path, size: int):
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from demo.world.world import Scene
    from models.preprocess import normalise, to_uint8_batch

    truth = pq.read_table(run / "synth" / "truth" / "human.parquet").to_pandas()
    keys = sorted(set(truth.key))
    index = {k: i for i, k in enumerate(keys)}
    images = normalise(to_uint8_batch([Image.open(run / "synth" / "human" / f"{k}.jpg") for k in keys], size))
    scenes = [Scene.from_json(truth.scene[truth.key == k].iloc[0]) for k in keys]
    return images, scenes, list(truth.caption), torch.tensor([index[k] for k in truth.key])


def finetune(run: Path, cfg, pairs: list[tuple[int, str, str]], seed: int = 0):
    """Round 0's filter fine-tuned again from RUN's pre-trained model: the demo's filter job (cfg),
    plus an ITM term on `pairs` when there are any. Returns the model (eval mode) and tokenizer."""
    import torch
    import torch.nn.functional as F

    from models.pretrain import BlipPretrain
    from models.tokenizer import encode, load_tokenizer
    from workflows.train_loop import lr_at, optimizer_for, set_lr

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(run / "train" / "round0_pretrain" / "tokenizer"))
    model = BlipPretrain.from_pretrained(str(run / "train" / "round0_pretrain" / "model"),
                                         image_size=cfg.model.image_size or None, strict=False)
    images, _, captions, image_of = _human(run, model.image_size)
    optimizer = optimizer_for(model, cfg)
    o, rng, start = cfg.optim, np.random.default_rng(seed), time.perf_counter()
    model.train()
    for step in range(o.steps):
        set_lr(optimizer, lr_at(step, 0, o.steps, cfg))
        pick = torch.from_numpy(rng.integers(0, len(captions), o.batch_size))
        ids, padding = encode(tokenizer, [captions[i] for i in pick], cfg.text_length)
        losses = model(images[image_of[pick]], ids, padding, alpha=model.cfg.alpha * min(1.0, step / max(1, o.steps)),
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


def web_itm(run: Path, model, tokenizer, length: int):
    """RUN's web truth (empty texts left out) with each text's softmax(ITM)[match] under `model`."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from models.preprocess import normalise, to_uint8_batch
    from models.tokenizer import encode

    web = pq.read_table(run / "synth" / "truth" / "web.parquet").to_pandas()
    web = web[web.noise != "empty"].reset_index(drop=True)
    scores = []
    with torch.no_grad():
        for i in range(0, len(web), 64):
            rows = web.iloc[i:i + 64]
            images = normalise(to_uint8_batch([Image.open(run / "synth" / "web" / f"{k}.jpg") for k in rows.key],
                                              model.image_size))
            ids, padding = encode(tokenizer, list(rows.caption), length)
            hidden = model.encode_grounded(ids, padding, model.encode_image(images))[:, 0]
            scores.append(F.softmax(model.itm_head(hidden), dim=-1)[:, 1])
    return web.assign(itm=torch.cat(scores).numpy())


def reading(web) -> dict[int, dict[str, float]]:
    """{objects: {attribute: AUC of ITM, clean texts against texts with that one error}}."""
    from bench.filter_reading import auc

    out = {}
    for n, scene in web.groupby("n_objects"):
        clean = scene[scene.noise == "clean"].itm.to_numpy()
        wrong = scene[scene.noise == "wrong_attribute"]
        out[int(n)] = {a: auc(clean, g.itm.to_numpy()) for a, g in wrong.groupby("attribute") if len(g) >= 5}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/demo")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--pairs", default="shape,size", help="attributes the minimal pairs change")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from demo.config import load
    from workflows.bootstrap_config import finetune_config

    run = Path(args.run)
    if not (run / "train" / "round0_pretrain" / "model").exists():
        raise SystemExit(f"{run} holds no round-0 pre-trained model: run `capfilt demo` (one round is enough) first")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    human = [str(run / "synth" / "annotations" / "human.json")]  # named for the job's checks; read here from the truth
    cfg = finetune_config(load(args.config).bootstrap, 0, "filter", str(run / "train" / "round0_pretrain" / "model"), human)
    _, scenes, _, _ = _human(run, 8)
    recipes = {"BLIP's negatives": [], f"+ minimal pairs ({args.pairs})": minimal_pairs(scenes, tuple(args.pairs.split(",")))}
    for name, pairs in recipes.items():
        model, tokenizer = finetune(run, cfg, pairs)
        web = web_itm(run, model, tokenizer, cfg.text_length)
        clean = web.noise == "clean"
        kept = web.itm >= 0.5
        print(f"{name} ({len(pairs)} pairs): clean web texts kept {100 * kept[clean].mean():.1f}%")
        for n, per in reading(web).items():
            print(f"  {n}-object scenes, ITM AUC clean vs one wrong attribute: "
                  + "  ".join(f"{a} {per[a]:.2f}" for a in ATTRIBUTES if a in per))


if __name__ == "__main__":
    main()
