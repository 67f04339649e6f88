"""manifest.json: what one run read, ran and wrote; its presence marks the output complete.

The sinks write it last (see pipeline/sinks.py). Readers follow its `shards` list, so a shard
that is on disk but not in the manifest (a run still writing, or one that died) is invisible.
Nothing in it may carry a credential: parameters, inputs and models are scrubbed first.
"""
from __future__ import annotations

import json
import logging
import os
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
# signed URLs and tokens in query strings (S3 presigned, Azure SAS, API keys)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|awsaccesskeyid|"
    r"sig|token|access_token|api_key|apikey|key|secret|password)=)[^&#\s\"']*", re.IGNORECASE)
# credentials a process may hold in its environment: their values never appear in what we write
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET",
              "GOOGLE_OAUTH_ACCESS_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_MIN_SECRET = 8  # shorter values are too likely to be ordinary words
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    n = str(name).lower()
    return n not in SAFE_NAMES and any(w in n for w in _SECRET_WORDS)


def secret_values() -> list[str]:
    """The credentials in this process's environment (longest first), to be masked wherever they appear."""
    values = {os.environ[n] for n in SECRET_ENV if len(os.environ.get(n, "")) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with user:password@ in URLs, signed-URL and token query parameters, and the values of
    the environment's credentials masked."""
    text = _QUERY_SECRET.sub(lambda m: m.group("name") + REDACTED, _USERINFO.sub(r"\g<scheme>", text))
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return text


def scrub(value: Any, _path: str = "", _dropped: list[str] | None = None) -> tuple[Any, list[str]]:
    """`value` without credential-like keys at any depth (storage options' key, secret, token,
    client_kwargs.aws_secret_access_key, ...), with user:password@ parts of URLs, signed-URL query
    parameters and the values of the environment's credentials masked.

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
        return scrub_text(value), dropped
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
          rejected: list[dict], exports: dict, timings: dict, environment: dict | None = None,
          identity: dict | None = None, derived: dict | None = None, scoring: dict | None = None,
          lineage: dict | None = None) -> dict:
    """The manifest dict. Only `created` differs between two runs over the same staging rows.

    `inputs` are what the user gave (a URL list, or img2dataset shards), `derived` what the run
    made from them on the way (the download's shards), `identity` the run's identity less its
    inputs and models (pipeline/identity.py). `environment`: where the models ran (device, the
    precision actually used, the CPU's bf16 support): facts of the machine, not parameters of the run.
    `scoring`: the scorers whose columns the rows carry, the deciding one and the thresholds
    (pipeline/schema.py Scoring.record), so that readers of the output need not dig in `params`.
    `lineage`: the version's place among the others (round, previous version, what made and kept
    its texts, the diff against the previous version)."""
    clean_params, dropped = scrub(params)
    clean_inputs, d_in = scrub(list(inputs), "inputs")
    clean_models, d_models = scrub(list(models), "models")
    clean_derived, d_derived = scrub(derived or {}, "derived")
    clean_identity, d_identity = scrub(identity or {}, "identity")
    clean_lineage, d_lineage = scrub(lineage or {}, "lineage")
    redacted = dropped + d_in + d_models + d_derived + d_identity + d_lineage
    if redacted:
        log.warning("manifest: left out credential-like fields %s", ", ".join(redacted))
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": clean_inputs,
        **({"derived": clean_derived} if derived else {}),
        "models": clean_models,
        "params": clean_params,
        **({"identity": clean_identity} if identity else {}),
        **({"scoring": scoring} if scoring else {}),
        **({"lineage": clean_lineage} if lineage else {}),
        "redacted": redacted,
        "counts": counts,
        "shards": shards,
        "rejected": rejected,
        "exports": exports,
        "timings": timings,
        "environment": environment or {},
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
