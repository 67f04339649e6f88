"""A URL list (Parquet, CSV or TSV with `url` and `caption` columns, optionally `key`) as a source:
img2dataset downloads it into an img2dataset folder first, which the run then reads."""
from __future__ import annotations

import fsspec

from pipeline.checksum import sha256
from pipeline.download import download
from pipeline.sources.base import Source, register

EXTENSIONS = (".parquet", ".csv", ".tsv")


@register
class UrlList(Source):
    name = "urls"
    looks_like = f"a URL list file ({', '.join(EXTENSIONS)}) with url and caption columns"
    fetched_as = "img2dataset"

    def detect(self, path: str) -> bool:
        fs, root = fsspec.core.url_to_fs(path)
        return root.endswith(EXTENSIONS) and fs.isfile(root)

    def describe(self, path: str) -> list[dict]:
        fs, root = fsspec.core.url_to_fs(path)
        full = fs.unstrip_protocol(root) if "file" not in fs.protocol else root
        return [{"url_list": full, "sha256": sha256(full), "bytes": fs.size(root)}]

    def fetch(self, path: str, into: str, settings) -> str:
        d = settings  # the run config's download section
        download(path, into, image_size=d.image_size, timeout=d.timeout, processes=d.processes, threads=d.threads,
                 shard_size=d.shard_size, allow_hosts=tuple(d.allow_hosts), max_bytes=d.max_bytes,
                 politeness=d.politeness)
        return into
