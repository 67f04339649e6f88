"""What ITM's in-batch hard negatives can teach in the synthetic world: true pairs and near misses.

    python -m bench.false_negatives [--config configs/demo.yaml] [--batch-size 32 128] [--batches 40]

BLIP mines one hard negative text per image from the other texts of its batch, drawn by their
similarity. Two kinds of text in a batch decide what ITM can learn from them:

- a *false negative*: another pair's text that is true of the image. On web data it almost never
  happens; in a small world it can ("a red circle on the left" fits every image holding one), and
  the more similar a text, the likelier it is drawn: it teaches ITM to call true pairs noise.
- a *near miss* on an attribute: a text false of the image that one change of that attribute on
  one object would make true ("a red square on the left" for a red circle on the left). Only such
  a negative makes ITM read the attribute: any other negative is told apart by an attribute it
  reads already (colour, place).

The bench draws batches of human pairs as fine-tuning does (one caption per image) and prints,
from the world's truth, per number of objects in the scene, the share of images whose batch holds
a false negative and the share whose batch holds a near miss on each attribute. Figures, not
pass/fail; nothing is trained.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

ATTRIBUTES = ("colour", "shape", "size", "slot")


def _values(attribute: str) -> list[str]:
    from demo.world.vocab import SIZES, SLOTS, WORLD_COLOURS, WORLD_SHAPES

    return list({"colour": WORLD_COLOURS, "shape": WORLD_SHAPES, "size": SIZES, "slot": SLOTS}[attribute])


def one_change(scene, attribute: str):
    """Every scene that differs from `scene` in `attribute` of exactly one object."""
    for k, obj in enumerate(scene.objects):
        for value in _values(attribute):
            if getattr(obj, attribute) != value:
                objects = scene.objects[:k] + (replace(obj, **{attribute: value}),) + scene.objects[k + 1:]
                yield replace(scene, objects=objects)


def near_miss(scene, text: str, attribute: str) -> bool:
    """Whether `text` is false of `scene` but true once one object's `attribute` is changed."""
    from demo.world.judge import is_correct

    return not is_correct(scene, text) and any(is_correct(s, text) for s in one_change(scene, attribute))


def batch_shares(config: str, batch_size: int, batches: int, seed: int = 0) -> dict[int, dict[str, float]]:
    """Per scene size: {"true": share of images whose batch holds another text true of them,
    attribute: share whose batch holds a near miss on that attribute}."""
    from demo.config import load
    from demo.world.judge import is_correct
    from demo.world.splits import SynthConfig, scenes, split_captions

    world = load(config).demo.world
    cfg = SynthConfig(seed=seed, human=world.human, objects=list(world.objects))
    human = scenes(cfg, "human")
    captions = split_captions(cfg, "human", human)
    if batch_size > len(human):
        raise SystemExit(f"--batch-size {batch_size} is larger than the {len(human)} human images")
    rng = np.random.default_rng(seed)
    hits: dict[int, dict[str, list[bool]]] = {}
    for _ in range(batches):
        idx = rng.choice(len(human), batch_size, replace=False)
        texts = [captions[i][rng.integers(len(captions[i]))] for i in idx]
        for r, i in enumerate(idx):
            others = [t for c, t in enumerate(texts) if c != r]
            row = hits.setdefault(len(human[i].objects), {k: [] for k in ("true", *ATTRIBUTES)})
            row["true"].append(any(is_correct(human[i], t) for t in others))
            for attribute in ATTRIBUTES:
                row[attribute].append(any(near_miss(human[i], t, attribute) for t in others))
    return {n: {k: float(np.mean(v)) for k, v in row.items()} for n, row in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32])
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    for size in args.batch_size:
        for n, shares in batch_shares(args.config, size, args.batches).items():
            misses = "  ".join(f"{a} {100 * shares[a]:.1f}%" for a in ATTRIBUTES)
            print(f"batch {size}, {n}-object images: another true text {100 * shares['true']:.1f}%; "
                  f"a near miss on {misses}")


if __name__ == "__main__":
    main()
