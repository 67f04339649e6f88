"""`capfilt calibrate --config RUN.yaml --pairs FILE --target-precision 0.9`: the threshold of the
run's deciding scorer that keeps texts at that precision (pipeline/calibrate.py).

The labelled pairs are a Parquet file with `image` (encoded bytes), `text` and `match` (bool), or
(`--human FOLDER`) an img2dataset folder of human captions: each image with its own caption as a
match and with another image's caption, drawn with the seed, as a mismatch. The pairs are scored
in this process with the run config's filter checkpoints and scorer, at its image size. Writes
the choice, the held-out check and the curve as JSON (`--out`), with every pair's score beside it
(`<out>.scores.parquet`), and prints the threshold: name the JSON as the run's `filter.calibration`
(the run takes its threshold and the report shows the curve), or set it as `filter.threshold`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline import calibrate as cal
from pipeline.config import load
from pipeline.decode import Decode
from pipeline.schema import web_column
from pipeline.sources.registry import pick
from pipeline.stages import FilterStage

log = logging.getLogger(__name__)
BATCH = 32


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose filter.threshold for a target precision on labelled pairs")
    p.add_argument("--config", required=True, help="the run config (YAML) whose filter is calibrated")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--pairs", help="Parquet of labelled pairs: image (bytes), text, match (bool)")
    given.add_argument("--human", help="img2dataset folder of human captions: matches, and mismatches drawn from them")
    p.add_argument("--target-precision", type=float, required=True, help="share of kept texts that must match, e.g. 0.9")
    p.add_argument("--holdout", type=float, default=cal.HOLDOUT, help="share of the pairs kept aside to check the choice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="where to write the calibration (JSON)")
    p.set_defaults(func=run)


def labelled_pairs(args) -> tuple[list[bytes], list[str], np.ndarray]:
    if args.pairs:
        t = pq.read_table(args.pairs)
        missing = {"image", "text", "match"} - set(t.column_names)
        if missing:
            raise CapfiltError(f"{args.pairs} lacks column(s) {sorted(missing)}: labelled pairs need image, text, match")
        return t["image"].to_pylist(), [str(x) for x in t["text"].to_pylist()], np.array(t["match"].to_pylist(), bool)
    source = pick(args.human, "auto")
    rows = [r for part, n in source.pairs(args.human) for r in source.read_pairs(part, 0, n)]
    if len(rows) < 2:
        raise CapfiltError(f"{args.human} holds {len(rows)} captioned image(s): mismatches need two or more")
    images, texts = [r[1] for r in rows], [r[2] for r in rows]
    shift = np.random.default_rng(args.seed).integers(1, len(rows))  # every image gets another's caption
    return images * 2, texts + [texts[(i + shift) % len(rows)] for i in range(len(rows))], \
        np.r_[np.ones(len(rows), bool), np.zeros(len(rows), bool)]


def score(cfg, images: list[bytes], texts: list[str]) -> np.ndarray:
    """The deciding scorer's score of each pair, as a run's filter gives it (NaN: the image did not decode)."""
    name = cfg.filter.scoring.scorer
    decode = Decode(cfg.image_size, cfg.compute.max_image_pixels, cfg.dedup.hash, cfg.dedup.hash_size)
    stage = FilterStage(cfg.filter.checkpoints, cfg.image_size, scorers=(name,))
    out = []
    for start in range(0, len(images), BATCH):
        n = len(images[start:start + BATCH])
        batch = {"key": np.array([str(i) for i in range(start, start + n)], dtype=object),
                 "image": np.array(images[start:start + BATCH] + [None], dtype=object)[:n],
                 "web_text": np.array(texts[start:start + BATCH], dtype=object),
                 "error": np.array([""] * n, dtype=object)}
        out.append(stage(decode(batch))[web_column(name)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def run(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    images, texts, labels = labelled_pairs(args)
    scores = score(cfg, images, texts)
    result = cal.calibrate(scores, labels, args.target_precision, args.holdout, args.seed)
    result.update(scorer=cfg.filter.scoring.scorer, checkpoints=list(cfg.filter.checkpoints),
                  pairs_from=args.pairs or args.human)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    pq.write_table(pa.table({"text": texts, "match": labels, "score": scores.astype(np.float32)}),
                   out.with_suffix(".scores.parquet"))
    held = result["held_out"] or result["fit"]
    log.info("calibrate: %s threshold %.4f keeps texts at precision %.3f on %d held-out pairs (target %.2f)",
             result["scorer"], result["threshold"], held["precision"] or 0.0, result["held_out_pairs"], args.target_precision)
    print(json.dumps({"threshold": result["threshold"], "fit": result["fit"], "held_out": result["held_out"]}, indent=2))
    return 0
