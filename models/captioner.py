"""The captioner: ViT + image-grounded text decoder + LM head, writing captions for images."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from models import streams
from models.config import MEDConfig
from models.errors import CapfiltError
from models.generate import beam_search, sample
from models.inference import InferenceModel
from models.text import LMHead, TextTransformer
from models.vision import build_vision_encoder

METHODS = ("nucleus", "beam", "greedy")


class Captioner(InferenceModel):
    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__(cfg, image_size)
        self.visual = build_vision_encoder(self.cfg)
        self.text_decoder = TextTransformer(self.cfg)
        self.lm_head = LMHead(self.cfg, self.text_decoder.embeddings.word)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """[DEC] + the prompt's tokens (BLIP drops the tokenizer's [SEP] so the caption goes on)."""
        ids = self.tokenizer(prompt)["input_ids"][:-1]
        ids[0] = self.cfg.dec_token_id
        return torch.tensor(ids, device=self.device)

    def logits(self, images, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits (B, T, V); the first token is replaced by [DEC]."""
        input_ids = input_ids.clone().to(self.device)
        input_ids[:, 0] = self.cfg.dec_token_id
        with torch.inference_mode(), self.autocast():
            hidden = self.text_decoder(input_ids, padding.to(self.device), self.encode_image(images), causal=True)
            return self.lm_head(hidden).float()

    def generate_ids(
        self,
        images,
        num_captions: int = 1,
        method: str = "nucleus",
        top_p: float = 0.9,
        num_beams: int = 3,
        min_length: int = 5,
        max_length: int = 30,
        repetition_penalty: float = 1.0,
        prompt: str = "a picture of ",
        seed: int | None = None,
        keys: Sequence | None = None,
    ) -> torch.Tensor:
        """Token ids (B * num_captions, max_length), rows of one image together, padded after [SEP].

        Nucleus sampling draws caption j of image b from (seed, keys[b], j) alone
        (models/streams.py), so an image gets the same captions in any batch; without `keys`, an
        image is keyed by its place in this call; without `seed`, torch's global generator draws it."""
        if method not in METHODS:
            raise CapfiltError(f"method={method!r}: use one of {METHODS}")
        if num_captions < 1:
            raise CapfiltError(f"num_captions={num_captions} must be at least 1")
        if method == "beam" and num_captions > num_beams:
            raise CapfiltError(f"beam search returns at most num_beams={num_beams} captions, not {num_captions}")
        prompt_ids = self.prompt_ids(prompt)
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
                      min_length=min_length, repetition_penalty=repetition_penalty)
        with torch.inference_mode(), self.autocast():
            image_embeds = self.encode_image(images)
            if method == "beam":
                return beam_search(self.text_decoder, self.lm_head, image_embeds, prompt_ids, num_beams, num_captions, **common)
            return sample(self.text_decoder, self.lm_head, image_embeds, prompt_ids, num_captions,
                          top_p=None if method == "greedy" else top_p, row_seeds=row_seeds, **common)

    def caption(self, images, num_captions: int = 1, prompt: str = "a picture of ", **options) -> list[list[str]]:
        """Captions for each image (nucleus sampling by default), the prompt stripped."""
        ids = self.generate_ids(images, num_captions=num_captions, prompt=prompt, **options)
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        stem = prompt.strip().lower()
        texts = [t[len(stem):].strip() if t.startswith(stem) else t.strip() for t in texts]
        return [texts[i : i + num_captions] for i in range(0, len(texts), num_captions)]
