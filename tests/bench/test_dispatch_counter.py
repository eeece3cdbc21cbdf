"""bench.dispatch_counter: a compiled region counted as one call forward and one backward.

torch.compile'd regions run eagerly under the counter (`OpCounter.compiled_region`); on a GPU
a region call is one call of a few fused kernels, and AOTAutograd compiles its backward into
one call too (one `CompiledFunctionBackward` node per region call). So per pass the launch
proxy is the eager ops plus the region calls, the backward included.

The expectations count by hand what each op asks of the dispatcher: the custom `Double`
function below dispatches exactly one aten op forward (``x + x``) and one backward
(``g + g``); `sin`'s backward is ``grad * cos(x)`` (two ops, derivatives.yaml); the engine
adds nothing for a gradient given by the caller, nor for a leaf's first gradient (it keeps
the tensor)."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from bench.dispatch_counter import OpCounter


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x + x

    @staticmethod
    def backward(ctx, g):
        return g + g


def _double_twice(t):
    return Double.apply(Double.apply(t))


def _run(fn, x, counter):
    counter.phase = "forward"
    out = fn(x)
    counter.phase = None
    grad = torch.ones_like(out)  # outside any phase: not counted
    counter.phase = "backward"
    out.backward(grad)
    counter.phase = None
    return out


def test_one_region_forward_and_backward_is_one_call_each():
    x = torch.randn(4, requires_grad=True)
    with OpCounter() as c:
        region = c.compiled_region(_double_twice)
        # eager: 1 op; region: 2 ops in 1 call. Backward: the region's 2 ops in 1 compiled
        # backward call, the eager Double's 1 op.
        _run(lambda t: region(Double.apply(t)), x, c)
    fwd, bwd = c.summary("forward"), c.summary("backward")
    assert (fwd["ops"], fwd["compiled_region_ops"], fwd["compiled_region_calls"]) == (3, 2, 1)
    assert (bwd["ops"], bwd["compiled_region_ops"], bwd["compiled_region_calls"]) == (3, 2, 1)
    # launch proxy = eager ops + region calls = 1 + 1, forward and backward
    assert fwd["launch_proxy"] == bwd["launch_proxy"] == 2
    assert torch.equal(x.grad, torch.full((4,), 8.0))  # (2 * 2 * 2) x: the region still differentiates


def test_aten_ops_of_a_region_backward_are_region_ops():
    """sin forward: 1 op; its backward grad * cos(x): 2 ops, both in the region's backward
    call. The eager mul by w around it: 1 op forward; backward, grad * w for x only (w does
    not require a gradient): 1 op."""
    x, w = torch.randn(3, requires_grad=True), torch.randn(3)
    with OpCounter() as c:
        region = c.compiled_region(torch.sin)
        _run(lambda t: region(t * w), x, c)
    fwd, bwd = c.summary("forward"), c.summary("backward")
    assert (fwd["ops"], fwd["compiled_region_ops"], fwd["compiled_region_calls"]) == (2, 1, 1)
    assert (bwd["ops"], bwd["compiled_region_ops"], bwd["compiled_region_calls"]) == (3, 2, 1)
    assert bwd["launch_proxy"] == (3 - 2) + 1


def test_backward_region_calls_equal_the_region_calls_that_have_a_gradient():
    """Two calls of a differentiable region: two compiled backward calls. A region whose
    outputs need no gradient (integer tensors, like the block mask's bounds) has no backward."""
    x = torch.randn(4, requires_grad=True)

    def argsort_region(t):
        return torch.argsort(t)

    with OpCounter() as c:
        region, no_grad_region = c.compiled_region(_double_twice), c.compiled_region(argsort_region)

        def fn(t):
            idx = no_grad_region(t)
            return region(region(t)) + idx.float().sum()

        _run(fn, x, c)
    assert c.summary("forward")["compiled_region_calls"] == 3
    assert c.summary("backward")["compiled_region_calls"] == 2
    # every Double node ran inside one of the two calls: 4 region ops; the eager add and sum
    # have their own backward (AddBackward0 passes the gradient on: no op; SumBackward0's
    # expand is a view)
    assert c.summary("backward")["compiled_region_ops"] == 4


def test_each_backward_of_a_graph_counts_its_own_call():
    x = torch.randn(4, requires_grad=True)
    with OpCounter() as c:
        c.phase = "forward"
        out = c.compiled_region(_double_twice)(x)
        c.phase = None
        grad = torch.ones(4)
        c.phase = "backward"
        out.backward(grad, retain_graph=True)
        out.backward(grad)
    assert c.summary("backward")["compiled_region_calls"] == 2
    assert c.summary("backward")["compiled_region_ops"] == 4


def test_a_recomputation_started_from_a_region_node_is_counted_as_its_own_ops():
    """Activation checkpointing recomputes when the first saved tensor is unpacked: here by
    sin's backward node, inside the region's backward. The recomputation's eager exp is an
    eager op of the recompute phase, its sin a region call of its own. (Early stop off: the
    whole function is recomputed, not only up to the last tensor the backward needs.)"""
    from torch.utils.checkpoint import set_checkpoint_early_stop

    x = torch.randn(3, requires_grad=True)
    with OpCounter() as c, set_checkpoint_early_stop(False):
        region = c.compiled_region(torch.sin)
        c.phase = "forward"
        out = checkpoint(lambda t: region(t.exp()), x, use_reentrant=False,
                         context_fn=lambda: (contextlib.nullcontext(), c.phase_scope("recompute")))
        c.phase = None
        grad = torch.ones(3)
        c.phase = "backward"
        out.backward(grad)
    rec = c.summary("recompute")
    assert (rec["ops"], rec["compiled_region_ops"], rec["compiled_region_calls"]) == (2, 1, 1)
    bwd = c.summary("backward")
    # sin: grad * cos(x), 2 region ops in one call; exp: grad * result, 1 eager op
    assert (bwd["ops"], bwd["compiled_region_ops"], bwd["compiled_region_calls"]) == (3, 2, 1)
