"""How varied a set of texts is: distinct n-grams (Li et al., 2016, "A Diversity-Promoting
Objective"), the number of different word n-grams and their share of all n-grams in the texts.
Words are lower-cased runs of letters and digits."""
from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(str(text).lower())


def distinct_ngrams(texts, n: int) -> dict:
    """{"n", "distinct", "total", "share"} of the word n-grams of `texts` (share None when there are none)."""
    seen, total = set(), 0
    for t in texts:
        w = words(t)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return {"n": n, "distinct": len(seen), "total": total, "share": len(seen) / total if total else None}
