"""The evaluation on a GPU through the Triton kernels (bf16): packed perplexity rows keep
documents apart, and the cached generation's first token is the full forward's argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import tiny_base

from eval.perplexity import _row, perplexity_at

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _model():
    from l2a.convert import convert_model

    base = tiny_base("qwen3", hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                     head_dim=64, max_position_embeddings=8192)
    m = convert_model(base, init="paper", window=256).to("cuda", torch.bfloat16).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in m.model.layers:  # route about half the tokens
            layer.self_attn.router.weight.normal_(0, 0.05)
    m.config.use_cache = True
    return m


def test_packed_rows_keep_documents_apart_on_gpu():
    model = _model()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, 2500), rng.integers(0, 256, 1596)
    starts = np.zeros(4096, dtype=bool)
    starts[2500] = True
    packed, routing = perplexity_at(model, [_row(np.concatenate([a, b]), starts)], 4096, 4)
    sep_a, _ = perplexity_at(model, [_row(a)], 4096, 4)
    sep_b, _ = perplexity_at(model, [_row(b)], 4096, 4)
    for p, x, y in zip(packed, sep_a, sep_b):
        assert p["tokens"] == x["tokens"] + y["tokens"]
        if p["tokens"]:
            want = ((x["loss"] or 0) * x["tokens"] + (y["loss"] or 0) * y["tokens"]) / p["tokens"]
            assert p["loss"] == pytest.approx(want, rel=2e-2)
    assert 0.05 < sum(routing["layer_sparsity"]) / 2 < 0.95


def test_generate_first_token_is_full_forward_argmax():
    from eval.generation import greedy
    from train.data import build_byte_tokenizer

    model, tok = _model(), build_byte_tokenizer()
    ids = torch.randint(0, 256, (1, 6000), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids.cuda(), use_cache=False).logits[0, -1].float()
    text, n = greedy(model, tok, ids, 4)
    out = model.generate(input_ids=ids.cuda(), attention_mask=torch.ones_like(ids).cuda(),
                         max_new_tokens=1, do_sample=False)
    assert n == 4 and int(out[0, -1]) == int(logits.argmax())


def test_teacher_forced_scores_on_the_answer_logits_match_the_full_forward():
    """bf16 on the kernels, 6000 tokens: scoring from the last answer positions' logits only
    (logits_to_keep) gives the log-likelihood and token accuracy of the full forward's."""
    from eval.teacher_forced import score_answer

    model = _model()
    ids = torch.randint(0, 256, (1, 6000), generator=torch.Generator().manual_seed(2))
    prompt, answer = ids[0, :5991].tolist(), ids[0, 5991:].tolist()
    got = score_answer(model, prompt, answer)
    with torch.no_grad():
        logits = model(ids.cuda(), use_cache=False).logits[0, 5990:-1].float()
    target = ids[0, 5991:].cuda()
    want = torch.log_softmax(logits, -1).gather(-1, target[:, None]).sum().item()
    assert got["answer_tokens"] == 9
    assert got["answer_loglik"] == pytest.approx(want, rel=1e-2, abs=1e-2)
    # bf16 matmuls of another shape may flip one near-tie argmax of the nine
    assert got["token_accuracy"] == pytest.approx(
        (logits.argmax(-1) == target).float().mean().item(), abs=1 / 9 + 1e-6)
