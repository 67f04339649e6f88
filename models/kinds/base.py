"""The protocol of a checkpoint kind, and what every kind is shown: a cheap look at a path.

A kind (one file in models/kinds/, one line in models/loaders.py KINDS) tells from a `Look` (a
folder's listing and config.json, a file's name and first bytes; never the weights) whether a
path is one of its checkpoints and which roles it can serve, loads it into a Captioner or a
Filter, and names the files whose bytes identify the model in a run's identity.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from models.errors import CapfiltError
from models.tokenizer import VOCABULARY_FILES

log = logging.getLogger(__name__)

ROLES = ("captioner", "filter")  # what the pipeline loads; a class says which it is by its `role`


@dataclass(frozen=True)
class Look:
    """What a checkpoint path shows without reading its weights (on any fsspec path)."""

    path: str  # as the user gave it: every message names it
    fs: Any  # an fsspec filesystem
    root: str  # the path inside `fs`
    is_file: bool
    names: frozenset[str] = frozenset()  # a folder's entries (none for a file)
    config: dict | None = None  # a folder's config.json, parsed (None when it has none)

    @property
    def name(self) -> str:
        return posixpath.basename(self.root)

    def member(self, name: str) -> str:
        """A file of the folder, as an fsspec URL (a plain path when local)."""
        return self.url(posixpath.join(self.root, name))

    def url(self, inner: str | None = None) -> str:
        inner = self.root if inner is None else inner
        return inner if "file" in self.fs.protocol else self.fs.unstrip_protocol(inner)

    def head(self, n: int) -> bytes:
        with self.fs.open(self.root, "rb") as fh:
            return fh.read(n)

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.names & set(VOCABULARY_FILES))


@dataclass(frozen=True)
class Probe:
    """What a kind found at a path: enough to say, before any weight is read, whether it serves a role."""

    path: str
    kind: str | None = None  # the kind's name; None when no kind reads it
    architecture: str | None = None  # the class that saved it, when the checkpoint names one
    roles: tuple[str, ...] = ()  # of ROLES
    problem: str | None = None  # why it cannot be loaded at all
    tokenizer_problem: str | None = None  # None when it carries its tokenizer; else why a run cannot use it

    def held(self) -> str:
        return f"{' and '.join(self.roles)} ({self.architecture or 'by its weights'})"

    def role_problem(self, role: str) -> str | None:
        """Why a run (whose config names no tokenizer) cannot use this checkpoint as `role`, or None."""
        if self.problem or self.tokenizer_problem:
            return self.problem or self.tokenizer_problem
        if role not in self.roles:
            return (f"checkpoint {self.path} holds a {self.held()}, not a {role}: "
                    f"give a {role} checkpoint (or a pre-training one, which holds both)")
        return None


class CheckpointKind(Protocol):
    name: str  # recorded in Probe.kind
    looks: str  # what it looks like, for the message that lists what CapFilt reads ("an original BLIP .pth file")

    def probe(self, look: Look) -> Probe | None:
        """The checkpoint's kind, architecture, roles and problems; None when `look` is not of this kind.
        Reads only what `look` holds or its first bytes, never the weights."""

    def load(self, cls, local: Path, image_size: int | None, tokenizer):
        """`cls` (Captioner or Filter: its `role` says which) built from the local copy of the
        checkpoint, at `image_size` (None: the checkpoint's own), carrying `tokenizer`."""

    def weight_files(self, look: Look) -> list[str]:
        """The files (fsspec URLs) whose bytes identify the model: a run's identity hashes them."""


def role_of(cls) -> str:
    """The role (captioner or filter) a class loads as; converters read it, not the class itself."""
    role = getattr(cls, "role", None)
    if role not in ROLES:
        raise CapfiltError(f"only Captioner and Filter convert from and to BLIP checkpoints, not {cls.__name__}")
    return role


def adopt_token_ids(model, keep_model_ids: bool) -> None:
    """A BLIP checkpoint from elsewhere lacks our special-token ids (HF configs have no [CLS]/[ENC]
    id, .pth files no ids at all): the model's tokenizer supplies them. With `keep_model_ids`, the
    checkpoint's own pad/sep/[DEC] ids stay (a mismatch is logged)."""
    tok, cfg = model.tokenizer, model.cfg
    if len(tok) > cfg.vocab_size:
        raise CapfiltError(f"the tokenizer has {len(tok)} tokens but the checkpoint's vocabulary only {cfg.vocab_size}: "
                           "pass the tokenizer this model was trained with")
    vocab = tok.get_vocab()
    ids = {"cls_token_id": tok.cls_token_id, "enc_token_id": vocab.get("[ENC]"), "pad_token_id": tok.pad_token_id,
           "sep_token_id": tok.sep_token_id, "dec_token_id": vocab.get("[DEC]")}
    if keep_model_ids:
        for name in ("pad_token_id", "sep_token_id", "dec_token_id"):
            theirs = ids.pop(name)
            if theirs != getattr(cfg, name):
                log.warning("%s is %s in the model config but %s in the tokenizer", name, getattr(cfg, name), theirs)
    model.cfg = dataclasses.replace(cfg, **{k: v for k, v in ids.items() if v is not None})
