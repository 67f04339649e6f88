"""The text transformer: BERT layers (post-norm) with optional cross-attention to image tokens.

One `TextTransformer` serves as the unimodal encoder (no image), the image-grounded encoder
(image tokens given, [ENC] first) and the image-grounded decoder (causal, [DEC] first). The
caller chooses the mode by what it passes; encoder and decoder share modules as `tie_decoder` says.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import MEDConfig


class Attention(nn.Module):
    """Multi-head attention with BERT's output block: LayerNorm(x + Dropout(W_o · attn))."""

    def __init__(self, width: int, heads: int, source_width: int, dropout: float, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(source_width, width)
        self.value = nn.Linear(source_width, width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, C/H)
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, Cs) -> keys and values, each (B, H, S, C/H): cacheable across decoding steps."""
        return self._split(self.key(source)), self._split(self.value(source))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        # x: (B, T, C) queries; k, v: (B, H, S, C/H); mask: bool, broadcastable to (B, H, T, S),
        # True where a query may attend.
        q = self._split(self.query(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(x.shape)
        return self.norm(x + F.dropout(self.out(y), self.dropout, self.training))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        return self.attend(x, *self.project_kv(x if source is None else source), mask)


class FeedForward(nn.Module):
    """BERT's intermediate + output block: LayerNorm(x + Dropout(W_2 · GELU(W_1 · x)))."""

    def __init__(self, width: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(x)))
        return self.norm(x + F.dropout(y, self.dropout, self.training))


class TextLayer(nn.Module):
    def __init__(self, cfg: MEDConfig, cross_attention: bool = True):
        super().__init__()
        w, h, d, eps = cfg.text_width, cfg.text_heads, cfg.dropout, cfg.layer_norm_eps
        self.self_attn = Attention(w, h, w, d, eps)
        self.cross_attn = Attention(w, h, cfg.vision_width, d, eps) if cross_attention else None
        self.ffn = FeedForward(w, cfg.text_ffn, d, eps)

    def forward(self, x, mask, image_embeds=None, image_kv=None):
        # image_kv: this layer's cross-attention keys and values, projected once for images that
        # several passes share (TextTransformer.image_kv); else they are projected from image_embeds
        x = self.self_attn(x, mask=mask)
        if image_kv is not None:
            x = self.cross_attn.attend(x, *image_kv)
        elif image_embeds is not None:
            x = self.cross_attn(x, image_embeds)
        return self.ffn(x)


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (BLIP's BERT has no token types)."""

    def __init__(self, cfg: MEDConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_positions, cfg.text_width)
        self.norm = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.dropout = cfg.dropout

    def forward(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # offset: position of the first token (decoding one token at a time after a cache)
        positions = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)
        return F.dropout(self.norm(x), self.dropout, self.training)


def attention_mask(padding: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, T, T) bool mask for SDPA; causal adds the lower triangle."""
    keys = padding.bool()[:, None, None, :]  # (B, 1, 1, T)
    if not causal:
        return keys
    t = padding.shape[1]
    tril = torch.ones(t, t, dtype=torch.bool, device=padding.device).tril()
    return keys & tril  # position i sees keys 0..i that are not padding


class TextTransformer(nn.Module):
    def __init__(self, cfg: MEDConfig, cross_attention: bool = True):
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(TextLayer(cfg, cross_attention) for _ in range(cfg.text_layers))

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        padding: torch.Tensor,  # (B, T), 1 = token, 0 = padding
        image_embeds: torch.Tensor | None = None,  # (B, N, vision_width); None = unimodal
        causal: bool = False,
        image_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,  # image_kv()'s, instead of image_embeds
    ) -> torch.Tensor:  # (B, T, text_width)
        mask = attention_mask(padding, causal)
        x = self.embeddings(input_ids)
        for i, layer in enumerate(self.layers):  # every image token is valid: no image mask
            x = layer(x, mask, image_embeds, None if image_kv is None else image_kv[i])
        return x

    def image_kv(self, image_embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(B, N, vision_width) -> per layer the cross-attention's keys and values, each
        (B, H, N, C/H). Pre-training attends to each image four times (ITM's positive pass, the
        same image as a hard negative for another text, the positive again beside a negative text,
        and the decoder, whose cross-attention is the encoder's): projecting once and gathering
        rows gives the same outputs and gradients for a quarter of that projection's FLOPs."""
        return [layer.cross_attn.project_kv(image_embeds) for layer in self.layers]


class LMHead(nn.Module):
    """BERT's prediction head; its output matrix is the (decoder's) word-embedding matrix."""

    def __init__(self, cfg: MEDConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.text_width, cfg.text_width)
        self.norm = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.word_embeddings = word_embeddings  # tied, not a copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, V)
        x = self.norm(F.gelu(self.dense(x)))
        return F.linear(x, self.word_embeddings.weight, self.bias)


def tie_decoder(encoder: TextTransformer, decoder: TextTransformer, share: str) -> None:
    """Make the decoder use the encoder's modules (the same Parameter objects) per BLIP Table 3."""
    if share == "none":
        return
    decoder.embeddings = encoder.embeddings
    for enc, dec in zip(encoder.layers, decoder.layers):
        dec.ffn = enc.ffn
        if share != "all_but_sa":
            dec.self_attn = enc.self_attn
        if share != "all_but_ca":
            dec.cross_attn = enc.cross_attn
