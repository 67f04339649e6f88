"""MED, BLIP's multimodal mixture of encoder-decoder: a ViT, a text encoder and a text decoder.

Heads and training state live in the models built on it (pretrain.BlipPretrain, and the
captioner and filter); MED itself only knows how to run the three text modes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import MEDConfig
from models.text import LMHead, TextTransformer, tie_decoder
from models.vision import build_vision_encoder


class MED(nn.Module):
    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__()
        if image_size:  # e.g. the fine-tuning size of a model pre-trained at 224
            cfg = dataclasses.replace(cfg, image_size=image_size)
        self.cfg = cfg
        self.visual = build_vision_encoder(cfg)
        self.text_encoder = TextTransformer(cfg)
        self.text_decoder = TextTransformer(cfg)
        tie_decoder(self.text_encoder, self.text_decoder, cfg.share)
        self.lm_head = LMHead(cfg, self.text_decoder.embeddings.word)
        self.apply(_init_bert_weights)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def save_pretrained(self, folder: str | Path, tokenizer=None) -> None:
        save_checkpoint(self, folder, tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path, image_size: int | None = None, strict: bool = True, **overrides):
        """Load a checkpoint folder (any fsspec path), resampling position tables to `image_size`."""
        return load_checkpoint(cls, folder, image_size, strict, **overrides)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1 + N, vision_width) image tokens."""
        return self.visual.forward_features(images)

    def encode_text(self, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Unimodal text encoder: the caller's first token ([CLS]) stays; no cross-attention."""
        return self.text_encoder(input_ids, padding)

    def encode_grounded(self, input_ids, padding, image_embeds, image_kv=None) -> torch.Tensor:
        """Image-grounded text encoder: [ENC] replaces the first token; its output feeds ITM.
        image_kv: the encoder's cross-attention keys/values per layer, instead of image_embeds."""
        input_ids = input_ids.clone()
        input_ids[:, 0] = self.cfg.enc_token_id
        return self.text_encoder(input_ids, padding, image_embeds, image_kv=image_kv)

    def decode(self, input_ids, padding, image_embeds, image_kv=None) -> torch.Tensor:
        """Image-grounded decoder: [DEC] replaces the first token, causal mask -> (B, T, V) logits.
        image_kv: the decoder's cross-attention keys/values per layer, instead of image_embeds."""
        input_ids = input_ids.clone()
        input_ids[:, 0] = self.cfg.dec_token_id
        hidden = self.text_decoder(input_ids, padding, image_embeds, causal=True, image_kv=image_kv)
        return self.lm_head(hidden)

    def decoder_shares_cross_attention(self) -> bool:
        """Whether the decoder's cross-attention is the encoder's (BLIP's default, share all_but_sa)."""
        return all(d.cross_attn is e.cross_attn for d, e in zip(self.text_decoder.layers, self.text_encoder.layers))


def _init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal 0.02) for the text side; timm initialises its own ViT."""
    if isinstance(module, (TextTransformer, LMHead)):
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Embedding)):
                nn.init.normal_(sub.weight, std=0.02)
                if isinstance(sub, nn.Linear) and sub.bias is not None:
                    nn.init.zeros_(sub.bias)
                if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
                    nn.init.zeros_(sub.weight[sub.padding_idx])
            elif isinstance(sub, nn.LayerNorm):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)
