"""ITC: the cosine similarity of the image's and the text's ITC projections, the CLIP-style score
that DataComp-style baselines filter on (one image and one text encoder pass, no cross-attention)."""
from __future__ import annotations

from pipeline.scorers.base import ScorerKind, register


def _itc(model, pixels, texts, image_index):
    return model.itc(pixels, texts, image_index=image_index)


# 0.3: the CLIP cosine that LAION-400M filtered its pairs at (ViT-B/32; LAION-5B used 0.28, and
# DataComp's CLIP-score baselines keep the best 30%, near 0.24 with ViT-L/14). A cosine's scale
# depends on the model that made it: nothing carries over exactly to a BLIP filter's 256-d ITC
# projections, so this is a starting point, to be set from the report's precision and recall per
# noise type on data whose truth is known (filter.compare: {itc: ...} reports it beside ITM).
KIND = register(ScorerKind(name="itc", score=_itc, threshold=0.3, bounds=(-1.0, 1.0), label="ITC cosine similarity",
                           method="the cosine similarity of its image–text contrastive (ITC) projections"))
