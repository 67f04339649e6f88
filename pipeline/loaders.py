"""The models the model stages run, loaded once per actor.

The captioner is one concrete class behind `load_captioner`; the filter models are what scorers
read (pipeline/scorers), loaded through `Models`, so that two scorers of one checkpoint (ITM and
ITC) share one model in memory. The model classes are imported only where a model is loaded:
torch, transformers and timm stay out of the driver's config, report and sink code.
"""
from __future__ import annotations

from collections.abc import Callable


def load_captioner(checkpoint: str, *, image_size: int, device=None, precision=None):
    from models.captioner import Captioner  # torch, transformers, timm: in the actors only

    return Captioner.from_pretrained(checkpoint, image_size=image_size, device=device, precision=precision or None)


def load_filter(checkpoint: str, *, image_size: int, device=None, precision=None):
    from models.filter import Filter  # torch, transformers, timm: in the actors only

    return Filter.from_pretrained(checkpoint, image_size=image_size, device=device, precision=precision or None)


class Models:
    """Models by (loader, checkpoint), each loaded once with the same image size, device and precision."""

    def __init__(self, *, image_size: int, device=None, precision=None):
        self.args = dict(image_size=image_size, device=device, precision=precision)
        self.loaded: dict[tuple[Callable, str], object] = {}

    def get(self, load: Callable, checkpoint: str):
        key = (load, checkpoint)
        if key not in self.loaded:
            self.loaded[key] = load(checkpoint, **self.args)
        return self.loaded[key]
