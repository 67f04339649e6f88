"""What the captioner and the filter share: device and precision, image preparation, loading."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from models import loaders
from models.checkpoint import save_checkpoint
from models.config import MEDConfig
from models.precision import DEFAULT_PRECISION, autocast, resolve_precision
from models.preprocess import normalise, pick_device, to_uint8_batch


class InferenceModel(nn.Module):
    """Base of Captioner and Filter: built from a MEDConfig, run under inference_mode."""

    role: str | None = None  # what a subclass serves as (captioner, filter): the checkpoint loaders read it

    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__()
        if image_size:
            cfg = dataclasses.replace(cfg, image_size=image_size)
        self.cfg = cfg
        self.tokenizer = None
        self.precision = "fp32"

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, device: str | None = None, precision: str | None = DEFAULT_PRECISION) -> "InferenceModel":
        """Move to `device` (default: CUDA when there is one) in `precision` (auto: bf16 where the
        device runs it natively, see models/precision.py).

        In bf16 the matrices of linear and embedding layers are stored in bf16 once, so autocast
        does not convert them again at every call (decoding reads every weight at every token);
        norms, biases of norms and the attention softmax stay in fp32 under autocast.
        """
        target = pick_device(device)
        self.precision = resolve_precision(target, precision)
        self.to(target).eval()
        if self.precision == "bf16":
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.to(torch.bfloat16)
        return self

    def autocast(self):
        return autocast(self.device, self.precision)

    def pixels(self, images) -> torch.Tensor:
        """PIL images, a uint8 (N, H, W, 3) array or a prepared float tensor -> model input."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images.to(self.device)
        if isinstance(images, torch.Tensor):  # uint8 (N, 3, S, S) already at size
            return normalise(images.to(self.device))
        return normalise(to_uint8_batch(images, self.image_size).to(self.device))

    def encode_image(self, images) -> torch.Tensor:
        return self.visual.forward_features(self.pixels(images))

    def save_pretrained(self, folder: str | Path) -> None:
        save_checkpoint(self, folder, self.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        image_size: int | None = None,
        device: str | None = None,
        precision: str | None = DEFAULT_PRECISION,
        tokenizer: str | Path | None = None,
    ):
        """A checkpoint of any kind models/loaders.py registers: our folder, a transformers BLIP
        folder or an original BLIP `.pth` file.

        A pre-training checkpoint loads as either model (the parts it lacks are left out);
        `tokenizer` (a tokenizer, its folder or a vocab.txt) is needed when the checkpoint carries
        none (`.pth` files).
        """
        return loaders.load(cls, path, image_size, tokenizer).prepare(device, precision)
