"""transformers' BLIP <-> our Captioner / Filter: config mapping, weight names, and the export.

A `save_pretrained` folder of `BlipForConditionalGeneration` loads as a Captioner and one of
`BlipForImageTextRetrieval` as a Filter (models/kinds/hf_blip.py, with these mappings);
`export_hf` writes the reverse. The text side of both HF models keeps BERT's names, which are
also the original BLIP checkpoints' names, so `models.convert_blip` reuses `TEXT_RULES`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from models.checkpoint import local_folder
from models.config import MEDConfig
from models.errors import CapfiltError
from models.kinds.base import role_of
from models.preprocess import MEAN, STD

log = logging.getLogger(__name__)

# BERT layout (HF BLIP and original BLIP) -> ours, applied after the text prefix is swapped.
TEXT_RULES = [
    (r"embeddings\.word_embeddings\.", "embeddings.word."),
    (r"embeddings\.position_embeddings\.", "embeddings.position."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.self_attn.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_attn.norm."),
    (r"encoder\.layer\.(\d+)\.crossattention\.self\.(query|key|value)\.", r"layers.\1.cross_attn.\2."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"layers.\1.cross_attn.out."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"layers.\1.cross_attn.norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn.norm."),
]
# BERT's prediction head -> our LMHead. The output matrix and its bias are tied aliases.
HEAD_RULES = {
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.norm.",
    "cls.predictions.bias": "lm_head.bias",
}
TIED = {"cls.predictions.decoder.weight": "text_decoder.embeddings.word.weight",
        "cls.predictions.decoder.bias": "lm_head.bias"}
# HF's ViT (CLIP-like names) -> timm's
VISION_RULES = [
    (r"embeddings\.class_embedding$", "cls_token"),
    (r"embeddings\.position_embedding$", "pos_embed"),
    (r"embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (r"post_layernorm\.", "norm."),
]
HEADS = ("vision_proj.", "text_proj.", "itm_head.")
ARCHITECTURES = {"BlipForConditionalGeneration": "captioner", "BlipForImageTextRetrieval": "filter"}
HF_CLASS = {role: arch for arch, role in ARCHITECTURES.items()}


def _apply(rules, name: str) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, name)
        if n:
            return new
    return None


def rename_text(name: str, prefix: str, ours: str) -> str | None:
    """`{prefix}<BERT name>` -> `{ours}<our name>`; None for names outside the prefix."""
    if not name.startswith(prefix):
        return None
    rest = _apply(TEXT_RULES, name[len(prefix):])
    return None if rest is None else ours + rest


def rename_head(name: str, prefix: str) -> str | None:
    """`{prefix}cls.predictions.*` -> lm_head names (tied aliases -> what they alias)."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    for old, new in HEAD_RULES.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return TIED.get(rest)


def hf_to_ours(name: str) -> str | None:
    """One HF BLIP state-dict name -> ours; None for names we do not keep (buffers, other heads)."""
    if name.startswith("vision_model."):
        rest = _apply(VISION_RULES, name[len("vision_model."):])
        return None if rest is None else "visual." + rest
    if name.startswith(HEADS):
        return name
    return (rename_text(name, "text_encoder.", "text_encoder.") or rename_text(name, "text_decoder.bert.", "text_decoder.")
            or rename_head(name, "text_decoder."))


def check_tied(state: dict[str, torch.Tensor], source: str, prefix: str) -> None:
    """Our LM head is tied to the word embeddings (as in BLIP): an untied file cannot be represented."""
    for alias, target in ((f"{prefix}cls.predictions.decoder.weight", f"{prefix}bert.embeddings.word_embeddings.weight"),
                          (f"{prefix}cls.predictions.decoder.bias", f"{prefix}cls.predictions.bias")):
        if alias in state and target in state and not torch.equal(state[alias], state[target]):
            raise CapfiltError(f"{source}: {alias} differs from {target}; CapFilt ties the LM head's output "
                               "matrix and bias as BLIP does, so an untied checkpoint cannot be loaded")


# -- configs --------------------------------------------------------------------------------

def _gelu(section: str, act) -> None:
    # Our text and vision layers use exact (erf) GELU, as BLIP and HF's default "gelu" do.
    if act != "gelu":
        raise CapfiltError(f"{section}.hidden_act={act!r}: CapFilt runs exact GELU ('gelu') only")


def _square(value, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CapfiltError(f"vision_config.{what}={list(value)}: CapFilt supports square images and patches only")
        return int(value[0])
    return int(value)


def med_config_from_hf(config) -> MEDConfig:
    """A transformers BlipConfig -> MEDConfig (the ids HF lacks, [CLS] and [ENC], come from the tokenizer)."""
    v, t = config.vision_config, config.text_config
    _gelu("vision_config", v.hidden_act)
    _gelu("text_config", t.hidden_act)
    size, patch = _square(v.image_size, "image_size"), _square(v.patch_size, "patch_size")
    ratio = v.intermediate_size / v.hidden_size
    if int(v.hidden_size * ratio) != v.intermediate_size:  # timm sizes the MLP as int(width * ratio)
        raise CapfiltError(f"vision intermediate_size={v.intermediate_size}: timm cannot build that MLP "
                           f"from hidden_size={v.hidden_size} (it sizes it as int(width * ratio))")
    if t.encoder_hidden_size != v.hidden_size:
        raise CapfiltError(f"text_config.encoder_hidden_size={t.encoder_hidden_size} differs from "
                           f"the vision width {v.hidden_size}")
    return MEDConfig(
        name="hf-blip",
        image_size=size, finetune_image_size=size, patch_size=patch,
        vision_width=v.hidden_size, vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads,
        vision_mlp_ratio=ratio, vision_eps=v.layer_norm_eps,
        vocab_size=t.vocab_size, text_width=t.hidden_size, text_layers=t.num_hidden_layers,
        text_heads=t.num_attention_heads, text_ffn=t.intermediate_size, max_positions=t.max_position_embeddings,
        dropout=t.hidden_dropout_prob, layer_norm_eps=t.layer_norm_eps,
        pad_token_id=t.pad_token_id, sep_token_id=t.sep_token_id, dec_token_id=t.bos_token_id,
        enc_token_id=t.vocab_size - 1,  # BLIP appends [DEC] then [ENC]: the tokenizer confirms it later
        embed_dim=config.image_text_hidden_size, label_smoothing=t.label_smoothing,
    )


def blip_config(cfg: MEDConfig):
    """MEDConfig -> transformers BlipConfig (eos is [SEP], as BLIP generates)."""
    from transformers import BlipConfig  # transformers' BLIP modules take seconds to import: only when used

    vision = dict(
        hidden_size=cfg.vision_width, intermediate_size=int(cfg.vision_width * cfg.vision_mlp_ratio),
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads, image_size=cfg.image_size,
        patch_size=cfg.patch_size, layer_norm_eps=cfg.vision_eps, hidden_act="gelu",
    )
    text = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, encoder_hidden_size=cfg.vision_width,
        intermediate_size=cfg.text_ffn, num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions, layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        bos_token_id=cfg.dec_token_id, pad_token_id=cfg.pad_token_id, sep_token_id=cfg.sep_token_id,
        eos_token_id=cfg.sep_token_id, is_decoder=True, label_smoothing=cfg.label_smoothing,
    )
    return BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=cfg.embed_dim,
                      label_smoothing=cfg.label_smoothing)


# -- export ---------------------------------------------------------------------------------

def export_hf(model, folder: str | Path) -> None:
    """Write a Captioner as BlipForConditionalGeneration, a Filter as BlipForImageTextRetrieval.

    The folder (`save_pretrained` layout, any fsspec path) loads with transformers'
    `from_pretrained`; the tokenizer and a BlipProcessor matching our preprocessing are saved
    beside it when the model carries a tokenizer.
    """
    import transformers  # its BLIP model classes take seconds to import: only an export needs them

    kind = role_of(type(model))
    hf_cls = getattr(transformers, HF_CLASS[kind])
    hf = hf_cls(blip_config(model.cfg)).eval()
    ours = model.state_dict()  # every name, tied aliases included
    state, unmapped = {}, []
    for name in hf.state_dict():
        source = hf_to_ours(name)
        if source is None or source not in ours:
            unmapped.append(name)
        else:
            state[name] = ours[source].detach().to(torch.float32)
    if unmapped:
        raise CapfiltError(f"cannot export the {kind}: no weights for {len(unmapped)} transformers parameters, "
                           f"e.g. {unmapped[:3]}")
    hf.load_state_dict(state, strict=True)
    with local_folder(str(folder), write=True) as local:
        hf.save_pretrained(str(local))
        if model.tokenizer is not None:
            _save_processor(model, local)
    log.info("exported %s to %s as %s", type(model).__name__, folder, hf_cls.__name__)


def _save_processor(model, local: Path) -> None:
    from transformers import BlipImageProcessor, BlipProcessor

    size = model.cfg.image_size
    images = BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(MEAN), image_std=list(STD),
                                resample=3)  # 3 = PIL bicubic, as models.preprocess resizes
    BlipProcessor(image_processor=images, tokenizer=model.tokenizer).save_pretrained(str(local))
