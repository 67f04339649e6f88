"""Caption decoding: greedy, nucleus sampling and beam search over a KV-cached MED decoder.

Self-attention keys/values are cached per layer; the image's cross-attention keys/values are
computed once per image. A sequence that emits [SEP] is dropped from the running batch at once,
so finished captions cost nothing more. Logit processing follows transformers' conventions
(repetition penalty, minimum length counted over the whole sequence, top-p keeping at least one
token) so that results can be compared with transformers' BLIP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import streams
from models.text import LMHead, TextTransformer


class CachedDecoder:
    """Runs the image-grounded decoder a few tokens at a time, with a preallocated KV cache."""

    def __init__(self, decoder: TextTransformer, lm_head: LMHead, image_embeds: torch.Tensor, rows_per_image: int, max_length: int):
        self.decoder, self.lm_head = decoder, lm_head
        rows = image_embeds.shape[0] * rows_per_image
        # (B, H, S, d) per layer, computed once per image, then shared by that image's rows
        self.cross = [
            tuple(t.repeat_interleave(rows_per_image, dim=0) for t in layer.cross_attn.project_kv(image_embeds))
            for layer in decoder.layers
        ]
        self.rows, self.max_length = rows, max_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0

    def _allocate(self, k: torch.Tensor) -> None:
        # in the projections' dtype (bf16 under autocast), so attention never converts the cache
        shape = (self.rows, k.shape[1], self.max_length, k.shape[3])
        self.keys = [k.new_empty(shape) for _ in self.decoder.layers]
        self.values = [k.new_empty(shape) for _ in self.decoder.layers]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (R, t) that follow the cached ones -> logits of the last position, (R, V)."""
        start, t = self.length, tokens.shape[1]
        end = start + t
        x = self.decoder.embeddings(tokens, offset=start)
        mask = None
        if t > 1:  # the prompt: causal among its own tokens
            mask = torch.arange(end, device=tokens.device)[None, :] <= (start + torch.arange(t, device=tokens.device))[:, None]
        for i, layer in enumerate(self.decoder.layers):
            k, v = layer.self_attn.project_kv(x)
            if not self.keys:
                self._allocate(k)
            self.keys[i][:, :, start:end] = k
            self.values[i][:, :, start:end] = v
            x = layer.self_attn.attend(x, self.keys[i][:, :, :end], self.values[i][:, :, :end], mask)
            x = layer.cross_attn.attend(x, *self.cross[i])
            x = layer.ffn(x)
        self.length = end
        return self.lm_head(x[:, -1])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep (and reorder to) these rows of the running batch: finished ones leave, beams move."""
        self.rows = len(rows)
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.cross = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross]


def repetition_penalty_(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive, multiply negative logits."""
    if penalty == 1.0:
        return logits
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter_(1, seen, score)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the smallest set of tokens whose probability reaches top_p (at least one)."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def nucleus_sample(logits: torch.Tensor, top_p: float, uniform: torch.Tensor | torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from the top-p set (top_p_filter's set), renormalised.

    `uniform`: the (rows,) draws in [0, 1) to use (models/streams.py keys them by row), or a
    torch.Generator to draw them from, or None for torch's global generator.

    One sort serves both the cut and the draw (inverse CDF on the sorted cumulative mass). A
    trained captioner's top-p set is small: when the 64 likeliest tokens of every row already
    reach top_p, sorting them alone gives the same set and draw as sorting the whole vocabulary.
    """
    probs = F.softmax(logits.float(), dim=-1)
    probs, order = probs.topk(min(64, probs.shape[-1]), dim=-1)
    if bool((probs.sum(-1) < top_p).any()):  # a flat row: its set may reach past the 64
        probs, order = torch.sort(F.softmax(logits.float(), dim=-1), dim=-1, descending=True)
    cumulative = probs.cumsum(dim=-1)
    kept = (cumulative - probs) < top_p  # tokens before the cut; the first one always stays
    kept[:, 0] = True
    mass = (probs * kept).sum(dim=-1, keepdim=True)
    if not isinstance(uniform, torch.Tensor):
        uniform = torch.rand(logits.shape[0], generator=uniform, device=logits.device)
    u = uniform.to(device=logits.device, dtype=mass.dtype).view(-1, 1) * mass
    pick = torch.searchsorted(cumulative, u, right=True).clamp_(max=kept.sum(-1, keepdim=True) - 1)
    return order.gather(1, pick).squeeze(1)


def _process(logits, sequences, length, eos, min_length, penalty):
    logits = repetition_penalty_(logits.float(), sequences[:, :length], penalty)
    if length < min_length:
        logits[:, eos] = float("-inf")
    return logits


@torch.no_grad()
def sample(
    decoder: TextTransformer,
    lm_head: LMHead,
    image_embeds: torch.Tensor,  # (B, N, Dv)
    prompt: torch.Tensor,  # (P,) starting with [DEC]
    num_return: int,
    eos: int,
    pad: int,
    max_length: int,
    min_length: int,
    top_p: float | None,  # None: greedy
    repetition_penalty: float = 1.0,
    row_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy or nucleus decoding -> (B * num_return, max_length) tokens, padded after [SEP].

    `row_seeds` (B * num_return,): each row's random stream (models/streams.py), drawn once per
    position; None draws from torch's global generator."""
    rows = image_embeds.shape[0] * num_return
    device = image_embeds.device
    out = torch.full((rows, max_length), pad, dtype=torch.long, device=device)
    out[:, : len(prompt)] = prompt
    state = CachedDecoder(decoder, lm_head, image_embeds, num_return, max_length)
    alive = torch.arange(rows, device=device)
    logits = state.step(out[:, : len(prompt)])
    for length in range(len(prompt), max_length):
        logits = _process(logits, out[alive], length, eos, min_length, repetition_penalty)
        if top_p is None:
            token = logits.argmax(-1)
        else:
            draws = None if row_seeds is None else streams.uniform(row_seeds[alive], length)
            token = nucleus_sample(logits, top_p, draws)
        out[alive, length] = token
        running = token != eos
        if length + 1 == max_length or not running.any():
            break
        if not running.all():
            keep = running.nonzero().squeeze(1)
            alive, token = alive[keep], token[keep]
            state.keep(keep)
        logits = state.step(token[:, None])
    return out


@torch.no_grad()
def beam_search(
    decoder: TextTransformer,
    lm_head: LMHead,
    image_embeds: torch.Tensor,
    prompt: torch.Tensor,
    num_beams: int,
    num_return: int,
    eos: int,
    pad: int,
    max_length: int,
    min_length: int,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Beam search -> (B * num_return, max_length): the best `num_return` finished hypotheses.

    As in transformers (early_stopping=False): an image is done once it holds num_beams finished
    hypotheses and no running beam can beat the worst of them; done images leave the batch.
    """
    batch, device = image_embeds.shape[0], image_embeds.device
    k, p = num_beams, len(prompt)
    seqs = torch.full((batch * k, max_length), pad, dtype=torch.long, device=device)
    seqs[:, :p] = prompt
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first at step one
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    images = list(range(batch))  # images still searching, in row-block order
    state = CachedDecoder(decoder, lm_head, image_embeds, k, max_length)
    logits = state.step(seqs[:, :p])

    def add(b, score, seq):
        finished[b].append((score, seq))
        finished[b].sort(key=lambda h: -h[0])
        del finished[b][k:]

    for length in range(p, max_length):
        logits = _process(logits, seqs, length, eos, min_length, repetition_penalty)
        vocab = logits.shape[-1]
        logprobs = F.log_softmax(logits, dim=-1) + scores.view(-1, 1)
        top, idx = logprobs.view(len(images), k * vocab).topk(2 * k, dim=1)
        origin, token = idx // vocab, idx % vocab
        next_rows, next_tokens, next_scores, still = [], [], [], []
        for j, b in enumerate(images):
            beams = []
            for rank in range(2 * k):
                row = j * k + int(origin[j, rank])
                if int(token[j, rank]) == eos:
                    if rank < k:
                        add(b, float(top[j, rank]) / (length**length_penalty), seqs[row, :length].clone())
                else:
                    beams.append((row, int(token[j, rank]), float(top[j, rank])))
                if len(beams) == k:
                    break
            best_running = beams[0][2] / (length**length_penalty)
            done = len(finished[b]) == k and finished[b][-1][0] >= best_running
            if done or length + 1 == max_length:
                for row, tok, score in beams:  # running beams compete with finished ones
                    seq = torch.cat([seqs[row, :length], torch.tensor([tok], device=device)])
                    add(b, score / ((length + 1) ** length_penalty), seq)
                continue
            still.append(b)
            for row, tok, score in beams:
                next_rows.append(row)
                next_tokens.append(tok)
                next_scores.append(score)
        if not still:
            break
        rows = torch.tensor(next_rows, device=device)
        state.keep(rows)
        seqs = seqs.index_select(0, rows)
        seqs[:, length] = torch.tensor(next_tokens, device=device)
        scores = torch.tensor(next_scores, device=device).view(len(still), k)
        images = still
        logits = state.step(seqs[:, length : length + 1])

    out = torch.full((batch * num_return, max_length), pad, dtype=torch.long, device=device)
    for b in range(batch):
        for r, (_, seq) in enumerate(finished[b][:num_return]):
            out[b * num_return + r, : len(seq)] = seq
    return out
