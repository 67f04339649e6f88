"""How often ITM's in-batch hard negatives can be true pairs in the synthetic world.

    python -m bench.false_negatives [--config configs/demo.yaml] [--batch-size 32] [--batches 40]

BLIP mines one hard negative text per image from the other texts of its batch, drawn by their
similarity. On web data another pair's text is almost never true of the image; in a small world
it can be ("a red circle" fits every image that holds one), and the more similar a text, the
likelier it is drawn: such a "negative" teaches ITM to call true pairs noise. This bench draws
batches of human pairs as fine-tuning does (one caption per image) and prints, from the world's
truth, the share of images whose batch holds another text true of them, per number of objects.
Figures, not pass/fail; nothing is trained.
"""
from __future__ import annotations

import argparse

import numpy as np


def false_negative_share(config: str, batch_size: int, batches: int, seed: int = 0) -> dict[int, float]:
    """Per scene size: share of images whose batch holds another caption true of them."""
    from demo.config import load
    from demo.world.judge import is_correct
    from demo.world.splits import SynthConfig, scenes, split_captions

    world = load(config).demo.world
    cfg = SynthConfig(seed=seed, human=world.human, objects=list(world.objects))
    human = scenes(cfg, "human")
    captions = split_captions(cfg, "human", human)
    rng = np.random.default_rng(seed)
    hits: dict[int, list[bool]] = {}
    for _ in range(batches):
        idx = rng.choice(len(human), batch_size, replace=False)
        texts = [captions[i][rng.integers(len(captions[i]))] for i in idx]
        for r, i in enumerate(idx):
            other = any(is_correct(human[i], t) for c, t in enumerate(texts) if c != r)
            hits.setdefault(len(human[i].objects), []).append(other)
    return {n: float(np.mean(v)) for n, v in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    shares = false_negative_share(args.config, args.batch_size, args.batches)
    for n, share in shares.items():
        print(f"{n}-object images with another true text in their batch of {args.batch_size}: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
