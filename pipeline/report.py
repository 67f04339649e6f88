"""report/index.html: what one run did, readable offline (DESIGN.md, "Outputs of one run").

Counts and keep rates, ITM histograms of the web texts and the synthetic captions with the
threshold marked, a grid of sampled rows (web text beside the synthetic captions, kept in green and
dropped in red, with their scores: BLIP's figure of CapFilt examples), failures by reason and, when
the truth of the web texts is known (the synthetic world of the demo), the filter's precision and
recall as a noise detector. Plots are PNG files beside the page; the grid's thumbnails are inlined.

Memory stays bounded: one pass streams the score and text columns of the outputs in batches into
fixed-bin histograms and tallies, and keeps a seeded random sample of rows; only the row groups that
hold a sampled kept row are read with their image bytes. Dropped rows keep no image bytes: their
images are read from the input shards' tars when the manifest names them, else shown without one.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import fsspec
import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import manifest as mf
from pipeline import report_plots as charts
from pipeline.report_plots import GREEN, GREY, RED
from pipeline.outputs import OutputRoot

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
REPORT = "report"
BATCH_ROWS = 1024
THUMB = 192          # longest side of a grid thumbnail, pixels
MAX_REASONS = 20     # failure reasons listed (the rest are summed as "other")
_TRACKED_REASONS = 10_000
_TEXT_COLUMNS = ["key", "web_text", "captions", "web_itm", "caption_itm"]
_SHARD_COLUMNS = _TEXT_COLUMNS + ["texts", "origins", "scores"]
_REJECTED_COLUMNS = _TEXT_COLUMNS + ["status", "error", "reason", "source_shard"]
_NOISE_ORDER = ("clean", "mismatch", "wrong_attribute", "junk", "empty")
_VOLATILE = [(re.compile(r"0x[0-9a-fA-F]{6,}"), "0x…"), (re.compile(r"\b\d+x\d+\b"), "WxH")]


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


@dataclass
class _Tally:
    edges: np.ndarray
    web: np.ndarray
    synthetic: np.ndarray
    web_correct: np.ndarray
    web_wrong: np.ndarray
    web_texts: int = 0        # non-empty web texts of decided (not failed) rows
    web_unscored: int = 0     # of those, not scored (e.g. a caption-only run)
    captions: int = 0
    failures: Counter = field(default_factory=Counter)
    failure_example: dict = field(default_factory=dict)
    truth: Counter = field(default_factory=Counter)  # (noise, correct, dropped) -> web texts
    no_truth: int = 0

    @classmethod
    def new(cls, threshold: float) -> "_Tally":
        edges = np.unique(np.clip(np.r_[np.linspace(0.0, 1.0, 41), threshold], 0.0, 1.0))
        return cls(edges, *(np.zeros(len(edges) - 1, np.int64) for _ in range(4)))


class _Sample:
    """A seeded bottom-k sample: each row draws a priority, the `k` lowest stay (bounded memory)."""

    def __init__(self, k: int, rng: np.random.Generator):
        self.k, self.rng, self.rows = k, rng, []  # (priority, file, row in file, row dict)

    def offer(self, batch: pa.Table, file: int, start: int, eligible: np.ndarray) -> None:
        prio = self.rng.random(len(batch))
        if not self.k:
            return
        cut = self.rows[-1][0] if len(self.rows) >= self.k else math.inf
        pick = np.flatnonzero(eligible & (prio < cut))
        if len(pick) > self.k:
            pick = pick[np.argsort(prio[pick])[: self.k]]
        if len(pick):
            rows = batch.take(pa.array(pick)).to_pylist()
            self.rows = sorted(self.rows + [(prio[i], file, start + i, r) for i, r in zip(pick, rows)],
                               key=lambda x: x[0])[: self.k]


def _values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Floats with null as NaN."""
    return pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)


def _normalise(reason: str | None) -> str:
    text = mf.scrub((reason or "failed (no error recorded)").strip())[0]  # no user:password@ of a URL
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text[:300]


def _tally_batch(t: _Tally, b: pa.Table, kept: bool, truth: dict | None) -> None:
    status = np.array(["kept"] * len(b) if kept else b["status"].to_pylist(), dtype=object)
    decided = status != "failed"
    web_itm = _values(b["web_itm"])
    caption_itm = _values(pc.list_flatten(b["caption_itm"]))
    t.synthetic += np.histogram(caption_itm[~np.isnan(caption_itm)], t.edges)[0]
    t.web += np.histogram(web_itm[decided & ~np.isnan(web_itm)], t.edges)[0]
    has_web = np.array([bool((w or "").strip()) for w in b["web_text"].to_pylist()]) & decided
    t.web_texts += int(has_web.sum())
    t.web_unscored += int((has_web & np.isnan(web_itm)).sum())
    t.captions += int(pc.sum(pc.fill_null(pc.list_value_length(b["captions"]), 0)).as_py() or 0)
    if not kept:
        for s, key, err in zip(status, b["key"].to_pylist(), b["error"].to_pylist()):
            if s != "failed":
                continue
            reason = _normalise(err)
            if reason not in t.failures and len(t.failures) >= _TRACKED_REASONS:
                reason = "(other reasons)"
            t.failures[reason] += 1
            t.failure_example.setdefault(reason, (key, err))
    if truth is None:
        return
    web_kept = ([("web" in (o or [])) for o in b["origins"].to_pylist()] if kept else [False] * len(b))
    for i, key in enumerate(b["key"].to_pylist()):
        if not decided[i]:
            continue
        entry = truth.get(key)
        if entry is None:
            t.no_truth += 1
            continue
        noise = str(entry.get("noise", "unknown"))
        correct = bool(entry["correct"]) if entry.get("correct") is not None else noise == "clean"
        t.truth[(noise, correct, not web_kept[i])] += 1
        if not math.isnan(web_itm[i]):
            hist = t.web_correct if correct else t.web_wrong
            hist[min(np.searchsorted(t.edges, web_itm[i], "right") - 1, len(hist) - 1)] += 1


def _scan(fs, root: str, m: dict, threshold: float, truth: dict | None, sample: int, seed: int):
    """One streaming pass over the outputs: tallies, and the sampled kept and dropped rows."""
    t = _Tally.new(threshold)
    rng = np.random.default_rng(seed)
    kept_files = [f"{root}/{s['parquet']}" for s in m.get("shards", []) if s.get("complete", True)]
    rejected_files = [f"{root}/{r['parquet']}" for r in m.get("rejected", [])]
    picks = {"kept": _Sample(sample, rng), "dropped": _Sample(sample, rng)}
    for kind, files, columns in (("kept", kept_files, _SHARD_COLUMNS), ("dropped", rejected_files, _REJECTED_COLUMNS)):
        for i, path in enumerate(files):
            with fs.open(path, "rb") as fh:
                pfile = pq.ParquetFile(fh)
                start = 0
                for batch in pfile.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    b = pa.Table.from_batches([batch])
                    _tally_batch(t, b, kind == "kept", truth)
                    eligible = (np.ones(len(b), bool) if kind == "kept"
                                else np.array([s == "dropped" for s in b["status"].to_pylist()]))
                    picks[kind].offer(b, i, start, eligible)
                    start += len(b)
    return t, kept_files, picks


def _thumb(data: bytes | None) -> str | None:
    if not data:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except Exception as err:  # an image the grid cannot show is not the report's failure
        log.warning("report: cannot make a thumbnail: %s", err)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _kept_images(fs, files: list[str], rows: list[tuple]) -> dict[str, bytes]:
    """Image bytes of the sampled kept rows: only their row groups are read, one at a time."""
    wanted: dict[int, list[int]] = {}
    for _, f, r, _row in rows:
        wanted.setdefault(f, []).append(r)
    out = {}
    for f, positions in wanted.items():
        with fs.open(files[f], "rb") as fh:
            pfile = pq.ParquetFile(fh)
            bounds = np.cumsum([0] + [pfile.metadata.row_group(g).num_rows for g in range(pfile.num_row_groups)])
            for g in sorted({int(np.searchsorted(bounds, p, "right") - 1) for p in positions}):
                group = pfile.read_row_group(g, columns=["key", "image"])
                local = [p - bounds[g] for p in positions if bounds[g] <= p < bounds[g + 1]]
                sub = group.take(pa.array(local, pa.int64()))
                out.update(zip(sub["key"].to_pylist(), sub["image"].to_pylist()))
    return out


def _source_images(m: dict, rows: list[dict]) -> dict[str, bytes]:
    """Images of sampled dropped rows from the input shards' tars, where the manifest names them.

    Each tar holding one is streamed once and closed as soon as its wanted members are found.
    """
    tars = {}
    for entry in m.get("inputs", []):
        parquet = entry.get("parquet")
        if isinstance(parquet, str) and parquet.endswith(".parquet") and entry.get("shard") is not None:
            tars[str(entry["shard"])] = parquet[: -len(".parquet")] + ".tar"
    by_tar: dict[str, set[str]] = {}
    for r in rows:
        if r.get("source_shard") in tars:
            by_tar.setdefault(tars[r["source_shard"]], set()).add(r["key"])
    out = {}
    for tar_path, keys in by_tar.items():
        try:
            with fsspec.open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
                for member in tar:
                    stem, _, ext = member.name.rpartition("/")[2].partition(".")
                    if stem in keys and ext.lower() in ("jpg", "jpeg", "png", "webp"):
                        out[stem] = tar.extractfile(member).read()
                        keys.discard(stem)
                        if not keys:
                            break
        except (OSError, tarfile.TarError) as err:
            log.info("report: no images of dropped rows from %s: %s", tar_path, err)
    return out


def _texts(row: dict, kept: bool) -> list[dict]:
    """The row's web text and synthetic captions, each with its score and whether it was kept."""
    chosen = set(zip(row.get("texts") or [], row.get("origins") or [])) if kept else set()
    web = row.get("web_text") or ""
    out = [{"origin": "web", "text": web, "score": row.get("web_itm"), "kept": (web, "web") in chosen,
            "empty": not web.strip()}]
    for c, s in zip(row.get("captions") or [], row.get("caption_itm") or []):
        out.append({"origin": "synthetic", "text": c, "score": s, "kept": (c, "synthetic") in chosen, "empty": False})
    return out


def _grid(fs, m: dict, kept_files: list[str], picks: dict, sample: int, source_images: bool) -> list[dict]:
    n_kept = min(len(picks["kept"].rows), max(sample - min(len(picks["dropped"].rows), sample // 2), 0))
    kept_rows = picks["kept"].rows[:n_kept]
    dropped_rows = picks["dropped"].rows[: sample - n_kept]
    images = _kept_images(fs, kept_files, kept_rows)
    dropped = [r for *_, r in dropped_rows]
    if source_images and dropped:
        images.update(_source_images(m, dropped))
    cards = []
    for status, rows in (("kept", [r for *_, r in kept_rows]), ("dropped", dropped)):
        for r in sorted(rows, key=lambda r: r["key"]):
            cards.append({"key": r["key"], "status": status, "thumb": _thumb(images.get(r["key"])),
                          "texts": _texts(r, status == "kept"), "reason": r.get("reason")})
    return cards


# ---- plots ---------------------------------------------------------------------------------------

def _share(a: int, b: int) -> float | None:
    return a / b if b else None


def _truth_rows(t: _Tally) -> tuple[list[dict], dict]:
    order = {n: i for i, n in enumerate(_NOISE_ORDER)}
    noises = sorted({n for n, _, _ in t.truth}, key=lambda n: (order.get(n, len(order)), n))
    rows = []
    for n in noises:
        total = sum(v for (k, _, _), v in t.truth.items() if k == n)
        wrong = sum(v for (k, c, _), v in t.truth.items() if k == n and not c)
        dropped = sum(v for (k, _, d), v in t.truth.items() if k == n and d)
        rows.append({"noise": n, "texts": total, "wrong": wrong, "dropped": dropped,
                     "dropped_share": _share(dropped, total)})
    dropped = sum(v for (_, _, d), v in t.truth.items() if d)
    noisy = sum(v for (_, c, _), v in t.truth.items() if not c)
    hits = sum(v for (_, c, d), v in t.truth.items() if d and not c)
    p, r = _share(hits, dropped), _share(hits, noisy)
    overall = {"texts": sum(t.truth.values()), "noisy": noisy, "dropped": dropped, "hits": hits, "precision": p,
               "recall": r, "f1": 2 * p * r / (p + r) if p and r else None, "no_truth": t.no_truth}
    return rows, overall


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    env.filters["score"] = lambda x: "–" if x is None or x != x else f"{x:.3f}"
    return env


def write_report(out: str, *, threshold: float, truth: dict | None = None, sample: int = 24, seed: int = 0,
                 sections: Sequence[Section] = (), source_images: bool = True,
                 filesystem: fsspec.AbstractFileSystem | None = None) -> str:
    """Write `out`/report/index.html and its PNGs for the finished run under `out`; returns the page's path.

    `truth` maps a run key to {"noise": "clean" | a noise type, "correct": bool (the web text is
    true of its image)} and adds the filter's precision and recall per noise type (failed rows and
    keys without an entry are left out). `sample` rows (half kept, half dropped where there are
    enough) fill the grid, drawn with `seed`. `sections` are appended as they are (see Section).
    `source_images`: show dropped rows with their image read from the input shards' tars.
    """
    if filesystem is not None:
        fs, root = filesystem, filesystem._strip_protocol(out).rstrip("/")
    else:
        fs, root = fsspec.core.url_to_fs(out)
        root = root.rstrip("/")
    m = mf.read(out, filesystem)
    threshold = float(threshold)
    t, kept_files, picks = _scan(fs, root, m, threshold, truth, max(int(sample), 0), seed)
    cards = _grid(fs, m, kept_files, picks, max(int(sample), 0), source_images)

    c = m["counts"]
    kept_texts = c.get("texts_kept", {})
    web_scored = t.web_texts - t.web_unscored
    plots = {
        "counts.png": charts.counts_png([
            ("rows", [("kept", c["kept"], GREEN), ("dropped", c["dropped"], RED), ("failed", c["failed"], GREY)]),
            ("web texts", [("kept", kept_texts.get("web", 0), GREEN),
                           ("dropped", t.web_texts - kept_texts.get("web", 0), RED)]),
            ("synthetic captions", [("kept", kept_texts.get("synthetic", 0), GREEN),
                                    ("dropped", t.captions - kept_texts.get("synthetic", 0), RED)])]),
        "itm_web.png": charts.hist_png(t.edges, t.web, threshold, f"web texts ({int(t.web.sum())} scored)",
                                 "no web text was scored"),
        "itm_synthetic.png": charts.hist_png(t.edges, t.synthetic, threshold,
                                       f"synthetic captions ({int(t.synthetic.sum())} scored)",
                                       "no synthetic caption was scored"),
    }
    truth_rows, overall = _truth_rows(t) if truth is not None else ([], None)
    if truth is not None:
        plots["itm_web_truth.png"] = charts.hist_png(
            t.edges, t.web_correct + t.web_wrong, threshold, "web texts by truth", "no web text with truth was scored",
            layers=[("true of the image", t.web_correct, GREEN), ("wrong for the image", t.web_wrong, RED)])
        if truth_rows:
            plots["noise.png"] = charts.noise_png(truth_rows)
    extra = []
    for i, s in enumerate(sections):
        figures = []
        for j, f in enumerate(s.figures):
            name = f"extra_{i:02d}_{j:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', f.name)[:40]}.png"
            plots[name] = f.image if isinstance(f.image, (bytes, bytearray)) else charts.png(f.image)
            figures.append({"src": name, "caption": f.caption})
        extra.append({"title": s.title, "paragraphs": list(s.paragraphs), "figures": figures,
                      "table": (list(s.table[0]), [list(r) for r in s.table[1]]) if s.table else None})

    failures = [{"reason": r, "rows": n, "example_key": t.failure_example[r][0], "example": t.failure_example[r][1]}
                for r, n in t.failures.most_common(MAX_REASONS)]
    other = sum(t.failures.values()) - sum(f["rows"] for f in failures)
    html = _env().get_template("report.html.j2").render(
        m=m, c=c, out=mf.scrub(out)[0], threshold=threshold, mode=mf.find_param(m["params"], "mode"),
        rates={"rows": _share(c["kept"], c["rows_in"]), "dropped": _share(c["dropped"], c["rows_in"]),
               "failed": _share(c["failed"], c["rows_in"]),
               "web": _share(kept_texts.get("web", 0), t.web_texts),
               "synthetic": _share(kept_texts.get("synthetic", 0), t.captions)},
        texts={"web": t.web_texts, "web_scored": web_scored, "web_unscored": t.web_unscored,
               "captions": t.captions, "kept_web": kept_texts.get("web", 0),
               "kept_synthetic": kept_texts.get("synthetic", 0)},
        above={"web": _share(int(t.web[t.edges[:-1] >= threshold].sum()), int(t.web.sum())),
               "synthetic": _share(int(t.synthetic[t.edges[:-1] >= threshold].sum()), int(t.synthetic.sum()))},
        cards=cards, sample=sample, seed=seed, failures=failures, other_failures=other,
        truth_rows=truth_rows, overall=overall, plots=plots, extra=extra)

    report = OutputRoot(fs, f"{root}/{REPORT}")
    for name, png in plots.items():
        with report.atomic(name) as sink:
            sink.write(png)
    with report.atomic("index.html") as sink:
        sink.write(html.encode())
    report.prune("", set(plots) | {"index.html"})
    log.info("report: %s (%d sampled rows, %d plots)", report.path("index.html"), len(cards), len(plots))
    return f"{out.rstrip('/')}/{REPORT}/index.html"  # in the caller's spelling of `out`


def truth_from_synth(shards: str, synth_dir: str) -> dict:
    """The `truth` mapping of a run over the synthetic world: run key -> its web text's truth.

    `shards` is the img2dataset folder the run read (its Parquet files carry `source_key`, the
    world's key, beside img2dataset's `key`); `synth_dir` the world (truth/web.parquet).
    """
    from pipeline.sources import shard_parquets

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
