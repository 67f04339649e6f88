"""Shared fixtures: tiny models and tokenizers built in code (nothing is downloaded)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest
import torch

from models.config import MEDConfig
from models.tokenizer import train_wordpiece

torch.set_num_threads(2)

CORPUS = [
    "a small red circle to the left of a blue square",
    "red ball beside a blue box",
    "a large green triangle above a yellow star",
    "two purple squares on a white background",
    "an orange star below a small black circle",
    "a picture of a cyan heart next to a pink cross",
    "click here for more stock photos",
    "img 2031 jpg",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_wordpiece(CORPUS * 4, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_tokenizer):
    return MEDConfig.preset("tiny", queue_size=32).with_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="module")
def ray_local():
    """Local Ray as pipeline.run starts it (2 x cores logical CPUs), for one test module."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_between_modules():
    """A module that ran a job in-process leaves Ray up; the next one starts its own."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
