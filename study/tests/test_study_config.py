"""The study presets compose into what study/RESULTS.md promises: one token budget for every
arm and length, lambda scaled with the length, the arms' differences and nothing else;
`train.trainable` is validated."""

from __future__ import annotations

import itertools

import pytest

from study.steps import ARMS, LENGTHS
from train.config import ConfigError, from_hydra
from train.data.prepare import compose


def _cfg(*overrides):
    return from_hydra(compose("config", list(overrides)))


def test_every_arm_and_length_trains_on_the_same_tokens():
    budgets, seen = set(), {}
    for arm, length in itertools.product(ARMS, LENGTHS):
        c = _cfg(f"experiment={ARMS[arm]}", f"study_length={length}")
        assert c.data.seq_len == LENGTHS[length]
        budgets.add(c.train.max_steps * c.train.global_batch_size * c.data.seq_len)
        # The mixture holds what the run reads, plus 5%.
        assert c.data.num_tokens == int(c.train.max_steps * c.train.global_batch_size
                                        * c.data.seq_len * 1.05)
        assert c.data.synthetic.max_tokens == c.data.seq_len
        assert c.model.base.endswith("study/base") and c.model.rope_theta == 5e5
        assert c.train.trainable == "l2a" and c.optim.lr == 2e-4
        # The paper's per-token pressure: lambda = 1e-8 at 131072 tokens, times 131072 / T.
        assert c.l2a.sparsity.lambda_final == pytest.approx(1e-8 * 131072 / c.data.seq_len)
        seen[arm, length] = c
    assert budgets == {150 * 131072}
    for length in LENGTHS:
        assert not seen["dense", length].l2a.enabled
        assert seen["l2a", length].l2a.enabled and seen["l2a", length].l2a.sparsity_target is None
        assert seen["l2a_s08", length].l2a.sparsity_target == 0.8
        assert seen["l2a_s09", length].l2a.sparsity_target == 0.9
        assert {seen[a, length].l2a.window for a in ARMS} == {255}


def test_pretraining_preset():
    c = _cfg("experiment=study_base")
    assert c.train.trainable == "all" and not c.l2a.enabled
    assert c.data.seq_len == 2048 and c.model.random_base["num_hidden_layers"] == 8
    assert c.train.max_steps * c.train.global_batch_size * c.data.seq_len == 196_608_000
    assert c.data.num_tokens == int(196_608_000 * 1.05)


def test_trainable_is_validated():
    with pytest.raises(ConfigError, match=r"^train\.trainable: must be one of l2a, all, got 'mlp'"):
        _cfg("experiment=tiny", "train.trainable=mlp")
