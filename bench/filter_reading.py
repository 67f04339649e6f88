"""Which errors a finished demo run's filter reads: ITM against the ITC cosine, per wrong attribute.

    python -m bench.filter_reading [RUN]     (default runs/demo; any `capfilt demo` output folder)

Reads round 0's CapFilt output (`round0_capfilt/`: shards and rejected rows, each web text's
`web_itm` and `web_itc`) and the world's truth (`synth/truth/web.parquet`), and prints for each
kind of wrong attribute (colour, shape, size, position, relation), per number of objects in the
scene, the AUC of each score at telling the clean web texts from the texts with that one error
(0.5: not read at all). Table 1 gives the drop rates at the threshold; this says whether the
score orders them at all, and whether ITM reads what ITC's cosine does. Figures, not pass/fail;
nothing is run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import mannwhitneyu

SCORES = ("web_itm", "web_itc")


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half: the Mann-Whitney U of the positives over
    the number of pairs."""
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def scored_web(run: Path):
    """The truth of every web text that round 0's CapFilt scored, with its scores (a DataFrame)."""
    import pandas as pd

    files = sorted((run / "round0_capfilt").glob("shards/*.parquet")) + sorted((run / "round0_capfilt").glob("rejected/*.parquet"))
    if not files:
        raise SystemExit(f"{run} holds no round0_capfilt output: run `capfilt demo` (two rounds) first")
    rows = pd.concat([pq.read_table(f, columns=["source_key", *SCORES]).to_pandas() for f in files])
    truth = pq.read_table(run / "synth" / "truth" / "web.parquet").to_pandas()
    joined = truth.set_index("key").join(rows.set_index("source_key"), how="inner")
    return joined[joined[SCORES[0]].notna()]


def attribute_aucs(web, score: str) -> dict[int, dict[str, tuple[int, float]]]:
    """{objects: {attribute: (texts with that error, AUC of `score` against the clean texts)}} for
    a frame of web truth rows carrying the column `score`."""
    out = {}
    for n in sorted(web.n_objects.unique()):
        scene = web[web.n_objects == n]
        clean = scene[scene.noise == "clean"][score].to_numpy()
        wrong = scene[scene.noise == "wrong_attribute"]
        out[int(n)] = {a: (len(g), auc(clean, g[score].to_numpy())) for a, g in wrong.groupby("attribute")}
    return out


def reading(run: Path) -> dict[tuple[str, int], dict[str, tuple[int, float]]]:
    """{(score, objects): {attribute: (texts with that error, AUC against the clean texts)}}."""
    web = scored_web(run)
    return {(score, n): per for score in SCORES for n, per in attribute_aucs(web, score).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/demo")
    args = parser.parse_args()
    for (score, n), per in reading(Path(args.run)).items():
        cells = "  ".join(f"{a} {x:.2f} (n={k})" for a, (k, x) in sorted(per.items()))
        print(f"{score[4:].upper()}, {n}-object scenes, AUC clean vs one wrong attribute: {cells}")


if __name__ == "__main__":
    main()
