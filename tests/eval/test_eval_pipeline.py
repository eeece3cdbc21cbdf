"""The suite can tell a model that retrieves from one that does not: an oracle that reads
the needles scores 1, the same oracle reading the wrong needle and a random model score 0."""

from __future__ import annotations

from eval_helpers import Oracle, tiny_l2a

from eval.config import EvalConfig, PerplexityConfig
from eval.runner import evaluate

TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking"]


def _cfg(**kw):
    base = dict(tasks=TASKS, lengths=[1024], depths=[0.0, 1.0], samples=2, max_new_tokens=64,
                perplexity=PerplexityConfig(data=None), plots=False)
    base.update(kw)
    return EvalConfig(**base).check()


def test_oracle_scores_one_wrong_oracle_zero(tok):
    good = evaluate(Oracle(tok), tok, _cfg(), log=lambda s: None)
    bad = evaluate(Oracle(tok, wrong=True), tok, _cfg(), log=lambda s: None)
    n = len(good["samples"])
    assert n == 4 * 2 * 2 + 2  # NIAH: 4 tasks x 2 depths x 2 samples; vt: 2 samples
    assert all(r["score"] == 1.0 for r in good["samples"]), [r for r in good["samples"] if r["score"] < 1]
    assert all(r["score"] == 0.0 for r in bad["samples"])
    cells = {(c["task"], c["length"], c["depth"]): c for c in good["tasks"]}
    assert cells[("niah_single", 1024, 0.0)]["samples"] == 2
    assert cells[("niah_single", 1024, "all")]["samples"] == 4
    assert cells[("variable_tracking", 1024, None)]["score"] == 1.0


def test_common_words_oracle_reads_the_list_not_the_example(tok):
    """A model that counts the asked list scores 1; one that copies the worked example's
    answer (also in the prompt) scores 0."""
    cfg = _cfg(tasks=["common_words"], lengths=[2048], depths=[0.5], samples=2, max_new_tokens=120)
    good = evaluate(Oracle(tok), tok, cfg, log=lambda s: None)
    bad = evaluate(Oracle(tok, wrong=True), tok, cfg, log=lambda s: None)
    assert [r["score"] for r in good["samples"]] == [1.0, 1.0]
    assert [r["score"] for r in bad["samples"]] == [0.0, 0.0]
    assert all(len(r["prediction"].split()) == 20 for r in bad["samples"])  # it did answer


def test_random_model_scores_zero_and_reports_routing(tok):
    model = tiny_l2a()
    res = evaluate(model, tok, _cfg(tasks=["niah_single"], lengths=[512], depths=[0.5], samples=1,
                                    max_new_tokens=8), log=lambda s: None)
    (rec,) = res["samples"]
    assert rec["score"] == 0.0 and rec["generated_tokens"] > 0
    assert rec["prompt_tokens"] <= 512 - 8
    # Paper init: the router sends every token to the global branch.
    assert rec["layer_sparsity"] == [0.0, 0.0]
    assert res["routing"]["tasks"][0]["layer_sparsity"] == [0.0, 0.0]


def test_dead_layers_are_named_by_decoder_layer(tok):
    """After pruning layer 0's global branch, routes hold layer 1 only; a layer 1 that
    routes nothing is reported as decoder layer 1."""
    from l2a.prune import prune_global_branches

    model = tiny_l2a()
    prune_global_branches(model, [1])
    model.model.layers[1].self_attn.logit_threshold = float("inf")  # routes no token
    res = evaluate(model, tok, _cfg(tasks=[], lengths=[256], perplexity=PerplexityConfig(
        data="generated", rows=1, buckets=2)), log=lambda s: None)
    assert res["routing"]["layers"] == [1]
    assert res["routing"]["heldout"][0]["layer_sparsity"] == [1.0]
    assert res["routing"]["dead_layers"] == [1]
