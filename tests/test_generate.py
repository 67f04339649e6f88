"""Caption decoding: the KV cache against full recomputation, sampling rules, stopping, seeds."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.captioner import Captioner
from models.errors import CapfiltError
from models.filter import Filter
from models.generate import CachedDecoder, nucleus_sample, top_p_filter
from models.pretrain import BlipPretrain


@pytest.fixture(scope="module")
def checkpoint(tiny_cfg, tiny_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    BlipPretrain(tiny_cfg).save_pretrained(folder, tokenizer=tiny_tokenizer)
    return folder


@pytest.fixture(scope="module")
def captioner(checkpoint):
    return Captioner.from_pretrained(checkpoint, device="cpu", precision="fp32")  # numerics under test, not precision


def _images(n=3, size=64, seed=0):
    return (np.random.RandomState(seed).rand(n, size, size, 3) * 255).astype(np.uint8)


def _greedy_without_cache(cap, images, prompt, max_length, min_length):
    """Reference: rerun the whole decoder on the whole sequence for every new token."""
    seqs = cap.prompt_ids(prompt)[None].repeat(len(images), 1)
    with torch.no_grad():
        image_embeds = cap.encode_image(images)
        done = torch.zeros(len(images), dtype=torch.bool)
        while seqs.shape[1] < max_length and not done.all():
            hidden = cap.text_decoder(seqs, torch.ones_like(seqs), image_embeds, causal=True)
            logits = cap.lm_head(hidden[:, -1])
            if seqs.shape[1] < min_length:
                logits[:, cap.cfg.sep_token_id] = float("-inf")
            token = logits.argmax(-1).masked_fill(done, cap.cfg.pad_token_id)
            done |= token == cap.cfg.sep_token_id
            seqs = torch.cat([seqs, token[:, None]], dim=1)
    return seqs


def test_cached_greedy_decoding_equals_full_recomputation(captioner):
    images = _images()
    with torch.no_grad():  # make [SEP] likely so that rows stop at different steps
        captioner.lm_head.bias[captioner.cfg.sep_token_id] += 3.0
    try:
        ours = captioner.generate_ids(images, method="greedy", max_length=14, min_length=6)
        reference = _greedy_without_cache(captioner, images, "a picture of ", 14, 6)
    finally:
        with torch.no_grad():
            captioner.lm_head.bias[captioner.cfg.sep_token_id] -= 3.0
    assert torch.equal(ours[:, : reference.shape[1]], reference)
    assert (ours[:, reference.shape[1] :] == captioner.cfg.pad_token_id).all()


def test_finished_sequences_leave_the_batch(captioner, monkeypatch):
    rows_per_step = []
    original = CachedDecoder.step

    def counting(self, tokens):
        rows_per_step.append(tokens.shape[0])
        return original(self, tokens)

    monkeypatch.setattr(CachedDecoder, "step", counting)
    with torch.no_grad():
        captioner.lm_head.bias[captioner.cfg.sep_token_id] += 4.0
    try:
        ids = captioner.generate_ids(_images(6), method="nucleus", top_p=0.9, seed=3, max_length=20, min_length=5)
    finally:
        with torch.no_grad():
            captioner.lm_head.bias[captioner.cfg.sep_token_id] -= 4.0
    sep = captioner.cfg.sep_token_id
    ended = [int((row == sep).nonzero()[0]) if (row == sep).any() else 20 for row in ids]
    prompt = len(captioner.prompt_ids("a picture of "))
    # the step that feeds the token at position t runs only rows whose [SEP] (if any) comes later
    expected = [len(ids)] + [sum(e > t for e in ended) for t in range(prompt, prompt + len(rows_per_step) - 1)]
    assert rows_per_step == expected
    assert len(set(ended)) > 1 and min(ended) >= 5


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits.clone(), 0.9))
    assert kept.tolist() == [[True, True, True, False]]  # 0.5 + 0.3 < 0.9 <= 0.5 + 0.3 + 0.15
    assert torch.isfinite(top_p_filter(logits.clone(), 0.0)).tolist() == [[True, False, False, False]]


def test_nucleus_sampling_draws_from_the_top_p_set_in_proportion():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.07, 0.03])
    logits = probs.log().repeat(20000, 1)
    draws = nucleus_sample(logits, 0.8, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=5).float() / len(draws)
    assert counts[3:].sum() == 0  # 0.4 + 0.3 + 0.2 reaches 0.8; the tail is never drawn
    expected = probs[:3] / probs[:3].sum()
    assert (counts[:3] - expected).abs().max() < 4 * (0.25 / 20000) ** 0.5
    # the set is transformers' top-p set (top_p_filter follows its TopPLogitsWarper)
    torch.manual_seed(0)
    for top_p, vocab, scale in ((0.3, 40, 3), (0.9, 40, 3), (0.99, 40, 3), (0.9, 500, 1), (0.9, 500, 8)):
        logits = torch.randn(64, vocab) * scale  # 500 x 1 is flat: the set reaches past 64 tokens
        allowed = torch.isfinite(top_p_filter(logits.clone(), top_p))
        for _ in range(20):
            token = nucleus_sample(logits, top_p)
            assert allowed.gather(1, token[:, None]).all()


def test_same_seed_same_captions(captioner):
    images = _images()
    first = captioner.caption(images, num_captions=2, seed=7, max_length=12)
    assert first == captioner.caption(images, num_captions=2, seed=7, max_length=12)
    assert first != captioner.caption(images, num_captions=2, seed=8, max_length=12)
    assert len(first) == 3 and all(len(c) == 2 for c in first)


def test_prompt_is_stripped_and_inputs_may_be_pil_or_uint8(captioner):
    images = _images(2)
    with_prompt = captioner.caption(images, method="greedy", max_length=12, prompt="a picture of ")
    raw = captioner.tokenizer.batch_decode(
        captioner.generate_ids(images, method="greedy", max_length=12).tolist(), skip_special_tokens=True
    )
    assert all(r.startswith("a picture of") for r in raw)
    assert [c[0] for c in with_prompt] == [r[len("a picture of") :].strip() for r in raw]
    as_pil = captioner.caption([Image.fromarray(a) for a in images], method="greedy", max_length=12)
    assert as_pil == with_prompt


def test_beam_search(captioner):
    images = _images(2)
    greedy = captioner.generate_ids(images, method="greedy", max_length=10, min_length=3)
    one_beam = captioner.generate_ids(images, method="beam", num_beams=1, max_length=10, min_length=3)
    sep, pad = captioner.cfg.sep_token_id, captioner.cfg.pad_token_id
    strip = lambda row: [t for t in row.tolist() if t not in (sep, pad)]  # noqa: E731
    assert [strip(r) for r in one_beam] == [strip(r) for r in greedy]
    beams = captioner.generate_ids(images, method="beam", num_beams=3, num_captions=3, max_length=10, min_length=3)
    # the hypotheses of each image come best first by length-normalised log-probability,
    # recomputed here by teacher forcing
    pixels = captioner.pixels(images).repeat_interleave(3, 0)
    tokens = [strip(r) for r in beams]
    width = max(map(len, tokens)) + 1
    ids = torch.tensor([t + [sep] + [pad] * (width - len(t) - 1) for t in tokens])
    with torch.no_grad():
        logp = F.log_softmax(captioner.logits(pixels, ids, torch.ones_like(ids)), -1)
    prompt = len(captioner.prompt_ids("a picture of "))
    scores = []
    for i, t in enumerate(tokens):
        picked = [logp[i, j - 1, t[j]] for j in range(prompt, len(t))]
        if len(t) < 10:  # ended by [SEP]: its probability counts, the length excludes it
            picked.append(logp[i, len(t) - 1, sep])
        scores.append(float(sum(picked)) / len(t))
    for b in range(2):
        assert scores[3 * b] >= scores[3 * b + 1] - 1e-4 >= scores[3 * b + 2] - 2e-4


def test_bad_options_are_clear(captioner):
    with pytest.raises(CapfiltError, match="method"):
        captioner.caption(_images(1), method="topk")
    with pytest.raises(CapfiltError, match="at most num_beams"):
        captioner.caption(_images(1), method="beam", num_beams=2, num_captions=3)


def test_filter_encodes_each_image_once_for_many_texts(checkpoint, monkeypatch):
    filt = Filter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    images = _images(2)
    texts = ["a red ball", "a blue box", "img 2031 jpg", "two purple squares"]
    pairwise = np.concatenate([filt.itm(images[[i]], [t]) for i, t in zip([0, 0, 1, 1], texts)])
    calls = []
    original = filt.visual.forward_features
    monkeypatch.setattr(filt.visual, "forward_features", lambda x: calls.append(len(x)) or original(x))
    grouped = filt.itm(images, texts, image_index=[0, 0, 1, 1])
    assert calls == [2]
    np.testing.assert_allclose(grouped, pairwise, atol=1e-5)
    assert ((grouped > 0) & (grouped < 1)).all()


def test_streams_hash_is_splitmix64_and_keyed_by_row_alone():
    from models import streams

    mask = (1 << 64) - 1

    def reference(x):  # splitmix64's finaliser in plain Python integers
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    words = [0, 1, 2**63, mask, 0x0123456789ABCDEF, 2**62 + 12345]
    got = streams.mix(torch.tensor([streams._signed(w) for w in words])).tolist()
    assert [g & mask for g in got] == [reference(w) for w in words]  # int64 wraps as uint64 would
    seeds = streams.row_seeds(7, ["a", "b", "c"], 2)
    assert torch.equal(streams.row_seeds(7, ["c", "x", "b"], 2)[4:], seeds[2:4])  # a key's streams, wherever it sits
    assert len(set(seeds.tolist())) == 6 and not torch.equal(streams.row_seeds(8, ["a"], 1), seeds[:1])
    u = streams.uniform(streams.row_seeds(0, range(20000), 1), step=3)
    assert u.dtype == torch.float32 and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and not torch.equal(u, streams.uniform(streams.row_seeds(0, range(20000), 1), 4))


def test_a_rows_captions_do_not_depend_on_its_batch(captioner):
    """Keyed draws: an image captioned alone, or beside others in any order, gets the same captions."""
    images = _images(5, seed=4)
    keys = [f"k{i}" for i in range(5)]
    together = captioner.caption(images, num_captions=2, seed=11, keys=keys, max_length=12)
    order = [3, 0, 4]
    part = captioner.caption(images[order], num_captions=2, seed=11, keys=[keys[i] for i in order], max_length=12)
    assert part == [together[i] for i in order]
    alone = captioner.caption(images[[2]], num_captions=2, seed=11, keys=["k2"], max_length=12)
    assert alone == [together[2]]
    assert together != captioner.caption(images, num_captions=2, seed=12, keys=keys, max_length=12)


def test_itm_scores_do_not_depend_on_the_other_texts_of_a_call(checkpoint):
    """Texts of six lengths scored in calls of 1, 2, 3, 5, 17 or all of them: the same bits (each text
    is padded to a length of its own, not to its batch's longest, each length scored in chunks of one
    shape, more than one chunk here, and the head runs per row)."""
    filt = Filter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    images = _images(7, seed=2)
    texts = ["a red ball", "click here", "two purple squares on a white background", "img 2031 jpg", "x y",
             "a large green triangle above a yellow star and a small black circle"] * 6
    index = [i % 7 for i in range(len(texts))]
    full = filt.itm(images, texts, image_index=index)
    for size in (1, 2, 3, 5, 17):
        parts = [filt.itm(images, texts[i:i + size], image_index=index[i:i + size]) for i in range(0, len(texts), size)]
        assert np.concatenate(parts).tobytes() == full.tobytes(), size
    assert filt.itm(images, [], image_index=[]).shape == (0,)
