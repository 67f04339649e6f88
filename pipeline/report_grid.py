"""The report's grid of sampled rows (BLIP's figure of CapFilt examples): each row's image as an
inlined thumbnail, its web text beside its synthetic captions with the deciding scorer's scores,
kept in green and dropped in red. Only the row groups that hold a sampled kept row are read with
their image bytes; dropped rows keep none, so their images come from the input (through its
source, pipeline/sources) where the manifest describes it, else they are shown without one."""
from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.schema import caption_column, web_column
from pipeline.sources.registry import KINDS as SOURCES

log = logging.getLogger(__name__)

THUMB = 192  # longest side of a grid thumbnail, pixels


def thumb(data: bytes | None) -> str | None:
    if not data:
        return None
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


def kept_images(fs, files: list[str], rows: list[tuple]) -> dict[str, bytes]:
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


def source_images(m: dict, rows: list[dict]) -> dict[str, bytes]:
    """Images of sampled dropped rows from the run's input, as the manifest describes it (the
    user's input, and what the run fetched from it, e.g. a URL list's download)."""
    described = list(m.get("inputs", [])) + list((m.get("derived") or {}).get("download", []))
    wanted: dict[str, set[str]] = {}
    for r in rows:
        if r.get("source_shard") is not None:
            wanted.setdefault(str(r["source_shard"]), set()).add(r["key"])
    out = {}
    for source in SOURCES.values():
        out.update(source.images(described, wanted))
    return out


def _texts(row: dict, kept: bool, scorer: str) -> list[dict]:
    """The row's web text and synthetic captions, each with its score and whether it was kept."""
    chosen = set(zip(row.get("texts") or [], row.get("origins") or [])) if kept else set()
    web = row.get("web_text") or ""
    out = [{"origin": "web", "text": web, "score": row.get(web_column(scorer)), "kept": (web, "web") in chosen,
            "empty": not web.strip()}]
    for c, s in zip(row.get("captions") or [], row.get(caption_column(scorer)) or []):
        out.append({"origin": "synthetic", "text": c, "score": s, "kept": (c, "synthetic") in chosen, "empty": False})
    return out


def grid(fs, m: dict, kept_files: list[str], picks: dict, sample: int, source_images_too: bool,
         scorer: str) -> list[dict]:
    """The cards of the sampled rows: up to half kept, the rest dropped, each group sorted by key."""
    n_kept = min(len(picks["kept"].rows), max(sample - min(len(picks["dropped"].rows), sample // 2), 0))
    kept_rows = picks["kept"].rows[:n_kept]
    dropped_rows = picks["dropped"].rows[: sample - n_kept]
    images = kept_images(fs, kept_files, kept_rows)
    dropped = [r for *_, r in dropped_rows]
    if source_images_too and dropped:
        images.update(source_images(m, dropped))
    cards = []
    for status, rows in (("kept", [r for *_, r in kept_rows]), ("dropped", dropped)):
        for r in sorted(rows, key=lambda r: r["key"]):
            cards.append({"key": r["key"], "status": status, "thumb": thumb(images.get(r["key"])),
                          "texts": _texts(r, status == "kept", scorer), "reason": r.get("reason")})
    return cards
