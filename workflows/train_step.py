"""One optimizer step of BLIP's losses (ITC + ITM + LM, or a fine-tuning task's share), two ways
that compute the same losses and gradients:

- fast (`compute.step: fast`, the default): AdamW fused into one kernel per parameter group
  (`fused=True`, on CPU and CUDA) instead of a Python loop over ~200 tensors; losses stay on the
  device and are read back only when logged (on a GPU a read-back waits for every queued kernel);
  with `compute.compile` on, the image encoders and text transformers compiled (torch.compile:
  inductor's C++ kernels on CPU, Triton on CUDA) over texts padded to a multiple of 8 tokens, so a
  few shapes serve the whole run;
- each image's cross-attention keys and values projected once per layer and gathered for the
  passes that attend to it (ITM's three, the decoder's: `share_image_kv`, models/text.py), not
  projected four times over copies of the image tokens: the same outputs and gradients for a
  quarter of that projection's FLOPs;
- on a CPU in bf16, attention through SDPA's plain kernel (matmul, softmax, matmul) rather than
  its flash kernel: at BLIP's short sequences (65 image tokens, ~20 text tokens, head width 32) the
  CPU flash kernel's bf16 backward ran 2.5-6.6x slower than the plain one (forward + backward,
  measured with torch 2.x on an AVX512-BF16 EPYC), while in fp32 flash is the faster of the two;
- eager (`compute.step: eager`): the plain path, for debugging: PyTorch's AdamW as it comes, texts
  padded to the batch's longest, every op (attention kernel included) as PyTorch picks it.

Both run under the same autocast (models/precision.py) and the same momentum update (a foreach
lerp, models/pretrain.py).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.precision import autocast
from models.tokenizer import encode

log = logging.getLogger(__name__)

STEPS = ("fast", "eager")
COMPILE = ("auto", "on", "off")
PAD_MULTIPLE = 8  # compiled texts are padded to a multiple of this: few shapes, little padding


def use_compile(setting: str, device: torch.device, fast: bool) -> bool:
    """`compute.compile` for this device. auto: on CUDA only; on CPU a compile of the tiny model
    costs tens of seconds on 2 cores (once per process shape) and repays it in long jobs only
    (bench.train prints both)."""
    if not fast or setting == "off":
        return False
    return setting == "on" or device.type == "cuda"


def compile_encoders(model) -> None:
    """Compile the heavy, pure parts in place: the parameter names (and so the checkpoints) stay."""
    for vit in (model.visual, getattr(model, "visual_m", None)):
        if vit is not None:
            vit.forward_features = torch.compile(vit.forward_features, dynamic=False)
    for text in (model.text_encoder, getattr(model, "text_encoder_m", None), getattr(model, "text_decoder", None)):
        if text is not None:
            text.compile(dynamic=False)


def tokens(tokenizer, texts: list[str], max_length: int, compiled: bool):
    """(input_ids, padding) of `texts`: padded to the longest, or for compiled encoders to the next
    multiple of PAD_MULTIPLE (within max_length)."""
    ids, padding = encode(tokenizer, texts, max_length=max_length)
    if compiled and ids.shape[1] % PAD_MULTIPLE:
        width = min(max_length, -(-ids.shape[1] // PAD_MULTIPLE) * PAD_MULTIPLE)
        extra = width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, extra), value=tokenizer.pad_token_id)
        padding = torch.nn.functional.pad(padding, (0, extra), value=0)
    return ids, padding


def arithmetic(device: torch.device, precision: str, fast: bool) -> contextlib.ExitStack:
    """What the step computes in: `precision`'s autocast, and for the fast step on a CPU in bf16
    SDPA's plain kernel (the module docstring says why). Resolve `auto` precision first."""
    stack = contextlib.ExitStack()
    stack.enter_context(autocast(device, precision))
    if fast and precision == "bf16" and device.type == "cpu":
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def step(model, optimizer, batch: dict, autocast_ctx) -> dict[str, torch.Tensor]:
    """Forward, backward and the optimizer step under `autocast_ctx` (`arithmetic`'s, or any context);
    the losses (detached, on the device) with their sum."""
    with autocast_ctx:
        losses = model(**batch)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}


def read(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """The losses as numbers: one read-back for all of them."""
    names = list(losses)
    values = torch.stack([losses[n].float() for n in names]).tolist()
    return {n: round(v, 5) for n, v in zip(names, values)}
