"""The demo's stand-in for BLIP's ImageNet initialisation of the image encoder.

BLIP pre-trains MED "from scratch" except for the ViT, which starts from an ImageNet classifier
in every round. The offline demo cannot load one, and a ViT started from random weights reads
colour within a few hundred steps but shape, size and place only after thousands
(`bench/learnability.py`): its filter then cannot tell a wrong-place caption from a true one.
So the demo first trains the preset's ViT as a classifier of the world's labelled one-object
scenes (`demo.world.labelled`: shape, colour, size and place heads on [CLS]) and saves it
as a timm checkpoint, which every round's pre-training loads through `model.vit_init`, exactly
where a production run loads an ImageNet ViT.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workflows import console

log = logging.getLogger(__name__)

CHECKPOINT = "vit.pth"
FIGURES = "warmup.json"


def _bounds() -> np.ndarray:
    """Where each attribute's logits start and end in the one head (side by side, in CLASSES order)."""
    from demo.world.labelled import CLASSES

    return np.cumsum([0] + [len(c) for c in CLASSES.values()])


def attribute_accuracy(vit, head, x: torch.Tensor, y: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out accuracy of each attribute head."""
    from demo.world.labelled import CLASSES

    bounds = _bounds()
    was_training = vit.training
    vit.eval()
    with torch.no_grad():
        logits = torch.cat([head(vit.forward_features(x[i:i + 256])[:, 0]) for i in range(0, len(x), 256)])
    vit.train(was_training)
    return {a: (logits[:, bounds[i]:bounds[i + 1]].argmax(1) == y[a]).float().mean().item()
            for i, a in enumerate(CLASSES)}


def lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps` (step counts from 0).
    At a constant rate the tiny ViT learnt shape 10-15 points worse in the same steps."""
    warmup = min(warmup, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def default_scenes(steps: int, batch_size: int) -> int:
    """Enough labelled scenes that each is seen about 10 times (at least 500): on 3,000 scenes for
    2,400 steps of 32 the tiny ViT memorised them (shape 97% on its training scenes, 59% held out)
    where 12,000 gave 75% held out."""
    return max(500, steps * batch_size // 10)


def train_classifier(vit, x: torch.Tensor, y: dict[str, torch.Tensor], steps: int, batch_size: int = 32,
                     lr: float = 1e-3, every: int = 0, on_every=None) -> torch.nn.Linear:
    """Train `vit` with one linear head per attribute of CLASSES on [CLS] (cross-entropy summed over
    attributes, AdamW, lr_at's schedule); calls on_every(step, head) every `every` steps and at the
    end. Returns the head."""
    from demo.world.labelled import CLASSES

    bounds = _bounds()
    head = torch.nn.Linear(vit.embed_dim, int(bounds[-1])).to(x.device)
    optimizer = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
    vit.train()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, steps, lr)
        pick = torch.randint(0, len(x), (batch_size,), device=x.device)
        logits = head(vit.forward_features(x[pick])[:, 0])
        loss = sum(F.cross_entropy(logits[:, bounds[i]:bounds[i + 1]], y[a][pick]) for i, a in enumerate(CLASSES))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_every is not None and (step == steps or (every and step % every == 0)):
            on_every(step, head)
    return head


def train_vision_warmup(out: str | Path, preset: str, image_size: int, steps: int, seed: int = 0,
                        scenes: int = 0, held_out: int = 500, batch_size: int = 32, lr: float = 1e-3,
                        device: str | None = None) -> dict:
    """Train the preset's ViT on labelled scenes for `steps` at `image_size` (0: the preset's
    pre-training size); write `out/vit.pth` (timm layout) and `out/warmup.json` (held-out accuracy
    per attribute, chance, time). Reused when both exist and were made with the same preset, size,
    steps and scenes; trained again otherwise. scenes: 0 for default_scenes."""
    from models.config import MEDConfig
    from models.preprocess import normalise
    from models.vision import build_vision_encoder
    from demo.world.labelled import CLASSES, labelled_scenes

    out = Path(out)
    cfg = MEDConfig.preset(preset)
    image_size = image_size or cfg.image_size
    scenes = scenes or default_scenes(steps, batch_size)
    settings = {"steps": steps, "scenes": scenes, "preset": preset, "image_size": image_size}
    if (out / CHECKPOINT).exists() and (out / FIGURES).exists():
        figures = json.loads((out / FIGURES).read_text())
        if {k: figures.get(k) for k in settings} == settings:
            return figures
        log.info("the vision warm-up in %s was made with %s, not %s: training it again", out,
                 {k: figures.get(k) for k in settings}, settings)
        (out / FIGURES).unlink()  # first: a run killed while retraining leaves no stale marker
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = MEDConfig.from_dict({**cfg.to_dict(), "image_size": image_size})
    # Its own generator, apart from the web, human and test splits' seeds.
    rng = np.random.default_rng([seed, 0x5EED])
    torch.manual_seed(seed)
    x, y = labelled_scenes(scenes, image_size, rng)
    x_test, y_test = labelled_scenes(held_out, image_size, rng)
    x, x_test = normalise(x).to(device), normalise(x_test).to(device)
    y, y_test = ({a: v.to(device) for a, v in t.items()} for t in (y, y_test))

    vit = build_vision_encoder(cfg).to(device)
    start = time.perf_counter()

    def progress(step: int, head) -> None:  # a few minutes on CPU: say how far it got
        if step < steps:
            accuracy = attribute_accuracy(vit, head, x_test, y_test)
            log.info("step %d/%d  held-out accuracy %s", step, steps,
                     "  ".join(f"{a} {100 * v:.0f}%" for a, v in accuracy.items()), extra=console.PROGRESS)

    head = train_classifier(vit, x, y, steps, batch_size, lr, every=max(1, steps // 6), on_every=progress)
    figures = {
        **settings, "held_out": held_out,
        "accuracy": {a: round(v, 4) for a, v in attribute_accuracy(vit, head, x_test, y_test).items()},
        "chance": {a: round(1 / len(c), 4) for a, c in CLASSES.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(vit.state_dict(), out / CHECKPOINT)
    (out / FIGURES).write_text(json.dumps(figures, indent=1))  # last: marks the warm-up complete
    log.info("vision warm-up: held-out accuracy %s (chance %s) in %.0f s", figures["accuracy"], figures["chance"],
             figures["seconds"])
    return figures
