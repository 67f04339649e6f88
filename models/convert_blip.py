"""Original salesforce/BLIP `.pth` checkpoints -> our Captioner / Filter.

The files (`model_base.pth`, `model_base_capfilt_large.pth`, `model_base_retrieval_coco.pth`,
`model_*_caption*.pth`, ...) are `{"model": state_dict, ...}`: `visual_encoder.*` in timm's
names, `text_encoder.*` (BERT with cross-attention), `text_decoder.bert.*` and
`text_decoder.cls.*`, the ITC/ITM heads, plus momentum copies and queues we ignore. They carry
no model config, so it is read off the tensor shapes. They are read with `weights_only=True`:
a file that would run pickled code is refused.
"""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

from models.checkpoint import load_state
from models.config import MEDConfig
from models.convert_hf import HEADS, check_tied, rename_head, rename_text
from models.errors import CapfiltError
from models.kinds.base import role_of

log = logging.getLogger(__name__)

VISION, ENCODER, DECODER = "visual_encoder.", "text_encoder.", "text_decoder."
HEAD_DIM = 64  # BLIP's ViTs (base 12 x 64, large 16 x 64) and BERT use 64-wide heads; files do not say


def read_pth(file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a BLIP `.pth`, read without running any pickled code."""
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights-only unpickler refuses anything but tensors and plain data
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if code:
            raise CapfiltError(f"{file} holds pickled objects other than tensors ({code.group(1)}, code that would run "
                               "on loading); refused: only plain weight files are loaded") from None
        raise CapfiltError(f"{file} is not a PyTorch checkpoint (or it is corrupt)") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CapfiltError(f"{file} is not a PyTorch checkpoint: {str(err).splitlines()[0]}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or f"{VISION}pos_embed" not in state:
        raise CapfiltError(f"{file} is not an original BLIP checkpoint: no 'model' state dict with {VISION}pos_embed")
    return state


def _count(state, prefix: str, suffix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _heads(width: int, what: str) -> int:
    if width % HEAD_DIM:
        raise CapfiltError(f"cannot infer the {what} head count: width {width} is not a multiple of "
                           f"BLIP's {HEAD_DIM}-wide heads")
    return width // HEAD_DIM


def infer_config(state: dict[str, torch.Tensor], source: str) -> MEDConfig:
    """MEDConfig from the shapes of a BLIP state dict (eps and special ids are BLIP's: bert-base + [DEC], [ENC])."""
    def shape(name):
        if name not in state:
            raise CapfiltError(f"{source} lacks {name}: not an original BLIP checkpoint")
        return tuple(state[name].shape)

    vision_width, _, patch, _ = shape(f"{VISION}patch_embed.proj.weight")
    patches = shape(f"{VISION}pos_embed")[1] - 1
    side = round(patches**0.5)
    if side * side != patches:
        raise CapfiltError(f"{source}: {VISION}pos_embed holds {patches} patches, not a square grid")
    text = f"{DECODER}bert." if f"{DECODER}bert.embeddings.word_embeddings.weight" in state else ENCODER
    vocab, text_width = shape(f"{text}embeddings.word_embeddings.weight")
    return MEDConfig(
        name="blip-pth",
        image_size=side * patch, finetune_image_size=side * patch, patch_size=patch,
        vision_width=vision_width, vision_layers=_count(state, f"{VISION}blocks.", ".norm1.weight"),
        vision_heads=_heads(vision_width, "vision"),
        vision_mlp_ratio=shape(f"{VISION}blocks.0.mlp.fc1.weight")[0] / vision_width,
        vocab_size=vocab, text_width=text_width, text_heads=_heads(text_width, "text"),
        text_layers=_count(state, f"{text}encoder.layer.", ".attention.self.query.weight"),
        text_ffn=shape(f"{text}encoder.layer.0.intermediate.dense.weight")[0],
        max_positions=shape(f"{text}embeddings.position_embeddings.weight")[0],
        dec_token_id=vocab - 2, enc_token_id=vocab - 1,  # BLIP appends [DEC] then [ENC]
        embed_dim=shape("vision_proj.weight")[0] if "vision_proj.weight" in state else MEDConfig.embed_dim,
    )


def load_blip_pth(cls, file: Path, image_size: int | None = None):
    """Build `cls` (Captioner or Filter) from an original BLIP `.pth`; a pre-training file loads as either."""
    want = role_of(cls)
    state = read_pth(file)
    has_decoder = f"{DECODER}bert.embeddings.word_embeddings.weight" in state
    has_itm = "itm_head.weight" in state and any(k.startswith(ENCODER) and ".crossattention." in k for k in state)
    if want == "captioner" and not has_decoder:
        raise CapfiltError(f"{file} holds a BLIP model without a text decoder (retrieval / ITM): load it with Filter")
    if want == "filter" and not has_itm:
        raise CapfiltError(f"{file} holds a BLIP captioner (no image-grounded encoder with an ITM head): "
                           "load it with Captioner")
    cfg = infer_config(state, str(file))
    check_tied(state, str(file), DECODER)
    ours = {}
    for name, tensor in state.items():  # momentum copies (*_m), queues, temp and position_ids fall through
        if name.startswith(VISION):
            new = "visual." + name[len(VISION):]
        elif want == "captioner":
            new = rename_text(name, f"{DECODER}bert.", "text_decoder.") or rename_head(name, DECODER)
        else:
            new = rename_text(name, ENCODER, "text_encoder.") or (name if name.startswith(HEADS) else None)
        if new is not None:
            ours.setdefault(new, tensor)  # a tied alias never overwrites the tensor it aliases
    model = cls(cfg, image_size=image_size)
    load_state(model, ours, str(file), strict=True)
    log.info("loaded %s from BLIP checkpoint %s", cls.__name__, file)
    return model
