"""Decode and resize: encoded bytes -> uint8 (S, S, 3) pixels, or a failed row with the reason."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from pipeline.stages import failed


class Decode:
    """CPU stage. Images leave as uint8 arrays (never float tensors) for the model actors."""

    def __init__(self, image_size: int, max_pixels: int = 50_000_000):
        self.size = image_size
        self.max_pixels = max_pixels

    def _one(self, data) -> tuple[np.ndarray | None, int, int, str | None]:
        if data is None or len(data) == 0:
            return None, 0, 0, "decode: no image bytes"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.max_pixels:
                    return None, width, height, f"decode: {width}x{height} is over {self.max_pixels} pixels"
                image.load()
            rgb = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
            return np.asarray(rgb, dtype=np.uint8), width, height, None
        except Exception as err:  # any undecodable input is this row's failure, never the block's
            return None, 0, 0, f"decode: {type(err).__name__}: {err}"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        pixels = np.zeros((n, self.size, self.size, 3), dtype=np.uint8)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        error = np.array([e if failed(e) else None for e in batch["error"]], dtype=object)
        for i in range(n):
            if error[i] is not None:
                continue
            arr, width[i], height[i], error[i] = self._one(batch["image"][i])
            if arr is not None:
                pixels[i] = arr
        return {**batch, "pixels": pixels, "width": width, "height": height, "error": error}
