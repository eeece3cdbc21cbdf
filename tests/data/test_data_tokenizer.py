"""The byte tokenizer and the fast encoder agree with the tokenizer itself."""

import random

import numpy as np
from transformers import AutoTokenizer

from train.data import build_byte_tokenizer
from train.data.tokenizer import TextEncoder, is_byte_tokenizer, tokenizer_fingerprint

SAMPLES = ["", "hello", "héllo wörld 日本 🚀\n\t", "a<|endoftext|>b<|pad|>", "  spaced  "]


def _random_texts(n=50, seed=0):
    rng = random.Random(seed)
    alphabet = "abc xyz\n\té日本🚀<|>" + "".join(chr(c) for c in range(0x20, 0x7F))
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        + rng.choice(["", "<|endoftext|>"])
        for _ in range(n)
    ]


def test_byte_ids_are_utf8_bytes_and_specials(byte_tok):
    assert len(byte_tok) == 258
    assert byte_tok.eos_token == "<|endoftext|>" and byte_tok.eos_token_id == 256
    assert byte_tok.pad_token == "<|pad|>" and byte_tok.pad_token_id == 257
    for s in SAMPLES[1:3]:
        ids = byte_tok(s, add_special_tokens=False)["input_ids"]
        assert ids == list(s.encode("utf-8"))
        assert byte_tok.decode(ids) == s


def test_save_and_reload(tmp_path, byte_tok):
    build_byte_tokenizer(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert is_byte_tokenizer(again)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(byte_tok)
    for s in SAMPLES:
        assert (
            again(s, add_special_tokens=False)["input_ids"]
            == byte_tok(s, add_special_tokens=False)["input_ids"]
        )
    assert build_byte_tokenizer().backend_tokenizer.to_str() == byte_tok.backend_tokenizer.to_str()


def test_fast_path_matches_tokenizer(byte_tok):
    texts = SAMPLES + _random_texts()
    fast = TextEncoder(byte_tok)
    assert fast.byte_level
    v1, l1 = fast.encode(texts)
    expected = byte_tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    v2 = np.array([t for e in expected for t in e])
    l2 = np.array([len(e) for e in expected])
    assert np.array_equal(l1, l2) and np.array_equal(v1, v2)
    # Special-token text in a corpus stays text unless asked otherwise.
    v, _ = fast.encode(["a<|endoftext|>b"])
    assert 256 not in v.tolist()
    v, _ = TextEncoder(byte_tok, parse_special_tokens=True).encode(["a<|endoftext|>b"])
    assert v.tolist() == [97, 256, 98]


def test_bpe_tokenizer_path_matches_hf_call():
    from tests_data_helpers import tiny_bpe_tokenizer

    tok = tiny_bpe_tokenizer()
    texts = ["the old river finds a garden", "stone <|endoftext|> tower", "ünïcode text"]
    values, lengths = TextEncoder(tok).encode(texts)
    expected = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert lengths.tolist() == [len(e) for e in expected]
    assert values.tolist() == [t for e in expected for t in e]
