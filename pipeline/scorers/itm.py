"""ITM: the match probability softmax(ITM head)[match] of each (image, text) pair, BLIP's filter."""
from __future__ import annotations

from pipeline.scorers.base import ScorerKind, register


def _itm(model, pixels, texts, image_index):
    return model.itm(pixels, texts, image_index=image_index)


# 0.5: BLIP's filter keeps a text when its ITM head says "match" rather than "no match"
KIND = register(ScorerKind(name="itm", score=_itm, threshold=0.5, bounds=(0.0, 1.0), label="ITM match probability",
                           method="an image–text matching (ITM) head"))
