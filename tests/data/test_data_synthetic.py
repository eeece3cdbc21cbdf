"""Synthetic long-context tasks: any length, seeded, answers recoverable from the prompt."""

import re

import pytest

from train.data.synthetic import TASKS, generate_sample, min_length, synthetic_documents


def _count(tok, text):
    return len(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("length", [501, 2048, 20000])
def test_length_and_answer(byte_tok, task, length):
    s = generate_sample(task, length, byte_tok, seed=3, index=1)
    n = _count(byte_tok, s.text)
    assert n == s.length <= length
    assert n >= length - 200  # filled to within one haystack unit
    assert s.text == s.prompt + s.answer and s.answer.strip()
    for a in s.answers:
        assert a in s.answer
        if task != "common_words":
            assert a in s.prompt  # the needle is in the context
    if task == "common_words":
        words = re.findall(r" (\w+),", s.prompt)
        counts = {w: words.count(w) for w in set(words)}
        top = sorted(counts, key=lambda w: -counts[w])[: len(s.answers)]
        assert set(top) == set(s.answers)
        assert min(counts[w] for w in s.answers) > max(
            (c for w, c in counts.items() if w not in s.answers), default=0
        )
    if task == "variable_tracking":
        value = re.search(r"hold the value (\d+)\?", s.prompt).group(1)
        chain = [value, *s.answers]
        for prev, name in zip(chain, s.answers):
            assert f"VAR {name} = {prev}." in s.prompt


def test_deterministic_and_distinct(byte_tok):
    a = generate_sample("niah_multikey", 3000, byte_tok, seed=7, index=4)
    b = generate_sample("niah_multikey", 3000, byte_tok, seed=7, index=4)
    c = generate_sample("niah_multikey", 3000, byte_tok, seed=7, index=5)
    d = generate_sample("niah_multikey", 3000, byte_tok, seed=8, index=4)
    assert a == b
    assert a.text != c.text and a.text != d.text


def test_128k_with_a_bpe_tokenizer():
    from tests_data_helpers import tiny_bpe_tokenizer

    tok = tiny_bpe_tokenizer()
    for task in ("passkey", "kv_retrieval"):
        s = generate_sample(task, 131072, tok, seed=0)
        n = _count(tok, s.text)
        assert n == s.length and 131072 - 200 <= n <= 131072


def test_too_short_is_a_clear_error(byte_tok):
    need = min_length("niah_multikey", byte_tok)
    with pytest.raises(ValueError, match="needs at least"):
        generate_sample("niah_multikey", need // 2, byte_tok)


def test_training_stream_mixes_tasks_and_lengths(byte_tok):
    samples = list(synthetic_documents(sorted(TASKS), 400, 900, byte_tok, seed=1, start=0, stop=80))
    assert {s.task for s in samples} == set(TASKS)
    assert all(s.length <= 900 for s in samples)
    assert len({s.length for s in samples}) > 20
    again = list(synthetic_documents(sorted(TASKS), 400, 900, byte_tok, seed=1, start=40, stop=80))
    assert again == samples[40:]  # each sample depends on (seed, index) only: shards agree
