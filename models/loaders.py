"""The checkpoint loaders, one per checkpoint kind, and what the rest of CapFilt asks of them.

- `probe(path)`: the kind, architecture and roles of a checkpoint and why it cannot serve, from
  the folder's listing, its config.json or a file's first bytes (never the weights). A run's
  pre-flight check (pipeline/preflight.py) calls it before Ray starts.
- `load(cls, path, image_size, tokenizer)`: a Captioner or a Filter from any kind's checkpoint
  (`InferenceModel.from_pretrained`).
- `weight_files(path)`: the files whose bytes identify the model (a run's identity hashes them).

A new kind is one file in models/kinds/ (a class with `name`, `looks`, `probe`, `load` and
`weight_files`, see models/kinds/base.py) and one line in KINDS.
"""
from __future__ import annotations

import json
import posixpath

import fsspec

from models.checkpoint import CONFIG, WEIGHTS, local_folder, store_errors
from models.errors import CapfiltError
from models.kinds.base import CheckpointKind, Look, Probe
from models.kinds.blip_pth import BlipPth
from models.kinds.capfilt import CapfiltFolder
from models.kinds.hf_blip import HfBlipFolder
from models.tokenizer import as_tokenizer, load_tokenizer

KINDS: list[CheckpointKind] = [
    CapfiltFolder(),
    HfBlipFolder(),
    BlipPth(),
]
# files that are part of a checkpoint folder, not a checkpoint: the folder is what to give
MEMBER_FILES = (CONFIG, WEIGHTS, "pytorch_model.bin")


def what_loads() -> str:
    """What CapFilt reads, in words: every registered kind."""
    looks = [k.looks for k in KINDS]
    return ", ".join(looks[:-1]) + f" or {looks[-1]}" if len(looks) > 1 else looks[0]


def look(path: str) -> Look | Probe:
    """The cheap view of `path`, or a Probe with the problem that stops any kind from reading it."""
    path = str(path)
    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if not fs.exists(root):
        return Probe(path, problem=f"checkpoint {path} does not exist")
    if fs.isfile(root):
        return Look(path, fs, root, is_file=True)
    names = frozenset(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    config = None
    if CONFIG in names:
        try:
            with fs.open(posixpath.join(root, CONFIG), "rb") as fh:
                config = json.load(fh)
        except (ValueError, UnicodeDecodeError) as err:
            return Probe(path, problem=f"checkpoint {path}: {CONFIG} is not valid JSON ({err})")
        if not isinstance(config, dict):
            return Probe(path, problem=f"checkpoint {path}: {CONFIG} holds no mapping")
    return Look(path, fs, root, is_file=False, names=names, config=config)


def probe(path: str) -> Probe:
    """What the checkpoint at `path` (any fsspec path) is, found by the first kind that reads it."""
    return _claim(path)[1]


def _claim(path: str) -> tuple[CheckpointKind | None, Probe, Look | None]:
    seen = look(path)
    if isinstance(seen, Probe):
        return None, seen, None
    for k in KINDS:
        found = k.probe(seen)
        if found is not None:
            return k, found, seen
    return None, Probe(seen.path, problem=_unread(seen)), seen


def _unread(seen: Look) -> str:
    """Why no kind reads `seen`, and what to give instead."""
    path, name = seen.path, seen.name
    if seen.is_file and (name in MEMBER_FILES or name.endswith(".safetensors")):
        parent = posixpath.dirname(seen.root)
        return f"checkpoint {path} is the file {name}, not a checkpoint: give the folder that holds it ({seen.url(parent)})"
    if seen.is_file:
        return f"checkpoint {path} is a file but not a checkpoint: give {what_loads()}"
    if seen.config is None:
        return f"checkpoint {path} is not a checkpoint (a folder without {CONFIG}): give {what_loads()}"
    archs = seen.config.get("architectures") or []
    what = f"a transformers {archs[0]}" if archs else f"a {seen.config.get('model_type') or 'model'} config"
    return f"checkpoint {path} holds {what}, which no CapFilt loader reads: give {what_loads()}"


def load(cls, path, image_size: int | None = None, tokenizer=None):
    """`cls` (Captioner or Filter) from the checkpoint at `path`, of any registered kind.

    `tokenizer` (a tokenizer, its folder or a vocab.txt) is needed where the checkpoint carries
    none, and replaces the one it carries otherwise.
    """
    with store_errors(str(path)):
        reader, found, _ = _claim(str(path))
    if found.problem:
        raise CapfiltError(found.problem)
    role = getattr(cls, "role", None)
    if role and role not in found.roles:  # one role held, and not this one
        raise CapfiltError(f"checkpoint {path} holds a {found.held()}, not a {role}: "
                           f"load it with {found.roles[0].capitalize()}.from_pretrained")
    if tokenizer is None and found.tokenizer_problem:
        raise CapfiltError(f"checkpoint {path} carries no tokenizer: pass tokenizer= (a tokenizer, its folder "
                           "or a vocab.txt)")
    with local_folder(str(path)) as local:
        tok = as_tokenizer(tokenizer) if tokenizer is not None else load_tokenizer(local)
        return reader.load(cls, local, image_size, tok)


def weight_files(path: str) -> list[str]:
    """The files (fsspec URLs) whose bytes identify the checkpoint's model; none where no kind reads it."""
    reader, _, seen = _claim(path)
    return reader.weight_files(seen) if reader is not None else []
