"""Decode and resize: encoded bytes -> uint8 (S, S, 3) pixels, or a failed row with the reason.

Web bytes are untrusted. Only raster formats in ACCEPTED_FORMATS are opened (PIL would hand EPS to
Ghostscript, a PostScript interpreter); the pixel count an image header claims is checked before
anything is decoded (decompression bombs); an animation gives its first frame; EXIF orientation
is applied; transparency is laid on white (as img2dataset does); 16-bit and float images are
scaled to 8 bits, not clipped; CMYK, palette and grey images become RGB. Anything else fails its
row with a reason, never the block.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.fingerprint import HASH, HASH_SIZE, Fingerprint
from pipeline.safety import sniff_markup
from pipeline.schema import failed

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO
MAX_PIXELS = 50_000_000  # an image claiming more pixels fails its row (decompression bombs)
_WHITE = (255, 255, 255, 255)


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit grey, by scaling."""
    arr = np.asarray(image)
    if image.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = arr.max() if arr.size else 0.0
        scaled = arr * 255.0 if top <= 1.0 else arr * (255.0 / top)
    else:
        arr = arr.astype(np.int64)
        top = int(arr.max()) if arr.size else 0
        scaled = arr if top <= 255 else arr / (257.0 if top <= 65535 else top / 255.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded PIL image as RGB: transparency over white, high bit depths scaled."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit(image)
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if transparent:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


class Decode:
    """CPU stage. Images leave as uint8 arrays (never float tensors) for the model actors, with
    their fingerprints (pipeline/fingerprint.py: `image_sha256`, and `image_hash` by `hash` of `hash_size`)."""

    def __init__(self, image_size: int, max_pixels: int = MAX_PIXELS, hash: str = HASH, hash_size: int = HASH_SIZE):
        self.size = image_size
        self.max_pixels = max_pixels
        self.fingerprint = Fingerprint(hash, hash_size)

    @staticmethod
    def _open(data) -> Image.Image:
        """The opened (not yet decoded) image; UnidentifiedImageError says what the bytes are instead."""
        try:
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            kind = sniff_markup(bytes(data))
            if kind and kind.startswith("SVG"):
                why = "SVG is a vector image: only raster images (JPEG, PNG, GIF, WebP, ...) are accepted"
            elif kind:
                why = f"not an image: the bytes are {kind}"
            else:
                why = f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})"
        raise UnidentifiedImageError(why)

    def _one(self, data) -> tuple[np.ndarray | None, int, int, str | None, tuple[str, str] | None]:
        if data is None or len(data) == 0:
            return None, 0, 0, "decode: no image bytes", None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = self._open(data)
                width, height = image.size
                if width * height > self.max_pixels:
                    return None, width, height, (f"decode: {width}x{height} is over {self.max_pixels} pixels "
                                                 "(decompression bomb guard)"), None
                image.load()  # an animation: its first frame
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # broken EXIF: the pixels as stored are still an image
                pass
            width, height = image.size
            rgb = to_rgb(image)
            prints = self.fingerprint(data, rgb)  # of the image as shown, before the model's resize
            rgb = rgb.resize((self.size, self.size), Image.BICUBIC)
            return np.asarray(rgb, dtype=np.uint8), width, height, None, prints
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return None, 0, 0, f"decode: over PIL's pixel limit (decompression bomb guard): {err}", None
        except Exception as err:  # any undecodable input is this row's failure, never the block's
            return None, 0, 0, f"decode: {type(err).__name__}: {err}", None

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        pixels = np.zeros((n, self.size, self.size, 3), dtype=np.uint8)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        # "" for no error, not None: a block whose column is all None can reach Arrow as another type
        # than a block with reasons, and the two then fail to concatenate into one batch
        error = np.array([e if failed(e) else "" for e in batch["error"]], dtype=object)
        sha, hashes = np.full(n, "", dtype=object), np.full(n, "", dtype=object)  # "": none (as for error)
        for i in range(n):
            if error[i]:
                continue
            arr, width[i], height[i], reason, prints = self._one(batch["image"][i])
            error[i] = reason or ""
            if arr is not None:
                pixels[i] = arr
                sha[i], hashes[i] = prints
        return {**batch, "pixels": pixels, "width": width, "height": height, "error": error,
                "image_sha256": sha, "image_hash": hashes}
