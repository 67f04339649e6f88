"""README.md, the dataset card, rendered from the manifest (so it can hold no credential)."""
from __future__ import annotations

from pathlib import Path

import jinja2

from pipeline.card_layout import front_matter
from pipeline.schema import Scoring, caption_column, web_column
from pipeline.scorers.registry import KINDS

TEMPLATES = Path(__file__).parent / "templates"
# What each shard column holds, for the card's schema table (types come from the Arrow schema).
COLUMN_DOCS = {
    "key": "sample key, unique in the dataset (the tar members use it with unsafe characters replaced by `_`)",
    "url": "where the image was downloaded from",
    "image": "the encoded image as downloaded (JPEG or PNG bytes)",
    "width": "image width in pixels", "height": "image height in pixels",
    "web_text": "the alt-text as downloaded (may be empty)",
    "captions": "all synthetic captions the captioner wrote (kept or not)",
    "texts": "the kept texts, best first", "origins": "`web` or `synthetic`, one per kept text",
    "source_shard": "the input shard the row came from",
    "rounds": "the bootstrap round that made each kept text's version (null: not a bootstrap round)",
    "captioners": "sha256 of the captioner checkpoint that wrote each kept text (null for a web text)",
    "filters": "sha256 of the filter checkpoint that kept each text (an ensemble's joined by `+`; null when "
               "no filter decided)",
    "thresholds": "the threshold that kept each text (null when none did: a caption-only run, or a caption "
                  "kept by `captioner.keep: top_k` whatever its score)",
    "source_key": "the original key: the URL list's own `key` of the row (null when the list had no key column)",
    "original_width": "image width as downloaded, before the downloader resized it (null when not recorded)",
    "original_height": "image height as downloaded, before the downloader resized it (null when not recorded)",
    "status": "`dropped` (no text reached the threshold), `failed` (download, decode or model error) or "
              "`duplicate` (a copy of another row's image)",
    "error": "why a failed row failed (null for dropped rows)",
    "reason": "why the row is not in the dataset, in words (the scores against the threshold, the error, or "
              "`duplicate`)",
    "image_sha256": "sha256 of the image bytes as downloaded (null for a row that failed)",
    "image_hash": "perceptual hash of the image (hex; the run's dedup.hash and dedup.hash_size), null for a failed row",
    "duplicate_of": "the key of the row whose image this one copies (duplicates only)",
    "duplicate_in": "the earlier version of the dataset holding that row (null: this run)",
    "duplicate_match": "`exact` (the same bytes) or `near (hash distance D)` (D bits of the perceptual hash differ)",
}


def _label(name: str) -> str:
    kind = KINDS.get(name)
    return kind.label if kind else f"{name} score"


def column_docs(scoring: Scoring) -> dict[str, str]:
    """COLUMN_DOCS with the score columns of the run's scorers."""
    docs = dict(COLUMN_DOCS)
    for name in scoring.names:
        role = "" if name == scoring.scorer else ", scored beside the deciding one, never deciding"
        docs[web_column(name)] = f"{_label(name)} of the web text (null when not scored{role})"
        docs[caption_column(name)] = f"{_label(name)} of each synthetic caption" + (f" ({role[2:]})" if role else "")
    docs["scores"] = f"{_label(scoring.scorer)} of each kept text"
    return docs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.update(_flatten(v, name + ".") if isinstance(v, dict) and v else {name: v})
    return out


def _columns(schema, docs: dict) -> list[tuple[str, str, str]]:
    return [(f.name, str(f.type), docs.get(f.name, "")) for f in schema]


def render(manifest: dict, *, schema, rows_per_shard: int, scoring: Scoring = Scoring(), seed=None,
           rejected_schema=None) -> str:
    """The card of `manifest`: `schema` is the shards' Arrow schema, `rejected_schema` that of rejected/."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    docs = column_docs(scoring)
    decider = KINDS.get(scoring.scorer)
    compare = [{"name": n, "label": _label(n), "threshold": t} for n, t in scoring.compare]
    return env.get_template("dataset_card.md.j2").render(
        m=manifest, params=_flatten(manifest["params"]), columns=_columns(schema, docs),
        rejected_columns=_columns(rejected_schema, docs) if rejected_schema is not None else [],
        rows_per_shard=rows_per_shard, threshold=scoring.threshold, seed=seed, scorer=scoring.scorer.upper(),
        method=decider.method if decider else f"the {scoring.scorer} scorer",
        label=_label(scoring.scorer), compare=compare,
        layout=front_matter(schema, rejected_schema if rejected_schema is not None else schema,
                            rejected=rejected_schema is not None and bool(manifest.get("rejected"))))
