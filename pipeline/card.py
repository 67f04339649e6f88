"""README.md, the dataset card, rendered from the manifest (so it can hold no credential)."""
from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"
# What each shard column holds, for the card's schema table (types come from the Arrow schema).
COLUMN_DOCS = {
    "key": "sample key, unique in the dataset (the tar members use it with unsafe characters replaced by `_`)",
    "url": "where the image was downloaded from",
    "image": "the encoded image as downloaded (JPEG or PNG bytes)",
    "width": "image width in pixels", "height": "image height in pixels",
    "web_text": "the alt-text as downloaded (may be empty)",
    "captions": "all synthetic captions the captioner wrote (kept or not)",
    "web_itm": "ITM match probability of the web text (null when not scored)",
    "caption_itm": "ITM match probability of each synthetic caption",
    "texts": "the kept texts, best first", "origins": "`web` or `synthetic`, one per kept text",
    "scores": "ITM match probability of each kept text", "source_shard": "the input shard the row came from",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.update(_flatten(v, name + ".") if isinstance(v, dict) and v else {name: v})
    return out


def render(manifest: dict, *, schema, rows_per_shard: int, threshold=None, seed=None) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    columns = [(f.name, str(f.type), COLUMN_DOCS.get(f.name, "")) for f in schema]
    return env.get_template("dataset_card.md.j2").render(
        m=manifest, params=_flatten(manifest["params"]), columns=columns, rows_per_shard=rows_per_shard,
        threshold=threshold, seed=seed)
