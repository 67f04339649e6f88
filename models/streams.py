"""Random draws keyed by row: a caption depends on (seed, key, caption index, step), never on
which batch, worker or retry the row landed in.

Each caption row gets a 64-bit stream seed from (seed, key, caption index); the uniform of
decode step t is a counter-based hash of (stream seed, t). Nothing is stateful, so a row draws
the same numbers whatever else shares its batch, and a resumed run redraws exactly what an
uninterrupted one would. The hash is splitmix64's finaliser (Steele et al., 2014), done in int64
torch ops (multiplication wraps modulo 2^64; the right shifts are made logical by masking), so a
step costs a few vector ops for the whole running batch, on any device.

Identical draws give identical captions where the model's own numbers do not depend on the
batch either: in fp32 on CPU that is what we see; bf16 or GPU kernels that pick another
reduction order for another batch size can, rarely, move a logit across a sampling boundary.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: successive counters land far apart
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_SEED_SALT = 0x5851F42D4C957F2D  # keeps seed 0 from mixing like key hash 0


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 torch holds it."""
    x &= _MASK
    return x - (1 << 64) if x >> 63 else x


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors: every output bit depends on every input bit."""
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


def key_hash(key) -> int:
    """A stable 64-bit hash of a row key (its text), the same in every process and run."""
    return _signed(int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little"))


def row_seeds(seed: int, keys: Sequence, num_return: int, device=None) -> torch.Tensor:
    """(len(keys) * num_return,) int64 stream seeds, the captions of one key together (the order of
    models/generate.py's rows): row b * num_return + j draws from (seed, keys[b], j)."""
    hashes = torch.tensor([key_hash(k) for k in keys], dtype=torch.int64, device=device)
    base = mix(hashes ^ _seed_word(seed))
    index = torch.arange(1, num_return + 1, dtype=torch.int64, device=device) * _signed(GOLDEN)
    return mix(base.repeat_interleave(num_return) + index.repeat(len(keys)))


def _seed_word(seed: int) -> int:
    """The run's seed as one mixed 64-bit word."""
    return int(mix(torch.tensor(_signed(seed * GOLDEN ^ _SEED_SALT), dtype=torch.int64)))


def uniform(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """(rows,) float32 uniforms in [0, 1) for decode step `step` of each stream: 24 random bits,
    which float32 holds exactly."""
    bits = mix(seeds + _signed((step + 1) * GOLDEN))
    return _shr(bits, 40).to(torch.float32) * (1.0 / (1 << 24))
