"""report/: what one run did, readable offline (DESIGN.md, "Outputs of one run").

index.html: counts and keep rates; per scorer (the deciding one, then those compared beside it),
histograms of the web texts' and the synthetic captions' scores with its threshold marked; a grid
of sampled rows (web text beside the synthetic captions, kept in green and dropped in red, with
their scores: BLIP's figure of CapFilt examples); failures by reason; and, when a truth of the web
texts is given (a provider's mapping, such as the demo's synthetic world), every scorer's
precision and recall as a noise detector, overall and per noise type, at its own threshold.
Plots are PNG files beside the page; the grid's thumbnails are inlined. figures.json holds the
same figures for programs.

The one pass over the outputs is pipeline/report_scan.py, the grid pipeline/report_grid.py, the
detector figures pipeline/report_truth.py, the plots pipeline/report_plots.py.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import fsspec
import jinja2
import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline import manifest as mf
from pipeline import report_plots as charts
from pipeline import report_release
from pipeline.outputs import OutputRoot
from pipeline.report_grid import grid
from pipeline.report_plots import GREEN, GREY, RED
from pipeline.report_scan import Tally, scan
from pipeline.report_truth import detectors, share
from pipeline.schema import Scoring
from pipeline.sources.img2dataset import shard_parquets

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
REPORT = "report"
FIGURES = "figures.json"
FIGURES_FORMAT = "capfilt-report-figures/1"
MAX_REASONS = 20     # failure reasons listed (the rest are summed as "other")


@dataclass
class Figure:
    """A plot for an extra section: PNG bytes or a matplotlib Figure, written beside the page."""
    name: str
    image: Any
    caption: str = ""


@dataclass
class Section:
    """An extra part of the report (e.g. the bootstrap workflow's per-round figures), after the rest.

    Text is escaped, never read as HTML. `table` is (header, rows).
    """
    title: str
    paragraphs: Sequence[str] = ()
    figures: Sequence[Figure] = ()
    table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    env.filters["score"] = lambda x: "–" if x is None or x != x else f"{x:.3f}"
    return env


def _scoring(m: dict, scoring: Scoring | None, threshold: float | None) -> Scoring:
    """The run's scoring: given, else as its manifest records it; `threshold` overrides the deciding one's."""
    if scoring is None:
        if m.get("scoring"):
            scoring = Scoring.from_record(m["scoring"])
        elif threshold is None:
            raise CapfiltError("the manifest records no scoring (a run of an older version): pass threshold=")
        else:
            scoring = Scoring()
    if threshold is not None:
        scoring = Scoring(scoring.scorer, float(threshold), scoring.compare)
    if scoring.threshold is None:
        raise CapfiltError(f"no threshold for the deciding scorer {scoring.scorer}: pass threshold=")
    return scoring


def _plots(t: Tally, c: dict, truth_given: bool) -> tuple[dict[str, bytes], list[dict]]:
    """The PNGs by name, and per scorer what the page says of its histograms (the deciding one first)."""
    kept_texts = c.get("texts_kept", {})
    plots = {"counts.png": charts.counts_png([
        ("rows", [("kept", c["kept"], GREEN), ("dropped", c["dropped"], RED), ("failed", c["failed"], GREY)]),
        ("web texts", [("kept", kept_texts.get("web", 0), GREEN),
                       ("dropped", t.web_texts - kept_texts.get("web", 0), RED)]),
        ("synthetic captions", [("kept", kept_texts.get("synthetic", 0), GREEN),
                                ("dropped", t.captions - kept_texts.get("synthetic", 0), RED)])])}
    scorers = []
    for s in sorted(t.scorers.values(), key=lambda s: not s.decides):
        plots[f"{s.name}_web.png"] = charts.hist_png(
            s.edges, s.web, s.threshold, f"web texts ({int(s.web.sum())} scored)", "no web text was scored",
            xlabel=s.label)
        plots[f"{s.name}_synthetic.png"] = charts.hist_png(
            s.edges, s.synthetic, s.threshold, f"synthetic captions ({int(s.synthetic.sum())} scored)",
            "no synthetic caption was scored", xlabel=s.label)
        if truth_given:
            plots[f"{s.name}_web_truth.png"] = charts.hist_png(
                s.edges, s.web_correct + s.web_wrong, s.threshold, "web texts by truth",
                "no web text with truth was scored",
                layers=[("true of the image", s.web_correct, GREEN), ("wrong for the image", s.web_wrong, RED)],
                xlabel=s.label)
        scorers.append({"name": s.name, "label": s.label, "threshold": s.threshold, "decides": s.decides,
                        "web_scored": int(s.web.sum()), "captions_scored": int(s.synthetic.sum()),
                        "above": {"web": s.above(s.web), "synthetic": s.above(s.synthetic)},
                        "truth_plot": f"{s.name}_web_truth.png" if truth_given else None})
    return plots, scorers


def _extra(sections: Sequence[Section], plots: dict) -> list[dict]:
    extra = []
    for i, s in enumerate(sections):
        figures = []
        for j, f in enumerate(s.figures):
            name = f"extra_{i:02d}_{j:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', f.name)[:40]}.png"
            plots[name] = f.image if isinstance(f.image, (bytes, bytearray)) else charts.png(f.image)
            figures.append({"src": name, "caption": f.caption})
        extra.append({"title": s.title, "paragraphs": list(s.paragraphs), "figures": figures,
                      "table": (list(s.table[0]), [list(r) for r in s.table[1]]) if s.table else None})
    return extra


def write_report(out: str, *, scoring: Scoring | None = None, threshold: float | None = None, truth=None,
                 sample: int = 24, seed: int = 0, sections: Sequence[Section] = (), source_images: bool = True,
                 filesystem: fsspec.AbstractFileSystem | None = None) -> str:
    """Write `out`/report/ (index.html, its PNGs, figures.json) for the finished run under `out`;
    returns the page's path.

    `scoring`: the run's scorers and thresholds (default: as its manifest records them);
    `threshold` overrides the deciding scorer's. `truth`, the truth provider, maps a run key to
    {"noise": "clean" | a noise type, "correct": bool (the web text is true of its image)} (any
    object with `.get`); it adds every scorer's precision and recall as a noise detector, overall
    and per noise type (pipeline/report_truth.py; failed rows and keys without an entry are left
    out); a truth with a `caption_correct(key, text)` method also judges the kept synthetic captions
    (best of N). The calibrated threshold, the duplicates and best of N get their own sections where
    the run has them (pipeline/report_release.py). `sample` rows (half kept, half dropped where there are enough) fill the grid, drawn with
    `seed`. `sections` are appended as they are (see Section). `source_images`: show dropped rows
    with their image read from the run's input.
    """
    if filesystem is not None:
        fs, root = filesystem, filesystem._strip_protocol(out).rstrip("/")
    else:
        fs, root = fsspec.core.url_to_fs(out)
        root = root.rstrip("/")
    m = mf.read(out, filesystem)
    scoring = _scoring(m, scoring, threshold)
    t, kept_files, picks = scan(fs, root, m, scoring, truth, max(int(sample), 0), seed)
    cards = grid(fs, m, kept_files, picks, max(int(sample), 0), source_images, scoring.scorer)

    c = m["counts"]
    kept_texts = c.get("texts_kept", {})
    plots, scorers = _plots(t, c, truth is not None)
    found = detectors(t) if truth is not None else {}
    if found and any(d["noise"] for d in found.values()):
        plots["noise.png"] = charts.noise_png({name: d["noise"] for name, d in found.items()})
    release, release_figures = report_release.sections(fs, root, m, scoring, truth, mf.find_param(m["params"], "mode"))
    release = [Section(t, p, [Figure(*f) for f in figs], table) for t, p, figs, table in release]
    extra = _extra([*sections, *release], plots)
    decider = found.get(scoring.scorer)
    by_noise = {name: {r["noise"]: r for r in d["noise"]} for name, d in found.items()}
    comparison = [{"noise": n, "cells": [by_noise[name].get(n) for name in found]}
                  for n in dict.fromkeys(r["noise"] for d in found.values() for r in d["noise"])]
    failures = [{"reason": r, "rows": n, "example_key": t.failure_example[r][0], "example": t.failure_example[r][1]}
                for r, n in t.failures.most_common(MAX_REASONS)]
    rates = {"rows": share(c["kept"], c["rows_in"]), "dropped": share(c["dropped"], c["rows_in"]),
             "failed": share(c["failed"], c["rows_in"]), "web": share(kept_texts.get("web", 0), t.web_texts),
             "synthetic": share(kept_texts.get("synthetic", 0), t.captions)}
    texts = {"web": t.web_texts, "web_scored": t.web_texts - t.web_unscored, "web_unscored": t.web_unscored,
             "captions": t.captions, "kept_web": kept_texts.get("web", 0),
             "kept_synthetic": kept_texts.get("synthetic", 0)}
    html = _env().get_template("report.html.j2").render(
        m=m, c=c, out=mf.scrub(out)[0], threshold=scoring.threshold, mode=mf.find_param(m["params"], "mode"),
        rates=rates, texts=texts, scorers=scorers, cards=cards, sample=sample, seed=seed, failures=failures,
        other_failures=sum(t.failures.values()) - sum(f["rows"] for f in failures),
        decider=decider, detectors=found, comparison=comparison, no_truth=t.no_truth, plots=plots, extra=extra)
    figures = {"format": FIGURES_FORMAT, "scoring": scoring.record(), "counts": c, "rates": rates, "texts": texts,
               "scorers": {s["name"]: {k: v for k, v in s.items() if k not in ("name", "truth_plot")} for s in scorers},
               "truth": {"no_truth": t.no_truth, "detectors": found} if truth is not None else None,
               "release": release_figures}

    report = OutputRoot(fs, f"{root}/{REPORT}")
    for name, png in plots.items():
        with report.atomic(name) as sink:
            sink.write(png)
    with report.atomic(FIGURES) as sink:
        sink.write((json.dumps(figures, indent=1, allow_nan=False) + "\n").encode())
    with report.atomic("index.html") as sink:
        sink.write(html.encode())
    report.prune("", set(plots) | {"index.html", FIGURES})
    log.info("report: %s (%d sampled rows, %d plots)", report.path("index.html"), len(cards), len(plots))
    return f"{out.rstrip('/')}/{REPORT}/index.html"  # in the caller's spelling of `out`

def truth_from_synth(shards: str, synth_dir: str) -> dict:
    """The `truth` mapping of a run over the synthetic world: run key -> its web text's truth.

    `shards` is the img2dataset folder the run read (its Parquet files carry `source_key`, the
    world's key, beside img2dataset's `key`); `synth_dir` the world (truth/web.parquet).
    """
    fs, base = fsspec.core.url_to_fs(synth_dir)
    with fs.open(f"{base.rstrip('/')}/truth/web.parquet", "rb") as fh:
        t = pq.read_table(fh, columns=["key", "noise", "judged_correct"])
    world = {k: {"noise": n, "correct": bool(c)} for k, n, c in
             zip(t["key"].to_pylist(), t["noise"].to_pylist(), t["judged_correct"].to_pylist())}
    out = {}
    for path in shard_parquets(shards):
        with fsspec.open(path, "rb") as fh:
            s = pq.read_table(fh, columns=["key", "source_key"])
        for key, source in zip(s["key"].to_pylist(), s["source_key"].to_pylist()):
            if source in world:
                out[str(key)] = world[source]
    return out
