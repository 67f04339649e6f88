"""shards/NNNNN.tar: the kept rows as a WebDataset shard (KEY.jpg or KEY.png, KEY.txt with the best
kept text, KEY.json with every kept text, its origin, the deciding scorer's score and its lineage:
round, captioner, filter, threshold), readable as is by webdataset and open_clip."""
from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict

from models.errors import CapfiltError
from pipeline.safety import safe_key
from pipeline.schema import LINEAGE, TEXT_LINEAGE
from pipeline.writers.base import Writer, register

BATCH_ROWS = 256  # rows turned into Python objects at a time

# The tar member stem of a key (pipeline/safety.py): everything outside [A-Za-z0-9_-] becomes `_`,
# since webdataset groups members by the text before the first dot and tar treats `/` as a folder;
# a very long key is cut and ends in its hash.
sample_key = safe_key


def image_ext(data: bytes) -> str:
    # webdataset's decoders (and open_clip) look for jpg/png; PIL sniffs the bytes anyway, so any
    # other format is safest under `jpg`.
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


@register
class WebDatasetTar(Writer):
    rows = "shards"

    @staticmethod
    def check(kept_keys: list[str]) -> None:
        stems = defaultdict(list)
        for k in kept_keys:
            stems[sample_key(k)].append(k)
        clash = [v for v in stems.values() if len(v) > 1]
        if clash:
            raise CapfiltError(f"{len(clash)} kept key(s) collide once made safe for tar member names, e.g. "
                               f"{clash[0]} all become {sample_key(clash[0][0])!r}: make the keys differ in "
                               "[A-Za-z0-9_-], e.g. use img2dataset's numeric keys")

    def write(self, name, rows) -> dict:
        rel = f"shards/{name}.tar"
        score = self.scoring.scorer  # each kept text's score, under the deciding scorer's name
        with self.root.atomic(rel) as sink:
            # Fixed member metadata (mtime 0, uid 0, no names) so the same rows give the same bytes.
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for batch in rows.to_batches(max_chunksize=BATCH_ROWS):
                    for r in batch.to_pylist():
                        _add(tar, r, score)
        return {"tar": rel, "tar_sha256": sink.sha256}


# each kept text's lineage in KEY.json, under the names of one text (the shard's list columns are plural)
TEXT_KEYS = {"rounds": "round", "captioners": "captioner_sha256", "filters": "filter_sha256", "thresholds": "threshold"}


def _add(tar: tarfile.TarFile, r: dict, score: str) -> None:
    meta = {"key": r["key"], "url": r["url"], "web_text": r["web_text"], "source_shard": r["source_shard"],
            "width": r["width"], "height": r["height"], **{n: r[n] for n in LINEAGE},
            "texts": [{"text": x, "origin": o, score: None if s is None else round(s, 4),
                       **{TEXT_KEYS[n]: v for n, v in zip(TEXT_LINEAGE, rest)}}
                      for x, o, s, *rest in zip(r["texts"], r["origins"], r["scores"], *(r[n] for n in TEXT_LINEAGE))]}
    stem = sample_key(r["key"])
    for ext, data in ((image_ext(r["image"]), r["image"]), ("txt", r["texts"][0].encode()),
                      ("json", json.dumps(meta, ensure_ascii=False).encode())):
        info = tarfile.TarInfo(f"{stem}.{ext}")
        info.size, info.mode = len(data), 0o444
        tar.addfile(info, io.BytesIO(data))
