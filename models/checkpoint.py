"""Checkpoint folders: `config.json`, `model.safetensors` and the tokenizer's files.

Folders may live on any fsspec path (local, s3://, ...). Shared parameters are written once
(under the encoder's name); position tables are resampled when a checkpoint made at one image
size is loaded at another.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import fsspec
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.config import MEDConfig
from models.errors import CapfiltError
from models.text import TextTransformer, tie_decoder
from models.vision import resample_pos_embed

log = logging.getLogger(__name__)

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers, each tensor once: a shared Parameter keeps its first name."""
    state = dict(model.named_parameters())
    state.update(model.named_buffers())
    return {name: t.detach().contiguous() for name, t in state.items()}


def decoder_aliases(cfg: MEDConfig) -> dict[str, str]:
    """text_decoder.X -> text_encoder.X for each tensor the two share under `cfg.share`.

    Our files store a shared tensor once, under the encoder's name; a model holding only the
    decoder (the captioner) finds its weights through these names.
    """
    with torch.device("meta"):
        encoder, decoder = TextTransformer(cfg), TextTransformer(cfg)
    tie_decoder(encoder, decoder, cfg.share)
    names = {id(p): n for n, p in encoder.named_parameters()}
    return {f"text_decoder.{n}": f"text_encoder.{names[id(p)]}" for n, p in decoder.named_parameters() if id(p) in names}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> list[str]:
    """Copy `state` into `model`; one clear error for a missing key or a shape mismatch.

    With strict=False, keys the model lacks are ignored (a pre-training checkpoint loaded into a
    captioner) and returned; keys the model has but the state lacks are always an error.
    """
    expected = unique_state(model)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CapfiltError(f"{source} lacks {len(missing)} weights this model needs, e.g. {missing[:3]}")
    unexpected = sorted(set(state) - set(model.state_dict()))  # state_dict() names shared tensors twice
    if unexpected and strict:
        raise CapfiltError(f"{source} holds {len(unexpected)} weights this model does not have, e.g. {unexpected[:3]}")
    selected = {}
    for name, target in expected.items():
        tensor = state[name]
        if name.endswith("pos_embed") and tensor.shape != target.shape:
            tensor = resample_pos_embed(tensor, target.shape[1] - 1)
        if tensor.shape != target.shape:
            raise CapfiltError(
                f"{source}: parameter {name} has shape {tuple(tensor.shape)} in the checkpoint "
                f"but {tuple(target.shape)} in the model; check the config matches the checkpoint"
            )
        selected[name] = tensor
    model.load_state_dict(selected, strict=False)  # aliases of shared tensors are loaded via their first name
    return unexpected


@contextlib.contextmanager
def store_errors(path: str, action: str = "read"):
    """A failure of the store (its own retries spent) as one CapfiltError naming the checkpoint."""
    try:
        yield
    except CapfiltError:
        raise
    except Exception as err:
        raise CapfiltError(f"cannot {action} the checkpoint {path}: {_short(err)}") from err


@contextlib.contextmanager
def local_folder(path: str, write: bool = False):
    """A local view of a checkpoint folder on any fsspec path; written back when `write`."""
    fs, root = fsspec.core.url_to_fs(str(path))
    if "file" in fs.protocol:
        if write:
            Path(root).mkdir(parents=True, exist_ok=True)
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="capfilt-ckpt-") as tmp:
        local = Path(tmp)
        if not write:
            with store_errors(path):
                if not fs.exists(root):
                    raise CapfiltError(f"checkpoint folder {path} does not exist")
                if fs.isfile(root):  # a single file (an original BLIP .pth): keep its name, the loaders go by it
                    local = local / root.rstrip("/").rsplit("/", 1)[-1]
                    fs.get(root, str(local))
                else:
                    fs.get(root.rstrip("/") + "/", tmp, recursive=True)
        yield local
        if write:
            with store_errors(path, "write"):
                fs.put(tmp.rstrip("/") + "/", root, recursive=True)


def _short(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= 300 else text[:300] + " ..."


def save_checkpoint(model: nn.Module, folder: str | Path, tokenizer=None, extra: dict | None = None) -> None:
    with local_folder(str(folder), write=True) as local:
        config = {"architecture": type(model).__name__, **model.cfg.to_dict()}
        config.update(extra or {})
        (local / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(unique_state(model), str(local / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(local))
    log.info("saved %s to %s", type(model).__name__, folder)


def read_config(local: Path) -> tuple[str | None, MEDConfig]:
    path = local / CONFIG
    if not path.is_file():
        raise CapfiltError(f"{local} is not a CapFilt checkpoint: it has no {CONFIG}")
    values = json.loads(path.read_text())
    architecture = values.pop("architecture", None)
    return architecture, MEDConfig.from_dict(values)


def load_checkpoint(cls, folder: str | Path, image_size: int | None = None, strict: bool = True, **overrides):
    """Build `cls` from a checkpoint folder, at `image_size` (default: the size it was saved at)."""
    with local_folder(str(folder)) as local:
        _, cfg = read_config(local)
        if overrides:
            cfg = MEDConfig.from_dict({**cfg.to_dict(), **overrides})
        weights = local / WEIGHTS
        if not weights.is_file():
            raise CapfiltError(f"{folder} has {CONFIG} but no {WEIGHTS}")
        model = cls(cfg, image_size=image_size)
        state = load_file(str(weights))
        for alias, name in decoder_aliases(cfg).items():
            if alias not in state and name in state:
                state[alias] = state[name]
        load_state(model, state, str(folder), strict=strict)
    return model
