"""The filter: ViT + text encoder with ITC projections and the ITM head, scoring image-text pairs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import MEDConfig
from models.errors import CapfiltError
from models.inference import InferenceModel
from models.text import TextTransformer
from models.tokenizer import encode
from models.vision import build_vision_encoder

PAD_MULTIPLE = 8  # texts are scored in groups padded to a multiple of this: few groups, little padding
# ...and each group in chunks of exactly this many texts (the last chunk filled with copies of its last
# text): MKL picks other GEMM kernels (other summation orders) for a matrix of 8 rows than for one of
# 96 with the same width, so a chunk of a fixed shape is what keeps a score's bits independent of the
# texts beside it; within one shape a row's sums do not depend on its place (checked on MKL 2024.2)
ITM_CHUNK = 16


class Filter(InferenceModel):
    role = "filter"

    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__(cfg, image_size)
        self.visual = build_vision_encoder(self.cfg)
        self.text_encoder = TextTransformer(self.cfg)
        self.vision_proj = nn.Linear(self.cfg.vision_width, self.cfg.embed_dim)
        self.text_proj = nn.Linear(self.cfg.text_width, self.cfg.embed_dim)
        self.itm_head = nn.Linear(self.cfg.text_width, 2)

    def _tokens(self, texts: list[str], max_length: int):
        ids, padding = encode(self.tokenizer, texts, max_length)
        return ids.to(self.device), padding.to(self.device)

    @staticmethod
    def _index(image_index, n_texts: int, n_images: int, device) -> torch.Tensor:
        if image_index is None:
            if n_texts != n_images:
                raise CapfiltError(f"{n_texts} texts for {n_images} images: pass image_index to pair them")
            return torch.arange(n_texts, device=device)
        return torch.as_tensor(image_index, device=device)

    def itm_logits(self, image_embeds, ids, padding, image_index) -> torch.Tensor:
        """(T, 2) ITM logits; [ENC] replaces the first token as in BLIP's training."""
        ids = ids.clone()
        ids[:, 0] = self.cfg.enc_token_id
        hidden = self.text_encoder(ids, padding, image_embeds[image_index])
        # the head as one dot product per row, in fp32, not a GEMM: BLAS picks other kernels (other
        # summation orders) for a few rows than for many, and a published score must not change in
        # its last bits with how many texts shared its batch
        cls = hidden[:, 0].float()
        return (cls[:, None, :] * self.itm_head.weight.float()).sum(-1) + self.itm_head.bias.float()

    def _length_groups(self, texts: list[str], max_length: int):
        """(rows, filled, ids, padding) per chunk of ITM_CHUNK texts padded to one length, a length
        that depends on the text alone (its own, rounded up to PAD_MULTIPLE): padding to the longest
        text of the batch would change a text's sums, in the last bits, with what else is in its
        batch. `filled` is `rows` with its last text repeated up to ITM_CHUNK; only `rows` are kept."""
        if not texts:
            return
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        widths = [min(max_length, -(-n // PAD_MULTIPLE) * PAD_MULTIPLE) for n in lengths]
        for width in sorted(set(widths)):
            group = [i for i, w in enumerate(widths) if w == width]
            for start in range(0, len(group), ITM_CHUNK):
                rows = group[start:start + ITM_CHUNK]
                filled = rows + rows[-1:] * (ITM_CHUNK - len(rows))
                batch = self.tokenizer([texts[i] for i in filled], padding="max_length", truncation=True,
                                       max_length=width, return_tensors="pt")
                yield rows, filled, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def itm(self, images, texts: list[str], image_index=None, max_length: int = 35) -> np.ndarray:
        """softmax(ITM)[match] for each text; text t belongs to image image_index[t] (default t).

        Each image is encoded once however many texts it has. A text's score does not depend on
        the other texts of the call (see _length_groups), where the kernels are batch-invariant.
        """
        with torch.inference_mode(), self.autocast():
            image_embeds = self.encode_image(images)
            index = self._index(image_index, len(texts), image_embeds.shape[0], self.device)
            logits = torch.empty(len(texts), 2, device=self.device)
            for rows, filled, ids, padding in self._length_groups(texts, max_length):
                chunk = self.itm_logits(image_embeds, ids, padding, index[torch.tensor(filled, device=self.device)])
                logits[torch.tensor(rows, device=self.device)] = chunk[:len(rows)]
        return F.softmax(logits, dim=-1)[:, 1].cpu().numpy()

    def features(self, images=None, texts: list[str] | None = None, max_length: int = 35):
        """Normalised ITC features: (N, E) for images, (T, E) for texts."""
        out = []
        with torch.inference_mode(), self.autocast():
            if images is not None:
                cls = self.encode_image(images)[:, 0]
                out.append(F.normalize(self.vision_proj(cls).float(), dim=-1))
            if texts is not None:
                hidden = self.text_encoder(*self._tokens(texts, max_length))
                out.append(F.normalize(self.text_proj(hidden[:, 0]).float(), dim=-1))
        return out

    def itc(self, images, texts: list[str], image_index=None, max_length: int = 35) -> np.ndarray:
        """Cosine similarity of the projected ITC features for each (image, text) pair."""
        image_feat, text_feat = self.features(images, texts, max_length)
        index = self._index(image_index, len(texts), image_feat.shape[0], image_feat.device)
        return (image_feat[index] * text_feat).sum(-1).cpu().numpy()
