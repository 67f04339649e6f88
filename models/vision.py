"""The image encoder: timm's VisionTransformer as BLIP configures it (pre-norm, LayerNorm eps 1e-6)."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from torch import nn
from timm.layers import resample_abs_pos_embed
from timm.models import load_checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from models.config import MEDConfig
from models.errors import CapfiltError

log = logging.getLogger(__name__)


def build_vision_encoder(cfg: MEDConfig) -> VisionTransformer:
    """A ViT whose `forward_features(images)` gives (B, 1 + (S/P)^2, vision_width) normed tokens."""
    vit = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.vision_width,
        depth=cfg.vision_layers,
        num_heads=cfg.vision_heads,
        mlp_ratio=cfg.vision_mlp_ratio,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=cfg.vision_eps),
        drop_path_rate=cfg.drop_path,
        num_classes=0,  # no classifier: MED reads every token
    )
    vit.set_grad_checkpointing(cfg.grad_checkpointing)
    return vit


def resample_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a (1, 1 + n, D) position table to `num_patches` patches (bicubic on the 2-D grid)."""
    if pos_embed.shape[1] - 1 == num_patches:
        return pos_embed
    side = int(round(num_patches**0.5))
    old_side = int(round((pos_embed.shape[1] - 1) ** 0.5))
    log.info("interpolating position embeddings %dx%d -> %dx%d", old_side, old_side, side, side)
    # antialias off: BLIP interpolates the same way (plain bicubic) when it moves 224 -> 384.
    return resample_abs_pos_embed(pos_embed, [side, side], [old_side, old_side], antialias=False)


def load_timm_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Start the ViT from a timm (ImageNet) checkpoint file, as BLIP starts from ImageNet weights.

    timm's own filter converts the layout and resamples the position table to our image size;
    the classifier head of the checkpoint is dropped.
    """
    path = Path(path)
    if not path.exists():
        raise CapfiltError(f"ViT checkpoint {path} does not exist")

    def keep_backbone(state_dict, model):
        state_dict = checkpoint_filter_fn(state_dict, model, antialias=False)
        return {k: v for k, v in state_dict.items() if not k.startswith("head.")}

    incompatible = load_checkpoint(vit, str(path), strict=False, filter_fn=keep_backbone)
    missing = [k for k in getattr(incompatible, "missing_keys", []) if not k.startswith("head")]
    if missing:
        raise CapfiltError(f"{path} is not a ViT checkpoint of this shape: missing {missing[:5]}")
