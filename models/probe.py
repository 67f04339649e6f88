"""What a checkpoint path holds, found cheaply, and whether it fits the role it is given.

A run's validation calls this before anything starts, so that a wrong checkpoint is one line of
the config's one message rather than a traceback from inside a model actor a minute later. Only
`config.json`, the folder's listing, the first bytes of a `.pth` file and the tokenizer's files
are read (on any fsspec path), never the weights.

Roles: a captioner needs the image-grounded decoder and its LM head, a filter the ITM head.
"""
from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec

from models.convert_hf import ARCHITECTURES as HF_ROLES  # transformers class -> the role it holds

# our checkpoints name the class that saved them (models/checkpoint.py save_checkpoint); a
# pre-training checkpoint holds every part, so it serves both roles
OUR_ROLES = {"BlipPretrain": ("captioner", "filter"), "Captioner": ("captioner",), "Filter": ("filter",)}
PTH_SUFFIXES = (".pth", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
WEIGHTS = "model.safetensors"
# what torch.save writes: a zip archive (since torch 1.6) or, before that, a pickle
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class Probe:
    kind: str | None = None  # capfilt | hf_blip | blip_pth; None when it is no checkpoint at all
    architecture: str | None = None
    roles: tuple[str, ...] = ()
    problem: str | None = None  # why it cannot be loaded at all


def probe(path: str) -> Probe:
    """The kind, architecture and roles of the checkpoint at `path` (a folder or a `.pth` file)."""
    fs, root = fsspec.core.url_to_fs(str(path))
    root = root.rstrip("/")
    if not fs.exists(root):
        return Probe(problem=f"checkpoint {path} does not exist")
    if fs.isfile(root):
        return _probe_file(fs, root, path)
    config = posixpath.join(root, "config.json")
    if not fs.isfile(config):
        return Probe(problem=f"checkpoint {path} is a folder without config.json: give a CapFilt or transformers BLIP "
                             "checkpoint folder (config.json, model.safetensors, tokenizer files)")
    try:
        with fs.open(config, "rb") as fh:
            values = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        return Probe(problem=f"checkpoint {path}: config.json is not valid JSON ({err})")
    if not isinstance(values, dict):
        return Probe(problem=f"checkpoint {path}: config.json holds no mapping")
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    if "architecture" in values:
        arch = str(values["architecture"])
        result = Probe("capfilt", arch, OUR_ROLES.get(arch, ()))
        if not result.roles:
            result.problem = (f"checkpoint {path} holds a CapFilt {arch}, which is neither a captioner nor a filter "
                              f"(known: {', '.join(OUR_ROLES)})")
    else:
        archs = values.get("architectures") or []
        arch = str(archs[0]) if archs else None
        if arch is None and values.get("model_type") == "blip":  # no class named: the weights tell, at load time
            result = Probe("hf_blip", None, ("captioner", "filter"))
        elif arch in HF_ROLES:
            result = Probe("hf_blip", arch, (HF_ROLES[arch],))
        else:
            what = f"a transformers {arch}" if arch else f"a {values.get('model_type') or 'model'} config"
            return Probe(architecture=arch, problem=(
                f"checkpoint {path} holds {what}: CapFilt loads its own checkpoints and transformers' "
                f"BlipForConditionalGeneration (captioner) and BlipForImageTextRetrieval (filter)"))
    if WEIGHTS not in names and result.problem is None:
        other = sorted(n for n in names if n.endswith((".bin", ".safetensors", ".pth")))
        result.problem = (f"checkpoint {path} has config.json but no {WEIGHTS}"
                          + (f" (it has {', '.join(other)}: re-save it with save_pretrained)" if other else ""))
    if result.problem is None and not names & {"tokenizer.json", "vocab.txt"}:
        result.problem = f"checkpoint {path} carries no tokenizer (tokenizer.json or vocab.txt): save it with its tokenizer"
    return result


def _probe_file(fs, root: str, path: str) -> Probe:
    name = posixpath.basename(root)
    if name.endswith(PTH_SUFFIXES):
        with fs.open(root, "rb") as fh:
            head = fh.read(4)
        if not head.startswith(_TORCH_MAGIC):
            return Probe(problem=f"checkpoint {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
        # a run config names no tokenizer, and a .pth file carries none (models/formats.py)
        return Probe("blip_pth", None, ("captioner", "filter"), problem=(
            f"checkpoint {path} is an original BLIP .pth file, which carries no tokenizer: load it once with "
            "Captioner/Filter.from_pretrained(path, tokenizer=...) and save_pretrained it to a folder, then give that folder"))
    parent = posixpath.dirname(root)
    if name in (WEIGHTS, "config.json", "pytorch_model.bin") or name.endswith(".safetensors"):
        return Probe(problem=f"checkpoint {path} is the file {name}, not a checkpoint: give the folder that holds it "
                             f"({fs.unstrip_protocol(parent) if 'file' not in fs.protocol else parent})")
    return Probe(problem=f"checkpoint {path} is a file but not a checkpoint: give a checkpoint folder or a BLIP .pth file")


def role_problem(found: Probe, path: str, role: str) -> str | None:
    """Why the checkpoint cannot serve as `role` (captioner or filter), or None."""
    if found.problem:
        return found.problem
    if role not in found.roles:
        held = " and ".join(found.roles)
        return (f"checkpoint {path} holds a {held} ({found.architecture}), not a {role}: "
                f"give a {role} checkpoint (or a pre-training one, which holds both)")
    return None


def prompt_tokens(path: str, prompt: str) -> int:
    """How many tokens the captioner's prompt takes in the checkpoint's tokenizer ([DEC] included,
    as models/captioner.py prompt_ids counts them)."""
    from models.tokenizer import load_tokenizer

    fs, root = fsspec.core.url_to_fs(str(path))
    if "file" in fs.protocol:
        tokenizer = load_tokenizer(root)
    else:  # only the tokenizer's few files, not the weights
        with tempfile.TemporaryDirectory(prefix="capfilt-tok-") as tmp:
            for name in TOKENIZER_FILES:
                if fs.exists(posixpath.join(root, name)):
                    fs.get(posixpath.join(root, name), str(Path(tmp) / name))
            tokenizer = load_tokenizer(tmp)
    return len(tokenizer(prompt)["input_ids"]) - 1  # [CLS] becomes [DEC]; the [SEP] is dropped
