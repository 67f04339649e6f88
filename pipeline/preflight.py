"""What can be checked about a run's paths before Ray starts: the input exists, every checkpoint
fits its role and the captioner's prompt leaves room for a caption, the output is a folder that
can be written. `pipeline.config.validate` adds these problems to the config's one message."""
from __future__ import annotations

import os
from pathlib import Path

from models import loaders
from models.errors import CapfiltError
from models.tokenizer import prompt_tokens, tokenizer_at
from pipeline import dedup, storage
from pipeline import manifest as mf


def problems(cfg) -> list[str]:
    """Every path problem of a run config (a RunConfig), each in its own words."""
    found = []
    if cfg.input.path and not _exists(cfg.input.path):
        found.append(f"input.path {cfg.input.path} does not exist or cannot be read")
    roles = []
    if cfg.mode in ("capfilt", "caption_only") and cfg.captioner.checkpoint:
        roles.append(("captioner.checkpoint", "captioner", cfg.captioner.checkpoint))
    if cfg.mode in ("capfilt", "filter_only"):
        roles += [(f"filter.checkpoints[{i}]", "filter", p) for i, p in enumerate(cfg.filter.checkpoints) if p]
    for field, role, path in roles:
        found += [f"{field}: {p}" for p in _checkpoint(path, role, cfg.captioner if role == "captioner" else None)]
    if cfg.output:
        found += _output(cfg.output)
    found += dedup.problems(cfg.dedup.against, cfg.output)
    if cfg.lineage.previous:
        try:
            mf.read(cfg.lineage.previous)
        except CapfiltError as err:
            found.append(f"lineage.previous {cfg.lineage.previous}: {err}")
    return found


def _exists(path: str) -> bool:
    return storage.exists(path)  # a store that keeps failing is one CapfiltError naming the path


def _checkpoint(path: str, role: str, captioner) -> list[str]:
    try:
        with storage.guard(f"reading the {role} checkpoint", path):
            why = loaders.probe(path).role_problem(role)
            if why is None and captioner is not None:
                n = len(prompt_tokens(tokenizer_at(path), captioner.prompt))  # [DEC] in place of [CLS]
                if captioner.max_length <= n:
                    why = (f"captioner.max_length={captioner.max_length} leaves no room for a caption after the "
                           f"prompt {captioner.prompt!r}, which takes {n} tokens ([DEC] included) in this "
                           f"checkpoint's tokenizer: raise max_length above {n}, or shorten the prompt")
    except CapfiltError as err:
        why = str(err)
    return [why] if why else []


def _output(out: str) -> list[str]:
    try:
        with storage.guard("checking the output", out):
            fs, root = storage.filesystem(out)
            if fs.isfile(root):
                return [f"output {out} is a file: give a folder (it is made when missing)"]
    except CapfiltError as err:
        return [str(err)]
    if not storage.is_local(out):
        return []  # an object store says whether it can be written only when written to
    existing = Path(root)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"output {out} lies under {existing}, which is a file: give a folder path"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"output {out} cannot be written: this user may not write in {existing}"]
    return []
