"""manifest.json: what one run read, ran and wrote; its presence marks the output complete.

The sinks write it last (see pipeline/sinks.py). Readers follow its `shards` list, so a shard
that is on disk but not in the manifest (a run still writing, or one that died) is invisible.
Nothing in it may carry a credential: parameters, inputs and models are scrubbed first.
"""
from __future__ import annotations

import json
import logging
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import fsspec

from models.errors import CapfiltError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = "capfilt-manifest/1"
PACKAGES = ("capfilt", "torch", "ray", "pyarrow", "transformers", "timm", "webdataset", "fsspec")
# A name containing one of these is taken for a credential and dropped, unless it is known to be safe.
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential")
SAFE_NAMES = frozenset({
    "id_column", "key_column", "sort_key", "tokenizer", "tokenizer_path",
    "max_tokens", "max_new_tokens", "min_new_tokens", "num_tokens",
})
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")  # s3://AKIA..:secret@bucket


def is_secret_name(name: str) -> bool:
    n = str(name).lower()
    return n not in SAFE_NAMES and any(w in n for w in _SECRET_WORDS)


def scrub(value: Any, _path: str = "", _dropped: list[str] | None = None) -> tuple[Any, list[str]]:
    """`value` without credential-like keys (at any depth) or user:password@ parts of URLs.

    Returns the scrubbed copy and the dotted names dropped (names only, never values).
    """
    dropped = [] if _dropped is None else _dropped
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = f"{_path}.{k}" if _path else str(k)
            if is_secret_name(k):
                dropped.append(name)
            else:
                out[k] = scrub(v, name, dropped)[0]
        return out, dropped
    if isinstance(value, (list, tuple)):
        return [scrub(v, f"{_path}[{i}]", dropped)[0] for i, v in enumerate(value)], dropped
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>", value), dropped
    return value, dropped


def package_versions() -> dict[str, str]:
    """Python and the packages that shape the output; absent ones are skipped."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def find_param(params: dict, *names: str) -> Any:
    """The first value under one of `names` at any depth of a (possibly nested) params dict."""
    for k, v in params.items():
        if k in names:
            return v
    for v in params.values():
        if isinstance(v, dict) and (found := find_param(v, *names)) is not None:
            return found
    return None


def build(*, inputs: list[dict], models: list[dict], params: dict, counts: dict, shards: list[dict],
          rejected: list[dict], exports: dict, timings: dict) -> dict:
    """The manifest dict. Only `created` differs between two runs over the same staging rows."""
    clean_params, dropped = scrub(params)
    clean_inputs, d_in = scrub(list(inputs), "inputs")
    clean_models, d_models = scrub(list(models), "models")
    redacted = dropped + d_in + d_models
    if redacted:
        log.warning("manifest: left out credential-like fields %s", ", ".join(redacted))
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": clean_inputs,
        "models": clean_models,
        "params": clean_params,
        "redacted": redacted,
        "counts": counts,
        "shards": shards,
        "rejected": rejected,
        "exports": exports,
        "timings": timings,
        "packages": package_versions(),
    }


def dumps(manifest: dict) -> bytes:
    try:
        # default=str: a Path or date in the params is written as text rather than failing the run
        return (json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise CapfiltError(f"manifest: params, inputs, models and timings must be finite JSON values ({e})") from e


def read(out: str, filesystem: fsspec.AbstractFileSystem | None = None) -> dict:
    """The manifest of a finished run; a clear error when the run has not finished."""
    fs, root = (filesystem, filesystem._strip_protocol(out)) if filesystem else fsspec.core.url_to_fs(out)
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if not fs.exists(path):
        raise CapfiltError(f"no {MANIFEST} under {out}: the run has not finished (or its finalize step was "
                           "interrupted); run it again to complete the output")
    with fs.open(path, "rb") as f:
        m = json.load(f)
    if m.get("format") != FORMAT:
        raise CapfiltError(f"{path} is not a CapFilt manifest (format {m.get('format')!r}, expected {FORMAT!r})")
    return m
