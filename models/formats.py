"""Which checkpoint format a path holds, and loading it into a Captioner or a Filter.

- our folder: config.json with "architecture", model.safetensors, tokenizer files;
- a transformers BLIP folder (`save_pretrained` of BlipForConditionalGeneration or
  BlipForImageTextRetrieval): config.json with "architectures";
- an original salesforce/BLIP `.pth` file (read with weights_only=True: no pickled code runs).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from models.checkpoint import load_checkpoint, local_folder
from models.errors import CapfiltError
from models.tokenizer import blip_tokenizer, load_tokenizer

log = logging.getLogger(__name__)


def detect(local: Path) -> str:
    if local.is_file():
        if local.suffix in (".pth", ".pt", ".bin"):
            return "blip_pth"
        raise CapfiltError(f"{local} is a file but not a .pth checkpoint")
    config = local / "config.json"
    if not config.is_file():
        raise CapfiltError(
            f"{local} is not a checkpoint: expected a folder with config.json (ours or transformers' BLIP) "
            "or an original BLIP .pth file"
        )
    values = json.loads(config.read_text())
    if "architecture" in values:
        return "capfilt"
    if any(str(a).startswith("Blip") for a in values.get("architectures", [])) or values.get("model_type") == "blip":
        return "hf_blip"
    raise CapfiltError(f"{config} is neither a CapFilt nor a transformers BLIP config")


def _tokenizer(spec, fallback: Path | None):
    if hasattr(spec, "convert_tokens_to_ids"):  # a tokenizer object
        return spec
    if spec is not None:
        spec = Path(spec)
        return blip_tokenizer(spec) if spec.is_file() else load_tokenizer(spec)
    if fallback is not None and any((fallback / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
        return load_tokenizer(fallback)
    raise CapfiltError("this checkpoint carries no tokenizer: pass tokenizer= (a tokenizer, its folder or a vocab.txt)")


def load_any(cls, path, image_size: int | None = None, tokenizer=None):
    with local_folder(str(path)) as local:
        kind = detect(local)
        if kind == "capfilt":
            model = load_checkpoint(cls, local, image_size, strict=False)
        elif kind == "hf_blip":
            from models.convert_hf import load_hf_blip

            model = load_hf_blip(cls, local, image_size)
        else:
            from models.convert_blip import load_blip_pth

            model = load_blip_pth(cls, local, image_size)
        model.tokenizer = _tokenizer(tokenizer, None if kind == "blip_pth" else local)
        if kind != "capfilt":
            _adopt_token_ids(model, kind)
    return model


def _adopt_token_ids(model, kind: str) -> None:
    """HF configs carry no [CLS]/[ENC] id and .pth files no ids at all: the tokenizer supplies them."""
    tok, cfg = model.tokenizer, model.cfg
    if len(tok) > cfg.vocab_size:
        raise CapfiltError(f"the tokenizer has {len(tok)} tokens but the checkpoint's vocabulary only {cfg.vocab_size}: "
                           "pass the tokenizer this model was trained with")
    vocab = tok.get_vocab()
    ids = {"cls_token_id": tok.cls_token_id, "enc_token_id": vocab.get("[ENC]"), "pad_token_id": tok.pad_token_id,
           "sep_token_id": tok.sep_token_id, "dec_token_id": vocab.get("[DEC]")}
    if kind == "hf_blip":  # the HF config's pad/sep/bos ids are the model's own: keep them, warn on a mismatch
        for name in ("pad_token_id", "sep_token_id", "dec_token_id"):
            theirs = ids.pop(name)
            if theirs != getattr(cfg, name):
                log.warning("%s is %s in the model config but %s in the tokenizer", name, getattr(cfg, name), theirs)
    model.cfg = dataclasses.replace(cfg, **{k: v for k, v in ids.items() if v is not None})
