"""A decoding step on the static L2A cache forces no host synchronisation (the condition for
capturing it in a CUDA graph): every aten op of the step is recorded by a dispatch mode and
none of those that make the host wait for the device (or, on a GPU, copy from pageable host
memory) may appear. The growing cache's step, which decides on the host whether any token
routed, is the positive control: the recorder sees its sync."""

from __future__ import annotations

import torch
from test_cache import _model
from torch.utils._python_dispatch import TorchDispatchMode

from l2a.cache import L2ACache
from l2a.decode_graph import GraphedDecoder
from l2a.static_cache import L2AStaticCache

# Ops whose result the host must read (a device -> host copy and a wait): item / bool() /
# int() go through _local_scalar_dense (is_nonzero first for bool()); data-dependent output
# shapes (nonzero, masked_select, unique, repeat_interleave without output_size); equal.
SYNC_OPS = {
    "_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static_unsized", "equal",
    "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
}
# torch.tensor(<host data>) inside the step: a pageable host -> device copy on a GPU, which
# a CUDA graph cannot capture.
HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}


class SyncRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or name in HOST_DATA_OPS:
            self.seen.append(str(func))
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.seen.append(str(func))
        elif name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
            if i is not None
        ):
            self.seen.append(f"{func} (boolean index)")
        return func(*args, **kwargs)


def _prefilled(model, cache, P=11):
    prompt = torch.randint(1, model.config.vocab_size, (2, P), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(prompt, past_key_values=cache)
    return out.logits[:, -1:].argmax(-1)


def test_the_recorder_sees_what_it_looks_for():
    t = torch.tensor([1.0, 0.0])
    with SyncRecorder() as rec:
        t.sum().item()
        bool(t.any())
        t.nonzero()
        t[t > 0]
        t.repeat_interleave(torch.tensor([1, 2]))
    names = " ".join(rec.seen)
    for op in ("_local_scalar_dense", "nonzero", "boolean index", "repeat_interleave", "lift_fresh"):
        assert op in names, (op, rec.seen)


def test_a_static_cache_decoding_step_forces_no_sync(base_model):
    model = _model(base_model)
    cache = L2AStaticCache(model.config, max_cache_len=16)
    nxt = _prefilled(model, cache)
    pos = torch.full((2, 1), cache.get_seq_length())
    with torch.no_grad(), SyncRecorder() as rec:
        model(nxt, position_ids=pos, cache_position=pos[0], past_key_values=cache)
    assert rec.seen == []
    assert cache.get_seq_length() == 12


def test_the_graph_decoders_step_forces_no_sync(base_model):
    """What GraphedDecoder captures (run eagerly on a CPU), twice: its input copies as well."""
    model = _model(base_model)
    cache = L2AStaticCache(model.config, max_cache_len=16)
    nxt = _prefilled(model, cache)
    decoder = GraphedDecoder(model, cache, capture=False)
    with torch.no_grad(), SyncRecorder() as rec:
        for _ in range(2):
            logits, routes = decoder.step(nxt)
            nxt = logits[:, -1:].argmax(-1)
    assert rec.seen == []
    assert len(routes) == model.config.num_hidden_layers


def test_the_growing_cache_step_does_sync(base_model):
    """Positive control: the growing cache's step asks the host whether a token routed."""
    model = _model(base_model)
    cache = L2ACache(model.config)
    nxt = _prefilled(model, cache)
    with torch.no_grad(), SyncRecorder() as rec:
        model(nxt, past_key_values=cache)
    assert any("is_nonzero" in op or "_local_scalar_dense" in op for op in rec.seen), rec.seen
