"""An image's fingerprints, for finding its copies (pipeline/dedup.py): the sha256 of its bytes as
downloaded (the same file again) and a perceptual hash of its pixels (the same picture re-encoded,
resized or slightly cropped), one of imagehash's hashes, as hex.

`dhash` (the gradient hash) is the default: on images made in code (tests/test_dedup.py) it kept
re-encoded, half-size and 2%-cropped copies within 5 of 64 bits and distinct images 10 or more
apart, where `phash` (the DCT hash) put 2%-cropped copies up to 16 bits away.

Computed by decode on every image that decodes, whether or not the run removes duplicates, so that
a later version of the dataset can be deduplicated against this one.
"""
from __future__ import annotations

import hashlib

import imagehash
from PIL import Image

HASHES = {"dhash": imagehash.dhash, "phash": imagehash.phash, "ahash": imagehash.average_hash}
HASH = "dhash"
HASH_SIZE = 8  # the hash's side: hash_size**2 bits (8: 64 bits, imagehash's default)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def hash_size_problem(hash_size) -> str | None:
    """Why a hash size cannot be used (its bits must fill whole hex digits), or None."""
    if not isinstance(hash_size, int) or hash_size < 4 or hash_size % 4:
        return f"must be a multiple of 4, at least 4 (8: 64 bits, 16: 256 bits), got {hash_size!r}"
    return None


def distance(a: int, b: int) -> int:
    """The Hamming distance between two hashes as integers (int(hex, 16))."""
    return (a ^ b).bit_count()


class Fingerprint:
    """(sha256 of the bytes, perceptual hash of the pixels as hex) of one decoded image."""

    def __init__(self, hash: str = HASH, hash_size: int = HASH_SIZE):
        self.function, self.hash_size = HASHES[hash], hash_size

    def __call__(self, data: bytes, image: Image.Image) -> tuple[str, str]:
        return sha256_hex(data), str(self.function(image, hash_size=self.hash_size))
