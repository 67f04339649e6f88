"""Copies in the synthetic web, as crawls hold them: the same image file at another URL, under its
own alt-text.

`inject` adds `share` x web copies of web images drawn with `seed`: each copy is the original's
JPEG byte for byte (so exact dedup can find it: pipeline/dedup.py) under a new key, and its
alt-text is a fresh draw of the world's noise process for the original's scene (clean or noisy in
the world's mix, judged against that scene), as the same picture posted elsewhere is captioned
anew. The copies join web.parquet (so they are served and downloaded) and truth/web.parquet (so
the truth knows them); `synth.json` records them under `duplicates`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import CapfiltError
from demo.world.splits import WEB_SCHEMA, WEB_TRUTH_SCHEMA, SynthConfig, load_summary, web_rows
from demo.world.world import Scene

COPY_SEED = 7919  # the copies' alt-texts come from their own stream, apart from the originals'


def inject(root: str | Path, share: float, seed: int = 0) -> int:
    """Add round(share x web images) copies to the world under `root`; returns how many."""
    root = Path(root)
    summary = load_summary(root)
    done = summary.get("duplicates")
    if done and (done["share"], done["seed"]) == (share, seed):  # a rerun: injected already
        return done["copies"]
    if done:
        raise CapfiltError(f"{root} holds {done['copies']} injected copies already (share {done['share']}, seed "
                           f"{done['seed']}): make a new world to inject others")
    if not 0 < share <= 1:
        raise CapfiltError(f"the share of web images to copy must be within (0, 1], got {share}")
    web = pq.read_table(root / "web.parquet").to_pylist()
    truth = pq.read_table(root / "truth" / "web.parquet").to_pylist()
    n = len(web)
    copies = int(round(share * n))
    if not copies:
        return 0
    originals = sorted(np.random.default_rng([seed, COPY_SEED]).choice(n, copies, replace=copies > n).tolist())
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    cfg = SynthConfig(**{**{k: v for k, v in summary["config"].items() if k in fields}, "seed": seed + COPY_SEED})
    texts = web_rows(cfg, [Scene.from_json(truth[i]["scene"]) for i in originals])
    new_web, new_truth = [], []
    for j, (i, row) in enumerate(zip(originals, texts)):
        key = f"web_{n + j:06d}"
        shutil.copyfile(root / "web" / web[i]["file"], root / "web" / f"{key}.jpg")
        new_web.append({"key": key, "caption": row["caption"], "file": f"{key}.jpg"})
        new_truth.append({**row, "key": key, "source_key": None})
    pq.write_table(pa.Table.from_pylist(web + new_web, schema=WEB_SCHEMA), root / "web.parquet")
    pq.write_table(pa.Table.from_pylist(truth + new_truth, schema=WEB_TRUTH_SCHEMA), root / "truth" / "web.parquet")
    summary["duplicates"] = {"copies": copies, "share": share, "seed": seed,
                             "of": {r["key"]: web[i]["key"] for i, r in zip(originals, new_web)}}
    (root / "synth.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return copies
