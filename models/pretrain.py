"""BLIP pre-training: MED plus ITC projections, the ITM head, momentum encoders and feature queues.

`forward` returns the three losses separately; the trainer sums them with equal weights.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.config import MEDConfig
from models.errors import CapfiltError
from models.losses import itc_loss, lm_loss, same_image, sample_hard_negatives
from models.med import MED
from models.text import TextTransformer
from models.vision import build_vision_encoder


class BlipPretrain(MED):
    def __init__(self, cfg: MEDConfig, image_size: int | None = None):
        super().__init__(cfg, image_size)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.text_width, 2)
        self.temp = nn.Parameter(torch.tensor(cfg.temp))

        # Momentum encoders: the ITC side only, so the momentum text encoder has no cross-attention.
        self.visual_m = build_vision_encoder(self.cfg)
        self.text_encoder_m = TextTransformer(cfg, cross_attention=False)
        self.vision_proj_m = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj_m = nn.Linear(cfg.text_width, cfg.embed_dim)
        self._momentum_pairs = [
            (self.visual, self.visual_m),
            (self.text_encoder, self.text_encoder_m),
            (self.vision_proj, self.vision_proj_m),
            (self.text_proj, self.text_proj_m),
        ]
        self.copy_params()

        q = cfg.queue_size
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("idx_queue", torch.full((q,), -100, dtype=torch.long))  # -100: no image
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._ptr: int | None = None  # queue_ptr as a Python int, read from the buffer once
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_ptr", None))

    # -- momentum encoders ------------------------------------------------------------------

    def _momentum_params(self):
        online, momentum = [], []
        for model, model_m in self._momentum_pairs:
            target = dict(model_m.named_parameters())
            for name, p in model.named_parameters():
                if name in target:  # the online text encoder's cross-attention has no twin
                    online.append(p)
                    momentum.append(target[name])
        return online, momentum

    @torch.no_grad()
    def copy_params(self) -> None:
        for p, p_m in zip(*self._momentum_params()):
            p_m.copy_(p)
            p_m.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """p_m <- m * p_m + (1 - m) * p for every momentum parameter."""
        online, momentum = self._momentum_params()
        torch._foreach_lerp_(momentum, [p.detach() for p in online], 1.0 - self.cfg.momentum)

    # -- feature queues ---------------------------------------------------------------------

    def check_batch(self, global_batch: int) -> None:
        q = self.cfg.queue_size
        if q and q % global_batch:
            raise CapfiltError(
                f"queue_size={q} is not divisible by the global batch {global_batch} "
                f"(batch per worker x workers): pick a queue size that is a multiple of it"
            )

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, ids: torch.Tensor | None) -> None:
        """Write the newest momentum features (from every worker) over the oldest ones."""
        if not self.cfg.queue_size:
            return
        if ids is None:
            ids = torch.full((image_feat.shape[0],), -100, dtype=torch.long, device=image_feat.device)
        image_feat, text_feat, ids = (_gather(t) for t in (image_feat, text_feat, ids))
        n = image_feat.shape[0]
        self.check_batch(n)
        if self._ptr is None:  # once after building or loading: a GPU read-back waits for queued kernels
            self._ptr = int(self.queue_ptr)
        ptr = self._ptr
        self.image_queue[:, ptr : ptr + n] = image_feat.T
        self.text_queue[:, ptr : ptr + n] = text_feat.T
        self.idx_queue[ptr : ptr + n] = ids
        self._ptr = (ptr + n) % self.cfg.queue_size
        self.queue_ptr.fill_(self._ptr)  # the buffer (what checkpoints keep) follows, without a sync

    # -- the three losses -------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,  # (B, 3, S, S)
        input_ids: torch.Tensor,  # (B, T), first token [CLS]
        padding: torch.Tensor,  # (B, T)
        alpha: float = 0.0,
        image_ids: torch.Tensor | None = None,  # (B,) when several captions share an image
        prompt_length: int = 0,
        tasks: tuple[str, ...] = ("itc", "itm", "lm"),  # fine-tuning: ("lm",) captioner, ("itc", "itm") filter
        share_image_kv: bool = False,  # project each image's cross-attention keys/values once (the fast step)
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_embeds = self.encode_image(images)  # (B, 1+N, Dv)
        kv = self.text_encoder.image_kv(image_embeds) if share_image_kv and "itm" in tasks else None
        out = {}
        if "itc" in tasks or "itm" in tasks:
            out.update(self._itc_itm(images, image_embeds, input_ids, padding, alpha, image_ids, kv))
        if "lm" in tasks:
            shared = kv if kv is not None and self.decoder_shares_cross_attention() else None
            logits = self.decode(input_ids, padding, None if shared else image_embeds, image_kv=shared)
            out["loss_lm"] = lm_loss(logits, input_ids, padding, prompt_length, self.cfg.label_smoothing)
        return {k: out[k] for k in ("loss_itc", "loss_itm", "loss_lm") if k[5:] in tasks}

    def _itc_itm(self, images, image_embeds, input_ids, padding, alpha, image_ids, kv=None) -> dict[str, torch.Tensor]:
        batch = images.shape[0]
        # ITC
        # similarities in fp32 even under bf16 autocast: /temp magnifies rounding 14-fold or more
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]).float(), dim=-1)  # (B, E)
        text_embeds = self.encode_text(input_ids, padding)  # (B, T, Dt)
        text_feat = F.normalize(self.text_proj(text_embeds[:, 0]).float(), dim=-1)

        with torch.no_grad():
            self.momentum_update()
            image_feat_m = F.normalize(self.vision_proj_m(self.visual_m.forward_features(images)[:, 0]).float(), dim=-1)
            text_feat_m = F.normalize(self.text_proj_m(self.text_encoder_m(input_ids, padding)[:, 0]).float(), dim=-1)
            image_feat_all = torch.cat([image_feat_m.T, self.image_queue.clone()], dim=1)  # (E, B+Q)
            text_feat_all = torch.cat([text_feat_m.T, self.text_queue.clone()], dim=1)
            if image_ids is None:
                positives = torch.eye(batch, batch + self.cfg.queue_size, dtype=torch.bool, device=images.device)
            else:
                positives = same_image(image_ids, torch.cat([image_ids, self.idx_queue]))
            sim_i2t_m = image_feat_m @ text_feat_all / self.temp
            sim_t2i_m = text_feat_m @ image_feat_all / self.temp

        sim_i2t = image_feat @ text_feat_all / self.temp
        sim_t2i = text_feat @ image_feat_all / self.temp
        loss_itc = itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, positives, alpha)
        self.enqueue(image_feat_m, text_feat_m, image_ids)

        # ITM: the positives, then a hard negative image for each text and text for each image
        neg_image, neg_text = sample_hard_negatives(sim_i2t[:, :batch], sim_t2i[:, :batch], image_ids)
        itm_ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
        itm_padding = torch.cat([padding, padding, padding[neg_text]])
        if kv is None:
            itm_images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
            itm_out = self.encode_grounded(itm_ids, itm_padding, itm_images)[:, 0]
        else:  # the same rows of the keys/values projected once per image
            def rows(t):  # index_select: its backward is index_add, not index_put's slower scatter
                return torch.cat([t, t.index_select(0, neg_image), t])

            itm_out = self.encode_grounded(itm_ids, itm_padding, None, image_kv=[(rows(k), rows(v)) for k, v in kv])[:, 0]
        itm_logits = self.itm_head(itm_out)  # (3B, 2)
        itm_labels = torch.zeros(3 * batch, dtype=torch.long, device=images.device)  # made there: no host copy
        itm_labels[:batch] = 1
        loss_itm = F.cross_entropy(itm_logits.float(), itm_labels)
        return {"loss_itc": loss_itc, "loss_itm": loss_itm}


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor across data-parallel workers (no gradient): the queues see every worker."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)
