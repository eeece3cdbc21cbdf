"""Chunked causal-LM loss: equal to the plain shifted cross-entropy, never vocabulary-sized
beyond one chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from train.losses import causal_lm_loss, num_target_tokens, shift_labels


def _reference(hidden, weight, labels, reduction="mean"):
    """The plain HF loss: full logits in fp32, shift, cross-entropy."""
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1),
        labels[:, 1:].flatten(),
        ignore_index=-100,
        reduction=reduction,
    )


def _inputs(b, t, d, v, dtype=torch.float32, seed=0, ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=gen).to(dtype)
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[torch.rand(b, t, generator=gen) < ignore_frac] = -100
    return hidden, weight, labels


def _grad_rel_err(got, ref):
    """||got - ref|| / ||ref||: a zero gradient scores 1, a 20%-scaled one 0.2, whatever the
    gradients' magnitude (an elementwise atol of the gradients' size would pass both)."""
    got, ref = got.double(), ref.double().to(got.device)
    assert ref.norm() > 0
    return float((got - ref).norm() / ref.norm())


def _loss_and_grads(fn, hidden, weight, labels, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fn(h, w, labels, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize(
    "b, t, chunk",
    [(2, 63, 16), (1, 127, 5), (3, 31, 4096), (2, 17, 1)],
    ids=["odd-T", "chunk-not-dividing", "one-chunk", "chunk-1"],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_plain_cross_entropy_fp32(b, t, chunk, reduction):
    hidden, weight, labels = _inputs(b, t, 24, 97)
    loss, gh, gw = _loss_and_grads(
        causal_lm_loss, hidden, weight, labels, chunk_size=chunk, reduction=reduction
    )
    ref, rgh, rgw = _loss_and_grads(_reference, hidden, weight, labels, reduction=reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, rgh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gw, rgw, rtol=1e-4, atol=1e-7)
    assert loss.dtype == torch.float32


def test_all_ignored_rows_and_batches():
    hidden, weight, labels = _inputs(3, 40, 16, 50)
    labels[1] = -100  # a whole row of padding
    loss, gh, gw = _loss_and_grads(causal_lm_loss, hidden, weight, labels, chunk_size=7)
    ref, rgh, rgw = _loss_and_grads(_reference, hidden, weight, labels)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gh, rgh)
    torch.testing.assert_close(gw, rgw)
    assert (gh[1] == 0).all()
    # Only the first token of a row is ignored: the row still counts (shifted away).
    labels = torch.full_like(labels, -100)
    loss, gh, gw = _loss_and_grads(causal_lm_loss, hidden, weight, labels, chunk_size=7)
    assert loss.item() == 0.0, "a micro-batch without targets gives 0, not NaN"
    assert (gh == 0).all() and (gw == 0).all()


def test_shift_is_inside():
    """Position t is scored against labels[t + 1]: the last position and labels[:, 0] play
    no part, whatever they are."""
    hidden, weight, labels = _inputs(2, 9, 8, 13, ignore_frac=0.0)
    base = causal_lm_loss(hidden, weight, labels)
    other = labels.clone()
    other[:, 0] = (other[:, 0] + 1) % 13
    moved = hidden.clone()
    moved[:, -1] += 5.0
    assert causal_lm_loss(moved, weight, other).item() == base.item()
    assert torch.equal(shift_labels(labels)[:, :-1], labels[:, 1:])
    assert (shift_labels(labels)[:, -1] == -100).all()
    changed = labels.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 13
    assert causal_lm_loss(hidden, weight, changed).item() != base.item()


def test_bf16_close_to_fp32_reference():
    hidden, weight, labels = _inputs(2, 50, 32, 200, dtype=torch.bfloat16)
    loss, gh, gw = _loss_and_grads(causal_lm_loss, hidden, weight, labels, chunk_size=16)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # Reference: the same bf16 values in fp32 throughout.
    ref, rgh, rgw = _loss_and_grads(_reference, hidden.float(), weight.float(), labels)
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    assert _grad_rel_err(gh, rgh) < 1e-2
    assert _grad_rel_err(gw, rgw) < 1e-2


def test_frozen_head_and_no_grad():
    hidden, weight, labels = _inputs(2, 21, 8, 30)
    h = hidden.clone().requires_grad_()
    loss = causal_lm_loss(h, weight, labels, chunk_size=4)  # frozen head, as in L2A training
    (3.0 * loss).backward()
    ref_h = hidden.clone().requires_grad_()
    (3.0 * _reference(ref_h, weight, labels)).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)
    assert weight.grad is None
    with torch.no_grad():
        torch.testing.assert_close(
            causal_lm_loss(h, weight, labels, chunk_size=4), _reference(hidden, weight, labels)
        )


def test_gradient_accumulation_with_token_counts():
    """Sum over micro-batches divided by the step's target tokens equals the mean over the
    concatenated batch, whatever the micro-batches' own token counts."""
    hidden, weight, labels = _inputs(4, 33, 12, 40, ignore_frac=0.5)
    labels[0, 5:] = -100  # uneven micro-batches
    whole = causal_lm_loss(hidden, weight, labels)
    parts = [(hidden[:1], labels[:1]), (hidden[1:], labels[1:])]
    n_total = sum(int(num_target_tokens(lab)) for _, lab in parts)
    summed = sum(causal_lm_loss(h, weight, lab, reduction="sum") for h, lab in parts) / n_total
    torch.testing.assert_close(summed, whole)
    means = [causal_lm_loss(h, weight, lab, return_num_tokens=True) for h, lab in parts]
    assert all(n.dtype == torch.int64 for _, n in means)
    via_means = sum(m * n for m, n in means) / sum(n for _, n in means)
    torch.testing.assert_close(via_means, whole)
    assert n_total == int((labels[:, 1:] != -100).sum())


class _RecordShapes(TorchDispatchMode):
    """Records the shape of every tensor that any aten op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.shapes.append((str(func), tuple(o.shape)))
        return out


@pytest.mark.parametrize("fn", ["chunked", "plain"])
def test_no_vocabulary_sized_buffer_beyond_one_chunk(fn):
    """Forward and backward of the chunked loss create no tensor with more than
    chunk_size x V elements (the plain loss does: the check can fail)."""
    b, t, d, v, chunk = 2, 300, 16, 500, 64
    hidden, weight, labels = _inputs(b, t, d, v, ignore_frac=0.0)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    rec = _RecordShapes()
    with rec:
        if fn == "chunked":
            loss = causal_lm_loss(h, w, labels, chunk_size=chunk)
        else:
            loss = _reference(h, w, labels)
        loss.backward()
    vocab_sized = [(op, s) for op, s in rec.shapes if v in s]
    assert vocab_sized, "the recorder saw the logits"
    biggest = max(torch.Size(s).numel() for _, s in vocab_sized if s != (v, d))
    if fn == "chunked":
        assert biggest <= chunk * v, vocab_sized
        matmuls = [s for op, s in rec.shapes if op.startswith("aten.mm")]
        assert matmuls and all(s[0] <= chunk or s == (v, d) for s in matmuls), matmuls
    else:
        assert biggest >= b * (t - 1) * v


def test_input_errors():
    hidden, weight, labels = _inputs(2, 8, 4, 10)
    with pytest.raises(ValueError, match="hidden"):
        causal_lm_loss(hidden[0], weight, labels)
    with pytest.raises(ValueError, match="lm_head_weight"):
        causal_lm_loss(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError, match="labels"):
        causal_lm_loss(hidden, weight, labels[:, :5])
    with pytest.raises(ValueError, match="labels"):
        causal_lm_loss(hidden, weight, labels.float())
    bad = labels.clone()
    bad[1, 4] = 10
    with pytest.raises(ValueError, match=r"labels: values must be in \[0, 10\)"):
        causal_lm_loss(hidden, weight, bad)
    with pytest.raises(ValueError, match="chunk_size"):
        causal_lm_loss(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        causal_lm_loss(hidden, weight, labels, reduction="none")
    with pytest.raises(ValueError, match="backend"):
        causal_lm_loss(hidden, weight, labels, backend="cuda")
    with pytest.raises(ValueError, match="liger"):
        causal_lm_loss(hidden, weight, labels, backend="liger")  # CPU tensors


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "liger"])
def test_cuda_bf16_matches_reference_within_chunk_memory(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if backend == "liger":
        pytest.importorskip("liger_kernel")
    t, v, chunk = 8192, 32000, 1024
    hidden, weight, labels = (x.cuda() for x in _inputs(1, t, 1024, v, dtype=torch.bfloat16))
    h = hidden.clone().requires_grad_()  # frozen head, as in L2A training
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = causal_lm_loss(h, weight, labels, chunk_size=chunk, backend=backend)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ref, rgh, _ = _loss_and_grads(_reference, hidden.float(), weight.float(), labels)
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    assert _grad_rel_err(h.grad, rgh) < 1e-2
    # The full fp32 logits alone would take t * v * 4 bytes.
    assert peak < t * v * 4 / 2, peak


def test_pre_shifted_labels_cut_into_slices_sum_to_the_whole_row():
    """Sequence parallelism: labels shifted on the whole row, then cut; the slices' summed
    losses and target counts add up to the whole row's (the cut's boundary target kept)."""
    from train.losses import causal_lm_loss, shift_labels

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 10, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 10), generator=g)
    labels[1, 5] = -100  # a document starts right after the cut: position 4 predicts nothing
    whole, n = causal_lm_loss(hidden, weight, labels, reduction="sum", return_num_tokens=True)
    targets = shift_labels(labels)
    parts = [causal_lm_loss(hidden[:, s], weight, targets[:, s], reduction="sum",
                            return_num_tokens=True, shifted=True)
             for s in (slice(0, 5), slice(5, 10))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole)
    assert int(parts[0][1] + parts[1][1]) == int(n) == 2 * 9 - 1
