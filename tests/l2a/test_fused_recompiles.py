"""The fused elementwise regions (l2a/fused.py) compile once and stay compiled through
cached prefills (``l2a_routed_projections`` + ``l2a_fused_elementwise``, the inference
benchmark's ``routed_fused`` path): a second prefill with other routed counts per layer and
prefills of other lengths must not recompile, or the compilation lands in a timed prefill.

The warm-up prompt has exactly ``hidden_size`` tokens, as the benchmark's (4096 tokens on a
4096-wide model): with Dynamo's duck sizing the token dimension took the (static) hidden
size's value and every later length recompiled. Each layer has its own routing threshold
(a float argument of the router region), as after the benchmark's calibration.

Training steps (forward, backward, and activation checkpointing's recomputation) must
compile once too: the routed count changes every step, packed rows change the document
lengths, and a stochastic dense-path step adds the full-path epilogue once. The micro-batch
size stays fixed within a run (Dynamo specialises a batch of 1), so these steps keep it at 1
as bench.train_throughput does.

Compiles are counted by Dynamo (``CompileCounter`` as the backend: the guards, hence the
recompiles, are Dynamo's; the graph then runs eagerly), and once with Inductor itself
(for training: Inductor's forward and backward graphs as well)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import l2a.fused
from grad_helpers import loss_outputs_grads
from kernels.decode import DECODE_MAX_QUERIES
from l2a.cache import L2ACache
from l2a.convert import convert_model

HIDDEN = 64
# The fused functions of a cached prefill with routed projections: add_rms_norm, router,
# norm_rope (local q/k, global k, routed q) and gated_scatter_add; one graph each.
REGIONS = 4


@pytest.fixture
def compile_with(monkeypatch):
    """Compile the fused regions with a given backend, from a clean Dynamo state."""
    real_compile = torch.compile

    def use(backend):
        monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend=backend))
        l2a.fused.compiled.cache_clear()
        torch._dynamo.reset()

    yield use
    l2a.fused.compiled.cache_clear()
    torch._dynamo.reset()


def _model(make_base, layers):
    model = convert_model(make_base("qwen3", layers=layers, hidden_size=HIDDEN), init="paper", window=6)
    torch.manual_seed(2)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.router.weight.normal_(0, 0.5)
            layer.self_attn.logit_threshold = 0.1 * i - 0.05  # one float per layer
    model.l2a_runtime.routed_projections = True
    return model.eval()


def _prefill(model, length, seed, fused=True):
    """One cached prefill: logits of its last token and routed tokens per layer."""
    model.l2a_runtime.fused_elementwise = fused
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(ids, past_key_values=L2ACache(model.config), use_cache=True, logits_to_keep=1)
    return out.logits, [int(d.sum()) for d in out.routes]


def _check_compiles_once(model, compiles):
    """Warm-up, then (b) same length, other routed counts, (c) other lengths: ``compiles()``
    (graphs compiled so far) must not rise after the warm-up."""
    assert DECODE_MAX_QUERIES < HIDDEN  # every call below is a prefill
    _, warm_counts = _prefill(model, HIDDEN, seed=0)
    assert compiles() == REGIONS
    logits, counts = _prefill(model, HIDDEN, seed=1)
    assert counts != warm_counts, "the second prefill must route other counts"
    assert compiles() == REGIONS, "recompiled for other routed counts"
    for length in (DECODE_MAX_QUERIES + 25, 3 * HIDDEN + 5):
        logits, counts = _prefill(model, length, seed=length)
        assert compiles() == REGIONS, f"recompiled for a {length}-token prefill"
    assert all(0 < c < length for c in counts), counts
    # Still the module path's result (the compiled regions are the same math).
    reference, ref_counts = _prefill(model, length, seed=length, fused=False)
    assert counts == ref_counts
    torch.testing.assert_close(logits, reference, rtol=2e-5, atol=1e-5)


def test_prefills_compile_each_region_once(make_base, compile_with):
    counter = CompileCounter()
    compile_with(counter)
    _check_compiles_once(_model(make_base, layers=4), lambda: counter.frame_count)


def test_prefills_compile_each_region_once_with_inductor(make_base, compile_with):
    """Inductor may add guards of its own (e.g. on index widths): the same check, compiled."""
    compile_with("inductor")
    counters.clear()
    _check_compiles_once(_model(make_base, layers=2), lambda: counters["stats"]["unique_graphs"])


def _train_model(make_base, routed):
    model = _model(make_base, layers=2)
    model.l2a_runtime.routed_projections = routed
    model.l2a_runtime.fused_elementwise = True
    model.train().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _train_step(model, doc_lengths, seed, dense=False):
    """One forward + backward on one packed row; routed tokens per layer."""
    device = model.device
    ids = torch.randint(0, model.config.vocab_size, (1, sum(doc_lengths)),
                        generator=torch.Generator().manual_seed(seed)).to(device)
    pos = torch.cat([torch.arange(n) for n in doc_lengths]).unsqueeze(0).to(device)
    _, out, grads = loss_outputs_grads(model, ids, pos, dense)
    assert any(name.endswith("router.weight") for name in grads)  # the backward ran through
    return [int(d.sum()) for d in out.routes]


def _check_training_compiles_once(model, routed, compiles):
    """Warm-up: a sparse and a dense-path step of ``hidden_size`` tokens; then other routed
    counts, other lengths and document splits, another dense-path step: ``compiles()`` must
    not rise after the warm-up. Regions: add_rms_norm, router, norm_rope and the gated
    epilogue of each path (gated_scatter_add for routed rows, gated_add for the full path,
    which the dense path takes in either mode)."""
    regions = 5 if routed else 4
    warm = _train_step(model, [HIDDEN], seed=0)
    _train_step(model, [HIDDEN], seed=0, dense=True)
    assert compiles() == regions
    counts = [warm]
    for seed, docs in enumerate(([HIDDEN], [HIDDEN // 2, HIDDEN - 3], [7, 2 * HIDDEN + 5, 31]), start=1):
        counts.append(_train_step(model, docs, seed=seed))
        assert compiles() == regions, f"recompiled for a step of documents {docs}"
    _train_step(model, [HIDDEN + 9, 40], seed=9, dense=True)
    assert compiles() == regions, "recompiled for a dense-path step of another length"
    assert len({tuple(c) for c in counts}) == len(counts), f"routed counts must differ: {counts}"


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "full"])
def test_training_steps_compile_each_region_once(make_base, compile_with, routed):
    counter = CompileCounter()
    compile_with(counter)
    _check_training_compiles_once(_train_model(make_base, routed), routed, lambda: counter.frame_count)


def _inductor_compiles():
    """Regions compiled by Dynamo; each must have its Inductor forward and backward graph."""
    graphs = counters["stats"]["unique_graphs"]
    inductor = sum(counters["inductor"][k] for k in ("fxgraph_cache_miss", "fxgraph_cache_hit",
                                                      "fxgraph_cache_bypass"))
    assert inductor == 2 * graphs, f"{inductor} Inductor graphs for {graphs} regions"
    return graphs


def test_training_steps_compile_each_region_once_with_inductor(make_base, compile_with):
    """Inductor compiles a forward and (at the first backward) a backward graph per region;
    neither may be compiled again."""
    compile_with("inductor")
    counters.clear()
    _check_training_compiles_once(_train_model(make_base, routed=True), True, _inductor_compiles)


@pytest.mark.gpu
@pytest.mark.parametrize("routed", [True, False], ids=["routed", "full"])
def test_gpu_bf16_training_steps_compile_each_region_once(make_base, compile_with, routed):
    """The same on CUDA in bf16, Inductor writing Triton kernels (the attention is the
    reference op, so only the fused regions compile)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    compile_with("inductor")
    counters.clear()
    model = _train_model(make_base, routed).to("cuda", torch.bfloat16)
    model.l2a_runtime.attn_backend = "torch"
    _check_training_compiles_once(model, routed, _inductor_compiles)
