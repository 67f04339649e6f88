"""blip_json.json: one {"url", "caption"} entry per kept text, the format of BLIP's released
CapFilt data (e.g. ccs_synthetic_filtered_large.json), streamed shard by shard into one file."""
from __future__ import annotations

import contextlib
import json

from pipeline.writers.base import Writer, register

PATH = "blip_json.json"


@register
class BlipJson(Writer):
    rows = "shards"

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._sink = self._stack.enter_context(self.root.atomic(PATH))
        self._sink.write(b"[")
        self._entries = 0
        return self

    def write(self, name, rows) -> dict:
        for url, texts in zip(rows["url"].to_pylist(), rows["texts"].to_pylist()):
            for text in texts:
                entry = json.dumps({"url": url, "caption": text}, ensure_ascii=False)
                self._sink.write(((",\n" if self._entries else "\n") + entry).encode())
                self._entries += 1
        return {}

    def __exit__(self, *exc):
        if exc[0] is None:
            self._sink.write(b"\n]\n")
        self._stack.__exit__(*exc)  # on an error the partial file is removed
        if exc[0] is None:
            self.exports = {"blip_json": {"path": PATH, "entries": self._entries, "sha256": self._sink.sha256}}
