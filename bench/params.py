"""Parameter counts of the four encoder-decoder sharing strategies at base size (BLIP Table 3).

    python -m bench.params [--preset base]

Counts the trainable parameters of the pre-training model (ViT, text encoder, text decoder and
heads; shared Parameters counted once; momentum encoders and queues are not trained, so not
counted) and compares the ratios with the paper's 224M : 252M : 252M : 361M.
"""
from __future__ import annotations

import argparse

import torch

from models.config import SHARING, MEDConfig
from models.pretrain import BlipPretrain

PAPER_M = {"all": 224, "all_but_ca": 252, "all_but_sa": 252, "none": 361}


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)  # parameters() dedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    args = parser.parse_args()
    counts = {}
    for share in SHARING:
        with torch.device("meta"):  # shapes only: no memory, no initialisation time
            model = BlipPretrain(MEDConfig.preset(args.preset, share=share, queue_size=0))
        counts[share] = count_trainable(model)
    base = counts["all"]
    print(f"{'sharing':<12} {'params':>10} {'ratio':>7} {'paper':>7} {'paper ratio':>12} {'off by':>7}")
    for share in SHARING:
        ratio, paper_ratio = counts[share] / base, PAPER_M[share] / PAPER_M["all"]
        print(
            f"{share:<12} {counts[share] / 1e6:>9.1f}M {ratio:>7.3f} {PAPER_M[share]:>6}M "
            f"{paper_ratio:>12.3f} {100 * (ratio / paper_ratio - 1):>+6.2f}%"
        )


if __name__ == "__main__":
    main()
