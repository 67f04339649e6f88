"""Images made in code for the duplicate tests, and an img2dataset folder (its parquet output
format: the bytes in the `jpg` column) written from them, so a run reads them with no download."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SIDE = 128


def photo(seed: int, side: int = SIDE) -> Image.Image:
    """A photo-like image: smooth colour fields with grain, different for every seed."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    grain = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (side, side, 3))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" and not kw else kw))
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# the copies a crawl holds of one image: (name, made from the original's bytes, an exact copy)
COPIES = {
    "same_bytes": (lambda b: b, True),
    "png": (lambda b: encode(decoded(b), "PNG"), False),  # the same pixels, other bytes
    "jpeg_q50": (lambda b: encode(decoded(b), "JPEG", quality=50), False),
    "half_size": (lambda b: encode(decoded(b).resize((SIDE // 2, SIDE // 2), Image.BICUBIC)), False),
    "cropped_2pct": (lambda b: encode(decoded(b).crop((2, 2, SIDE - 2, SIDE - 2))), False),
}


def write_folder(folder: Path, rows: list[dict]) -> str:
    """An img2dataset folder (parquet output format) of `rows`: key, caption, jpg (None: a failed download)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {
        "key": [r["key"] for r in rows], "url": [f"http://127.0.0.1/{r['key']}.jpg" for r in rows],
        "caption": [r["caption"] for r in rows],
        "status": ["success" if r["jpg"] is not None else "failed_to_download" for r in rows],
        "error_message": [None if r["jpg"] is not None else "HTTP Error 404: Not Found" for r in rows],
        "jpg": pa.array([r["jpg"] for r in rows], pa.binary()),
    }
    pq.write_table(pa.table(columns), folder / "00000.parquet")
    (folder / "00000_stats.json").write_text(json.dumps({"count": len(rows)}))
    return str(folder)
