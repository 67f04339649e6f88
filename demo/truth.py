"""What the synthetic world's truth says about a CapFilt output: the report's truth mapping, and the
figures of BLIP's Table 1 (noisy share before and after the filter, the filter's precision and
recall per noise type, clean texts kept, correctness of the kept synthetic captions).

The truth only reports; nothing in the bootstrap decides by it.
"""
from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.parquet as pq

from demo.world import judge
from pipeline.sinks import read_shards
from pipeline.sources import shard_parquets


def _world(synth_dir: str | Path) -> dict[str, dict]:
    """The world's key -> its web row's truth (noise, attribute, judged_correct, scene)."""
    fs, base = fsspec.core.url_to_fs(str(synth_dir))
    with fs.open(f"{base.rstrip('/')}/truth/web.parquet", "rb") as fh:
        return {r["key"]: r for r in pq.read_table(fh).to_pylist()}


def _downloaded(shards: str, successes_only: bool = False) -> dict[str, str]:
    """Run key -> the world's key (img2dataset's key beside the URL list's `source_key`)."""
    out = {}
    for path in shard_parquets(shards):
        with fsspec.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=["key", "source_key", "status"])
        for key, source, status in zip(t["key"].to_pylist(), t["source_key"].to_pylist(), t["status"].to_pylist()):
            if not successes_only or status == "success":
                out[str(key)] = source
    return out


class WorldTruth(dict):
    """pipeline/report.py's truth mapping (run key -> {"noise", "correct"} of its web text) that
    also judges a synthetic caption against the row's scene (the report's best of N)."""

    def __init__(self, entries: dict, scenes: dict[str, str]):
        super().__init__(entries)
        self.scenes = scenes

    def caption_correct(self, key: str, text: str) -> bool | None:
        scene = self.scenes.get(key)
        return None if scene is None else judge(scene, text).correct


def truth_for_report(shards: str, synth_dir: str | Path) -> WorldTruth:
    """pipeline/report.py's truth for a run over the world's web shards: run key -> {"noise",
    "correct"} of its web text, and the judge of its synthetic captions."""
    world = _world(synth_dir)
    keys = {key: s for key, s in _downloaded(shards).items() if s in world}
    return WorldTruth({key: {"noise": world[s]["noise"], "correct": bool(world[s]["judged_correct"])}
                       for key, s in keys.items()}, {key: world[s]["scene"] for key, s in keys.items()})


def table1_figures(shards: str, synth_dir: str | Path, capfilt_out: str | None) -> dict:
    """Noisy share of the web texts before and after the filter, the filter's precision and recall
    per noise type, share of clean web texts kept, correctness of kept synthetic captions."""
    world = _world(synth_dir)
    source = {k: s for k, s in _downloaded(shards, successes_only=True).items()}
    truth = {k: world[s] for k, s in source.items()}
    noisy = {k: not t["judged_correct"] for k, t in truth.items()}
    out = {"web_texts": len(noisy), "noisy_before": sum(noisy.values()) / max(1, len(noisy))}
    # A filter that reads colour but not shape, size, place or relation can at best drop every
    # mismatch, junk, empty and wrong-colour text and keep the finer errors at its clean rate
    # (whatever that rate, it cancels): the least noisy share such a filter can leave.
    fine = sum(1 for k, t in truth.items() if noisy[k] and t["noise"] == "wrong_attribute"
               and t["attribute"] != "colour")
    out["noisy_floor_colour_only"] = fine / max(1, fine + sum(not v for v in noisy.values()))
    if capfilt_out is None:
        return out
    kept = read_shards(capfilt_out, columns=["key", "texts", "origins"]).to_pylist()
    web_kept = {r["key"] for r in kept if "web" in r["origins"]}
    out["noisy_after"] = sum(noisy[k] for k in web_kept) / max(1, len(web_kept))
    clean = [k for k in noisy if not noisy[k]]
    out["clean_kept"] = sum(k in web_kept for k in clean) / max(1, len(clean))

    def drop_rates(group) -> dict[str, float]:
        """Share of the web texts dropped in each group that group(truth row) names (None: none)."""
        counts: dict[str, list[int]] = {}
        for k, t in truth.items():
            g = group(t)
            if g is not None:
                c = counts.setdefault(g, [0, 0])
                c[0] += 1
                c[1] += k not in web_kept
        return {g: d / n for g, (n, d) in sorted(counts.items())}

    out["dropped_by_noise"] = drop_rates(lambda t: t["noise"])
    out["dropped_by_attribute"] = drop_rates(lambda t: t["attribute"] if t["noise"] == "wrong_attribute" else None)
    dropped_noisy = sum(1 for k in noisy if noisy[k] and k not in web_kept)
    dropped = sum(1 for k in noisy if k not in web_kept)
    out["filter_precision"] = dropped_noisy / max(1, dropped)
    out["filter_recall"] = dropped_noisy / max(1, sum(noisy.values()))
    synthetic = [(r["key"], t) for r in kept for t, o in zip(r["texts"], r["origins"]) if o == "synthetic"]
    correct = sum(judge(truth[k]["scene"], t).correct for k, t in synthetic)
    out["synthetic_kept"] = len(synthetic)
    out["synthetic_correct"] = correct / max(1, len(synthetic))
    # the whole kept set, as round k+1 trains on it: kept web texts and kept synthetic captions
    noisy_web_kept = sum(noisy[k] for k in web_kept)
    out["noisy_kept_set"] = (noisy_web_kept + len(synthetic) - correct) / max(1, len(web_kept) + len(synthetic))
    return out
