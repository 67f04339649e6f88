"""What a preset's ViT can learn of the synthetic world in a number of steps, with labels.

    python -m bench.learnability [--preset tiny] [--steps 2400] [--every 300] [--batch-size 32]
                                 [--lr 1e-3] [--train 0] [--test 500] [--image-size 64]

CapFilt's filter can only drop a caption whose error its image encoder can see. This bench asks
the encoder directly: the preset's vision tower (`models.vision.build_vision_encoder`, random
init) and one linear head on the [CLS] token are trained with cross-entropy to read the shape,
colour, size and place of one-object scenes of `demo.world` (labels from the scene itself),
and the held-out accuracy of each attribute is printed every `--every` steps next to chance.
Supervised labels are a stronger signal than BLIP's losses, so the step at which an attribute
is learnt here is a lower bound on what pre-training plus fine-tuning needs for the filter to
tell a wrong-shape caption from a clean one. Runs on a GPU when torch sees one.
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--every", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=0, help="training scenes (0: each seen about 10 times)")
    parser.add_argument("--test", type=int, default=500, help="held-out scenes")
    parser.add_argument("--image-size", type=int, default=0, help="0: the preset's pre-training size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from bench.common import machine
    from models.config import MEDConfig
    from models.preprocess import normalise
    from models.vision import build_vision_encoder
    from demo.world.labelled import CLASSES, labelled_scenes
    from demo.warmup import attribute_accuracy, default_scenes, train_classifier

    torch.manual_seed(args.seed)
    cfg = MEDConfig.preset(args.preset)
    size = args.image_size or cfg.image_size
    if args.image_size:
        cfg = MEDConfig.from_dict({**cfg.to_dict(), "image_size": size})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(args.seed)
    args.train = args.train or default_scenes(args.steps, args.batch_size)
    x_train, y_train = labelled_scenes(args.train, size, rng)
    x_test, y_test = labelled_scenes(args.test, size, rng)
    x_train, x_test = normalise(x_train).to(device), normalise(x_test).to(device)
    y_train = {a: y.to(device) for a, y in y_train.items()}
    y_test = {a: y.to(device) for a, y in y_test.items()}

    vit = build_vision_encoder(cfg).to(device)
    print(f"# {machine()}")
    print(f"# preset {args.preset}: ViT {cfg.vision_layers} layers x {cfg.vision_width}, patch {cfg.patch_size}, "
          f"{size} px; {args.train} training and {args.test} held-out one-object scenes; batch {args.batch_size}, "
          f"AdamW lr {args.lr}; {device}")
    print("| step | seconds | " + " | ".join(f"{a} (chance {100 / len(c):.0f}%)" for a, c in CLASSES.items()) + " |")
    print("|---|---|" + "---|" * len(CLASSES))
    start = time.perf_counter()

    def report(step: int, head) -> None:
        accuracy = attribute_accuracy(vit, head, x_test, y_test)
        print(f"| {step} | {time.perf_counter() - start:.0f} | "
              + " | ".join(f"{100 * v:.0f}%" for v in accuracy.values()) + " |", flush=True)

    train_classifier(vit, x_train, y_train, args.steps, args.batch_size, args.lr, every=args.every, on_every=report)

if __name__ == "__main__":
    main()
