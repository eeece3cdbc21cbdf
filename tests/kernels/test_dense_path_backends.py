"""The dense-path attention (l2a/dense_path.py) on every GPU backend, in bf16.

Its forward must be dense causal attention of every query; its backward, run token-sparse
over the routed rows, must equal the full backward of dense attention whenever the output's
gradient is zero at unrouted rows (what the straight-through gate's forward value does on a
dense-path step). The expectation is the fp64 dense reference with a full backward, not the
token-sparse kernel under test. Odd lengths, packed documents, GQA. In the capacity layout
of the routed rows (the backward through the routed core on T rows permuted routed-first, no
count read) the gradients must be the same, and equal the count layout's. The CPU version of
this check, through the whole model, is tests/l2a/test_dense_path_kernel.py.
"""

from __future__ import annotations

import pytest
import torch
from attention_reference import allowed_mask, dense_attention, reference_with_grads, rel_err, run_with_grads
from test_backends import _inputs

from kernels.backends import fa4_suits
from l2a.dense_path import dense_forward_routed_backward
from l2a.layers import routed_query_core, sequence_attention_core

# (route kind, T, Hq, Hkv, D, documents per row)
CASES = [
    ("random", 1531, 32, 8, 128, 3),
    ("mixed", 777, 16, 4, 64, 1),
]


def _dense_reference(q, k, v, doc_ids):
    return dense_attention(q, k, v, allowed_mask(q.shape[2], doc_ids, q.shape[0]))


def _check(case, backend, device, dtype, capacity=False):
    q, k, v, do, route, doc_ids = _inputs(case, device, dtype)
    D = q.shape[-1]
    if backend == "fa4" and not fa4_suits(q):
        pytest.skip("flash-attn-4 not installed or not a Hopper/Blackwell GPU")
    # The gate's forward value zeroes the gradient at every unrouted row.
    do = do * route[:, None, :, None]

    def fn(routed_core):
        def attend(q, k, v):
            return dense_forward_routed_backward(sequence_attention_core, q, k, v, route, doc_ids,
                                                 D**-0.5, backend, routed_core)
        return attend

    got = run_with_grads(fn(routed_query_core if capacity else None), q, k, v, do)
    want = reference_with_grads(_dense_reference, q, k, v, do, doc_ids)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert rel_err(a, b, floor=1e-2) < 2e-2, (name, backend, capacity)
    if capacity:
        # The same attention of the same rows: fp32 agrees to rounding, bf16 to the
        # kernels' own tolerance (other block layouts, other summation orders).
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        count = run_with_grads(fn(None), q, k, v, do)
        for name, a, b in zip(("o", "dq", "dk", "dv"), got, count):
            assert rel_err(a, b, floor=1e-2) < tol, (name, backend, "capacity vs count")
    # The forward is dense: unrouted rows carry attention output too.
    unrouted = ~route
    assert unrouted.any() and got[0].transpose(1, 2)[unrouted].abs().sum() > 0


@pytest.mark.parametrize("capacity", [False, True], ids=["count", "capacity"])
def test_dense_forward_routed_backward_cpu(capacity):
    _check(("random", 45, 4, 2, 16, 3), "torch", "cpu", torch.float32, capacity)


@pytest.mark.gpu
@pytest.mark.parametrize("capacity", [False, True], ids=["count", "capacity"])
@pytest.mark.parametrize("backend", ["triton", "flex", "fa4", "auto"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_dense_forward_routed_backward_gpu(case, backend, capacity):
    _check(case, backend, "cuda", torch.bfloat16, capacity)
