"""The captioner: ViT + image-grounded text decoder + LM head, writing captions for images."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from models import streams
from models.config import MEDConfig
from models.errors import CapfiltError
from models.generate import beam_search, sample
from models.inference import InferenceModel
from models.sampling import SamplingOptions
from models.text import LMHead, TextTransformer
from models.tokenizer import prompt_tokens
from models.vision import build_vision_encoder


class Captioner(InferenceModel):
    role = "captioner"

    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__(cfg, image_size)
        self.visual = build_vision_encoder(self.cfg)
        self.text_decoder = TextTransformer(self.cfg)
        self.lm_head = LMHead(self.cfg, self.text_decoder.embeddings.word)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """[DEC] + the prompt's tokens (BLIP drops the tokenizer's [SEP] so the caption goes on)."""
        ids = prompt_tokens(self.tokenizer, prompt)
        ids[0] = self.cfg.dec_token_id
        return torch.tensor(ids, device=self.device)

    def logits(self, images, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits (B, T, V); the first token is replaced by [DEC]."""
        input_ids = input_ids.clone().to(self.device)
        input_ids[:, 0] = self.cfg.dec_token_id
        with torch.inference_mode(), self.autocast():
            hidden = self.text_decoder(input_ids, padding.to(self.device), self.encode_image(images), causal=True)
            return self.lm_head(hidden).float()

    def generate_ids(self, images, options: SamplingOptions | None = None, *, seed: int | None = None,
                     keys: Sequence | None = None, **overrides) -> torch.Tensor:
        """Token ids (B * num_captions, max_length), rows of one image together, padded after [SEP].

        `options` (SamplingOptions, its defaults when None) with `overrides` by name (top_p=0.95).
        Nucleus sampling draws caption j of image b from (seed, keys[b], j) alone
        (models/streams.py), so an image gets the same captions in any batch; without `keys`, an
        image is keyed by its place in this call; without `seed`, torch's global generator draws it."""
        o = dataclasses.replace(options or SamplingOptions(), **overrides).check("caption options")
        method, num_captions, max_length = o.method, o.num_captions, o.max_length
        prompt_ids = self.prompt_ids(o.prompt)
        if max_length <= len(prompt_ids):
            raise CapfiltError(f"max_length={max_length} leaves no room after the {len(prompt_ids)}-token prompt")
        n_images = len(images)
        if keys is not None and len(keys) != n_images:
            raise CapfiltError(f"{len(keys)} keys for {n_images} images: give one key per image")
        row_seeds = None
        if method == "nucleus":
            if seed is None:  # torch's global generator (torch.manual_seed) decides the run's seed
                seed = int(torch.randint(0, 2**62, (1,)))
            row_seeds = streams.row_seeds(seed, list(range(n_images)) if keys is None else list(keys), num_captions,
                                          device=self.device)
        common = dict(eos=self.cfg.sep_token_id, pad=self.cfg.pad_token_id, max_length=max_length,
                      min_length=o.min_length, repetition_penalty=o.repetition_penalty)
        with torch.inference_mode(), self.autocast():
            image_embeds = self.encode_image(images)
            if method == "beam":
                return beam_search(self.text_decoder, self.lm_head, image_embeds, prompt_ids, o.num_beams, num_captions,
                                   **common)
            return sample(self.text_decoder, self.lm_head, image_embeds, prompt_ids, num_captions,
                          top_p=None if method == "greedy" else o.top_p, row_seeds=row_seeds, **common)

    def caption(self, images, options: SamplingOptions | None = None, *, seed: int | None = None,
                keys: Sequence | None = None, **overrides) -> list[list[str]]:
        """Captions for each image (nucleus sampling by default), the prompt stripped; arguments as
        generate_ids."""
        o = dataclasses.replace(options or SamplingOptions(), **overrides)
        ids = self.generate_ids(images, o, seed=seed, keys=keys)
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        stem = o.prompt.strip().lower()
        texts = [t[len(stem):].strip() if t.startswith(stem) else t.strip() for t in texts]
        return [texts[i : i + o.num_captions] for i in range(0, len(texts), o.num_captions)]
