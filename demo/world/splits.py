"""Write the synthetic world's splits: a noisy web, clean human captions, a clean test set, the truth.

Layout under the output folder (all paths relative to it):

    synth.json                 parameters and counts (no timestamps: same seed, same bytes)
    web/KEY.jpg                the "web": served over HTTP and downloaded with img2dataset
    web.parquet                key, caption (the alt-text), file (name under web/)
    human/KEY.jpg              annotations/human.json: [{"image", "caption", "image_id"}], COCO-Karpathy train style
    test/KEY.jpg               annotations/test.json: [{"image", "caption": [5 strings], "image_id"}], Karpathy test style
    truth/{web,human,test}.parquet   scenes and noise labels: read by evaluation only, never by the pipeline

Every image and caption comes from its own random stream (seed, split, index), so the output does
not depend on the order of work or the number of workers.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import CapfiltError
from demo.world.captions import DEFAULT_MIX, NOISE_TYPES, caption, corrupt, describe, junk, realize
from demo.world.judge import is_correct
from demo.world.render import render_jpeg
from demo.world.world import N_OBJECTS_P, Scene, sample_scene

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_SPLIT_CODE = {"web": 0, "human": 1, "test": 2}
_OUTPUTS = ("synth.json", "web", "web.parquet", "human", "test", "annotations", "truth", "url_list.parquet")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    web: int = 2000
    human: int = 1000
    test: int = 500
    noise: float = 0.4  # share of web alt-texts that are wrong for their image
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))  # share of each noise type among the noisy
    image_size: int = 64
    human_captions: int = 3
    test_captions: int = 5
    objects: list[int] = field(default_factory=lambda: list(N_OBJECTS_P))  # scene sizes that may be drawn

    def validate(self) -> "SynthConfig":
        if min(self.web, self.human, self.test) < 0:
            raise CapfiltError("split sizes must be >= 0")
        if not 0.0 <= self.noise <= 1.0:
            raise CapfiltError(f"noise must be between 0 and 1, got {self.noise}")
        unknown = set(self.mix) - set(NOISE_TYPES)
        if unknown or not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise CapfiltError(f"noise mix must give non-negative weights to some of {', '.join(NOISE_TYPES)}; got {self.mix}")
        if self.image_size < 16:
            raise CapfiltError(f"image size must be at least 16 px, got {self.image_size}")
        if self.human_captions < 1 or self.test_captions < 1:
            raise CapfiltError("captions per image must be >= 1")
        if not self.objects or not set(self.objects) <= set(N_OBJECTS_P):
            raise CapfiltError(f"objects must list scene sizes out of {sorted(N_OBJECTS_P)}, got {self.objects}")
        return self

    def noise_probs(self) -> dict[str, float]:
        """P(type) for one web row, clean included; sums to 1."""
        total = sum(self.mix.values())
        probs = {t: self.noise * self.mix.get(t, 0.0) / total for t in NOISE_TYPES}
        return {"clean": 1.0 - self.noise, **probs}


def _rng(seed: int, split: str, i: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], i, stream])


def _key(split: str, i: int) -> str:
    return f"{split}_{i:06d}"


def scenes(cfg: SynthConfig, split: str) -> list[Scene]:
    counts = tuple(sorted(set(cfg.objects)))
    return [sample_scene(_rng(cfg.seed, split, i), counts) for i in range(getattr(cfg, split))]


def _distinct_captions(scene: Scene, n: int, rng: np.random.Generator) -> list[str]:
    out: list[str] = []
    for _ in range(20 * n):  # a one-object scene has few distinct captions; allow repeats after trying
        c = caption(scene, rng)
        if c not in out:
            out.append(c)
        if len(out) == n:
            return out
    return out + [caption(scene, rng) for _ in range(n - len(out))]


def split_captions(cfg: SynthConfig, split: str, split_scenes: list[Scene]) -> list[list[str]]:
    """Each scene's distinct true captions, as many as the split's config gives (human or test)."""
    n = cfg.human_captions if split == "human" else cfg.test_captions
    return [_distinct_captions(scene, n, _rng(cfg.seed, split, i, 1)) for i, scene in enumerate(split_scenes)]


def web_rows(cfg: SynthConfig, web_scenes: list[Scene]) -> list[dict[str, Any]]:
    """The web alt-texts and their truth, without rendering (fast enough to test the noise mix)."""
    n = len(web_scenes)
    plans = [describe(s, _rng(cfg.seed, "web", i, 1)) for i, s in enumerate(web_scenes)]
    clean = [realize(p) for p in plans]
    types, probs = list(cfg.noise_probs()), list(cfg.noise_probs().values())
    rows = []
    for i, scene in enumerate(web_scenes):
        rng = _rng(cfg.seed, "web", i, 2)
        kind = types[int(rng.choice(len(types), p=probs))]
        if kind == "mismatch" and n < 2:
            kind = "junk"  # no other image to borrow a caption from
        text, attribute, source = clean[i], None, None
        if kind == "mismatch":
            j = int(rng.integers(n - 1))
            j += int(j >= i)  # any other image
            text, source = clean[j], _key("web", j)
        elif kind == "wrong_attribute":
            plan, attribute = corrupt(plans[i], scene, rng)
            text = realize(plan)
        elif kind == "junk":
            text = junk(rng)
        elif kind == "empty":
            text = ""
        rows.append({"key": _key("web", i), "noise": kind, "caption": text, "clean_caption": clean[i],
                     "attribute": attribute, "source_key": source, "judged_correct": is_correct(scene, text),
                     "n_objects": len(scene.objects), "scene": scene.to_json()})
    return rows


def _write_images(folder: Path, split: str, split_scenes: list[Scene], size: int, start: int = 0) -> None:
    for i, scene in enumerate(split_scenes, start):
        (folder / f"{_key(split, i)}.jpg").write_bytes(render_jpeg(scene, size))


def _render_all(root: Path, jobs: list[tuple[str, list[Scene]]], size: int, workers: int) -> None:
    for split, _ in jobs:
        (root / split).mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        for split, sc in jobs:
            _write_images(root / split, split, sc, size)
        return
    chunk = 250
    # spawn, not fork: the caller may hold threads (Ray, an HTTP server) that fork would copy half-alive
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_write_images, root / split, split, sc[s:s + chunk], size, s)
                   for split, sc in jobs for s in range(0, len(sc), chunk)]
        for f in futures:
            f.result()


def _write_parquet(rows: list[dict[str, Any]], path: Path, schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


_S = pa.string()
WEB_SCHEMA = pa.schema([("key", _S), ("caption", _S), ("file", _S)])
WEB_TRUTH_SCHEMA = pa.schema([("key", _S), ("noise", _S), ("caption", _S), ("clean_caption", _S), ("attribute", _S),
                              ("source_key", _S), ("judged_correct", pa.bool_()), ("n_objects", pa.int32()), ("scene", _S)])
CAPTION_TRUTH_SCHEMA = pa.schema([("key", _S), ("caption_index", pa.int32()), ("caption", _S), ("scene", _S)])


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), *, overwrite: bool = False, workers: int = 1) -> dict[str, Any]:
    """Write every split under `out`; returns what synth.json holds."""
    cfg.validate()
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise CapfiltError(f"{root} is not empty; choose a new folder or pass overwrite (--overwrite)")
        for name in _OUTPUTS:  # only what we write: never wipe a folder we did not make
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split_scenes = {s: scenes(cfg, s) for s in _SPLIT_CODE}

    web = web_rows(cfg, split_scenes["web"])
    _write_parquet([{"key": r["key"], "caption": r["caption"], "file": f"{r['key']}.jpg"} for r in web],
                   root / "web.parquet", WEB_SCHEMA)
    _write_parquet(web, root / "truth" / "web.parquet", WEB_TRUTH_SCHEMA)

    for split in ("human", "test"):
        ann, truth = [], []
        for i, (scene, caps) in enumerate(zip(split_scenes[split], split_captions(cfg, split, split_scenes[split]))):
            key = _key(split, i)
            image = f"{split}/{key}.jpg"
            if split == "human":  # Karpathy train files hold one row per caption
                ann += [{"image": image, "caption": c, "image_id": key} for c in caps]
            else:
                ann.append({"image": image, "caption": caps, "image_id": key})
            truth += [{"key": key, "caption_index": k, "caption": c, "scene": scene.to_json()} for k, c in enumerate(caps)]
        _write_json(ann, root / "annotations" / f"{split}.json")
        _write_parquet(truth, root / "truth" / f"{split}.parquet", CAPTION_TRUTH_SCHEMA)

    _render_all(root, [(s, sc) for s, sc in split_scenes.items()], cfg.image_size, workers)
    noise_counts = {t: sum(r["noise"] == t for r in web) for t in ("clean", *NOISE_TYPES)}
    summary = {"format_version": FORMAT_VERSION, "config": asdict(cfg),
               "counts": {s: len(sc) for s, sc in split_scenes.items()}, "web_noise_counts": noise_counts,
               "web_judged_correct": sum(r["judged_correct"] for r in web)}
    _write_json(summary, root / "synth.json")
    log.info("synthetic world in %s: %s web (%s noisy), %s human, %s test images in %.1f s", root, len(web),
             len(web) - noise_counts["clean"], cfg.human, cfg.test, time.perf_counter() - t0)
    return summary


def load_summary(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "synth.json"
    if not path.is_file():
        raise CapfiltError(f"{root} is not a synthetic world folder (no synth.json); make one with `capfilt synth --out {root}`")
    return json.loads(path.read_text())
