"""BLIP's tokenizer: bert-base-uncased WordPiece plus [DEC] (bos) and [ENC], via transformers.

The two extra tokens take the ids right after the base vocabulary (30522 and 30523 for
bert-base-uncased). A small WordPiece vocabulary can be built from captions for the tiny
preset. Every checkpoint folder carries its tokenizer's files.
"""
from __future__ import annotations

import posixpath
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable

import fsspec
import torch
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizerFast

from models.errors import CapfiltError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt")  # a folder holds a tokenizer when it has one of them
TOKENIZER_FILES = (*VOCABULARY_FILES, "tokenizer_config.json", "special_tokens_map.json")


def _add_blip_tokens(tokenizer: BertTokenizerFast) -> BertTokenizerFast:
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def blip_tokenizer(vocab_file: str | Path) -> BertTokenizerFast:
    """BLIP's tokenizer from a bert-base-uncased `vocab.txt` (30,524 tokens with [DEC] and [ENC])."""
    if not Path(vocab_file).is_file():
        raise CapfiltError(f"vocabulary file {vocab_file} does not exist")
    return _add_blip_tokens(BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True))


def wordpiece_vocabulary(texts: Iterable[str], vocab_size: int = 1000) -> list[str]:
    """A WordPiece vocabulary of `texts`, the same list for the same texts in every process: the
    special tokens, every character seen (alone and as a `##` continuation, so any word of these
    characters has a tokenization), then whole words by falling count (ties by the word) up to
    `vocab_size`. BERT's own normaliser and pre-tokeniser (lowercase, accents stripped,
    punctuation split) cut the words. Chosen over `tokenizers`' trainer, whose merges break ties
    in hash order: two processes learnt different vocabularies from the same captions, so one
    seed gave two models."""
    normalise, split = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in split.pre_tokenize_str(normalise.normalize_str(text)))
    alphabet = sorted({c for word in counts for c in word})
    vocab = SPECIAL + [p for c in alphabet for p in (c, "##" + c)]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> BertTokenizerFast:
    """A small uncased WordPiece tokenizer of `texts` (`wordpiece_vocabulary`), with BLIP's extra tokens."""
    with tempfile.TemporaryDirectory(prefix="capfilt-vocab-") as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(f"{token}\n" for token in wordpiece_vocabulary(texts, vocab_size)), encoding="utf-8")
        return blip_tokenizer(path)


def load_tokenizer(folder: str | Path) -> BertTokenizerFast:
    """The tokenizer saved in a checkpoint folder (never fetched from a hub)."""
    # transformers builds an empty tokenizer from a folder without files: check first.
    if not any((Path(folder) / name).is_file() for name in VOCABULARY_FILES):
        raise CapfiltError(f"{folder} holds no tokenizer files ({' or '.join(VOCABULARY_FILES)})")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    if "[DEC]" not in tokenizer.get_vocab() or "[ENC]" not in tokenizer.get_vocab():
        _add_blip_tokens(tokenizer)
    return tokenizer


def tokenizer_at(path: str) -> BertTokenizerFast:
    """The tokenizer of a checkpoint folder on any fsspec path, fetching its few files, not the weights."""
    fs, root = fsspec.core.url_to_fs(str(path))
    if "file" in fs.protocol:
        return load_tokenizer(root)
    with tempfile.TemporaryDirectory(prefix="capfilt-tok-") as tmp:
        for name in TOKENIZER_FILES:
            if fs.exists(posixpath.join(root, name)):
                fs.get(posixpath.join(root, name), str(Path(tmp) / name))
        return load_tokenizer(tmp)


def as_tokenizer(spec) -> BertTokenizerFast:
    """A tokenizer given as itself, as the folder it was saved in, or as a bert `vocab.txt`."""
    if hasattr(spec, "convert_tokens_to_ids"):  # a tokenizer object
        return spec
    spec = Path(spec)
    return blip_tokenizer(spec) if spec.is_file() else load_tokenizer(spec)


def prompt_tokens(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids as the captioner's decoder starts from them: its first id ([CLS]) is the
    one the captioner replaces by [DEC]; the tokenizer's closing [SEP] is dropped so the caption
    goes on (as BLIP does)."""
    return tokenizer(prompt)["input_ids"][:-1]


def encode(tokenizer: BertTokenizerFast, texts: list[str], max_length: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, padding) with [CLS] first and [SEP] last, padded to the longest."""
    batch = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]
