"""BLIP's three pre-training objectives as plain functions of features and logits."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.errors import CapfiltError


def alpha_ramp(step: int, steps_per_epoch: int, alpha: float, ramp_epochs: float = 2.0) -> float:
    """Momentum-distillation weight: 0 at the start, linear to `alpha` over the first epochs."""
    return alpha * min(1.0, step / max(1.0, ramp_epochs * steps_per_epoch))


def same_image(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """(R, C) bool: which columns hold the same image as each row.

    During fine-tuning captions come with image ids, so every column of the same image is a
    positive (and never a negative); without ids only a pair's own column is.
    """
    return row_ids[:, None] == col_ids[None, :]


def itc_loss(
    sim_i2t: torch.Tensor,  # (B, B + Q) online image features · [momentum text feats | text queue] / temp
    sim_t2i: torch.Tensor,  # (B, B + Q)
    sim_i2t_m: torch.Tensor,  # the same from momentum image features (no grad)
    sim_t2i_m: torch.Tensor,
    positives: torch.Tensor,  # (B, B + Q) bool
    alpha: float,
) -> torch.Tensor:
    """Contrastive loss against soft targets α·softmax(momentum sims) + (1-α)·ground truth."""
    truth = positives.float()
    truth = truth / truth.sum(1, keepdim=True)
    with torch.no_grad():
        target_i2t = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * truth
        target_t2i = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * truth
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * target_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * target_t2i).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


NO_NEGATIVE = ("ITM needs a negative for every pair, but a batch holds only one distinct image: "
               "use a batch size of at least 2 with at least 2 different images")


def require_negatives(ids: torch.Tensor) -> None:
    """Raise unless the batch's image ids (on the CPU) name at least two images."""
    if ids.numel() < 2 or bool((ids == ids[0]).all()):
        raise CapfiltError(NO_NEGATIVE)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per image and per text, drawn from the softmax of in-batch similarities.

    sim_i2t, sim_t2i: (B, B) in-batch similarities. The positive (and, with ids, any pair of
    the same image) gets weight zero, so it is never drawn. Returns (negative image index for
    each text, negative text index for each image), each (B,).
    """
    batch = sim_i2t.shape[0]
    if ids is None:
        if batch < 2:
            raise CapfiltError(NO_NEGATIVE)
        same = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
    else:
        if ids.device.type == "cpu":  # on a GPU the loop checks the ids before they move (no sync here)
            require_negatives(ids)
        same = same_image(ids, ids)
    # BLIP's floor of 1e-4 keeps every other column drawable when the softmax underflows.
    weights_t2i = (F.softmax(sim_t2i.float(), dim=1) + 1e-4).masked_fill(same, 0.0)
    weights_i2t = (F.softmax(sim_i2t.float(), dim=1) + 1e-4).masked_fill(same, 0.0)
    neg_image = torch.multinomial(weights_t2i, 1).squeeze(1)
    neg_text = torch.multinomial(weights_i2t, 1).squeeze(1)
    return neg_image, neg_text


def lm_loss(
    logits: torch.Tensor,  # (B, T, V) decoder outputs
    input_ids: torch.Tensor,  # (B, T) the caption tokens (first token is replaced by [DEC])
    padding: torch.Tensor,  # (B, T)
    prompt_length: int = 0,
    label_smoothing: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy; padding and the first `prompt_length` tokens are not targets."""
    targets = input_ids.masked_fill(padding == 0, -100)
    targets[:, :prompt_length] = -100
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    loss = F.cross_entropy(
        shifted, targets[:, 1:].reshape(-1), ignore_index=-100,
        label_smoothing=label_smoothing, reduction="none",
    ).view(input_ids.shape[0], -1)
    if reduction == "none":  # per sequence: sum over its target tokens (BLIP's caption scoring)
        return loss.sum(1)
    return loss.sum() / (targets[:, 1:] != -100).sum().clamp(min=1)


def smoothed_ce_floor(vocab_size: int, label_smoothing: float) -> float:
    """The least cross-entropy label smoothing allows: the entropy of the smoothed target."""
    eps = label_smoothing
    hit = 1 - eps + eps / vocab_size
    miss = eps / vocab_size
    return -(hit * math.log(hit) + (vocab_size - 1) * miss * math.log(miss)) if miss else 0.0
