"""Images in (PIL or uint8 arrays) -> the normalised tensors the ViT reads; the device."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


# BLIP normalises with CLIP's statistics
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_uint8_batch(images, size: int) -> torch.Tensor:
    """PIL images or a uint8 (N, H, W, 3) array -> (N, 3, size, size) uint8, bicubic-resized."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[1:3] == (size, size) and images.dtype == np.uint8:
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        images = [Image.fromarray(a) for a in images]
    arrays = []
    for image in images:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> float, scaled to [0, 1] and standardised per channel."""
    x = pixels.float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
