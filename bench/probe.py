"""What an image encoder still knows of the synthetic world: linear probes on frozen features.

    python -m bench.probe CHECKPOINT [CHECKPOINT ...] [--train 3000] [--test 1000] [--seed 123]

Each CHECKPOINT is the demo's vision warm-up (`vit.pth`, timm layout) or a model folder (a
pre-training, captioner or filter checkpoint: its `visual.*` weights). Its ViT encodes labelled
one-object scenes of `demo.world` (the same scenes for every checkpoint) and a linear head,
one per attribute, is fitted on the frozen [CLS] token and on the mean patch token; the held-out
accuracy of each is printed next to chance. Shows whether pre-training kept what the warm-up
taught, e.g. `train/vision_warmup/vit.pth` against `train/round0_pretrain/model`.
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F


def load_vit(path: str, image_size: int):
    """The ViT of a warm-up `.pth` (the preset whose width it has) or of a model folder."""
    from models.config import MEDConfig
    from models.vision import build_vision_encoder, load_timm_weights

    if not path.endswith(".pth"):
        from models.filter import Filter

        return Filter.from_pretrained(path, image_size=image_size, device="cpu", precision="fp32").visual.eval()
    width = torch.load(path, map_location="cpu")["pos_embed"].shape[-1]
    cfg = next(c for c in map(MEDConfig.preset, ("tiny", "base", "large")) if c.vision_width == width)
    vit = build_vision_encoder(MEDConfig.from_dict({**cfg.to_dict(), "image_size": image_size}))
    load_timm_weights(vit, path)
    return vit.eval()


def features(vit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([CLS] (N, D), mean patch token (N, D)) of normalised images."""
    with torch.no_grad():
        tokens = torch.cat([vit.forward_features(x[i:i + 256]) for i in range(0, len(x), 256)])
    return tokens[:, 0], tokens[:, 1:].mean(1)


def probe(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor, classes: int,
          steps: int = 300) -> float:
    """Held-out accuracy of a linear softmax classifier fitted (full batch, Adam) on standardised features."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    head = torch.nn.Linear(train.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(train), y).backward()
        optimizer.step()
    with torch.no_grad():
        return (head(test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train", type=int, default=3000, help="labelled scenes the probes are fitted on")
    parser.add_argument("--test", type=int, default=1000, help="held-out scenes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    from bench.common import machine
    from models.preprocess import normalise
    from demo.world.labelled import CLASSES, labelled_scenes

    print(machine())
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)  # the probes' initial heads: the same for every checkpoint and run
    x, y = labelled_scenes(args.train, args.image_size, rng)
    x_test, y_test = labelled_scenes(args.test, args.image_size, rng)
    x, x_test = normalise(x), normalise(x_test)
    print("chance: " + ", ".join(f"{a} {100 / len(c):.0f}%" for a, c in CLASSES.items()))
    for path in args.checkpoints:
        vit = load_vit(path, args.image_size)
        (cls, mean), (cls_test, mean_test) = features(vit, x), features(vit, x_test)
        cells = []
        for a, c in CLASSES.items():
            on_cls = probe(cls, y[a], cls_test, y_test[a], len(c))
            on_mean = probe(mean, y[a], mean_test, y_test[a], len(c))
            cells.append(f"{a} {100 * on_cls:.1f}% / {100 * on_mean:.1f}%")
        print(f"{path}: [CLS] / mean patch: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
