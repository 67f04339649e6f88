"""Labelled one-object scenes: the synthetic world's stand-in for an image-classification set.

BLIP starts its image encoder from an ImageNet classifier; the offline demo has no ImageNet, so
it trains its ViT on these instead (`demo.warmup`). The scenes are drawn from their
own generator, apart from the web, human and test splits, and labelled from the scene itself.
"""
from __future__ import annotations

import numpy as np
import torch

from demo.world.render import render
from demo.world.vocab import SIZES, SLOTS, WORLD_COLOURS, WORLD_SHAPES
from demo.world.world import sample_scene

CLASSES: dict[str, list[str]] = {"shape": list(WORLD_SHAPES), "colour": list(WORLD_COLOURS), "size": list(SIZES),
                                 "slot": list(SLOTS)}


def labelled_scenes(n: int, image_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(uint8 pixels (n, 3, S, S), {attribute: (n,) class index into CLASSES[attribute]})."""
    scenes = [sample_scene(rng, (1,)) for _ in range(n)]
    pixels = torch.stack([torch.from_numpy(np.array(render(s, image_size))).permute(2, 0, 1) for s in scenes])
    labels = {a: torch.tensor([names.index(getattr(s.objects[0], a)) for s in scenes]) for a, names in CLASSES.items()}
    return pixels, labels
