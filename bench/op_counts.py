"""Aten ops (a proxy for kernel launches) and host-device synchronisations per decoder-layer
pass, for the L2A layer in the configurations the trainer runs and for the dense (base
Qwen3) layer, counted on CPU.

    python -m bench.op_counts --out op_counts.json [--backend fa4|torch] [--variants ...]

Setting: a small Qwen3-like shape in fp32, one packed row of several documents, a routed
mixture, the trainer's trainable set (attention and norms; MLP frozen) and its activation
checkpointing (non-reentrant `torch.utils.checkpoint`, recomputation in the backward). Two
layers are run as a stack: `per_layer` is the second one (what every layer after the first
costs), `first_layer` the first (it also pays for what a whole forward shares, such as the
document boundaries, whose per-forward cost is `first_layer - per_layer`). Passes:
`forward`, `recompute` (the checkpointed forward run again in the backward) and `backward`.

Backends: `fa4` (default) runs the host code of the path a Hopper GPU takes
(FlashAttention-4 windowed / dense, FlexAttention FLASH for the routed queries) with the
kernels stood in (bench/kernel_stand_ins.py: one op per kernel output); `torch` runs the
pure-PyTorch reference as is (the CPU path, whose per-document loops synchronise by design).
The dense layer runs transformers' SDPA attention with the mask built once per forward.

Fused variants (`l2a.fused_elementwise`) run their torch.compile'd regions eagerly here
(`OpCounter.compiled_region`; torch.compile does not run under a dispatch mode):
`compiled_region_ops` of a pass are the ops inside those regions, which Inductor fuses into
a few kernels per region call (`compiled_region_calls`). In the backward, each region call
with a gradient is one call of its compiled backward (AOTAutograd), its ops region ops; the
`launch_proxy` of a pass is its eager ops plus its region calls.

`layer_op_counts()` returns the same record as the CLI writes, for other benchmarks' JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from bench.dispatch_counter import OpCounter

PASSES = ("forward", "recompute", "backward")
# name -> (l2a, routed projections, fused elementwise, dense-path step, capacity rows)
VARIANTS = {
    "dense": (False, False, False, False, False),
    "l2a": (True, False, False, False, False),
    "l2a_routed": (True, True, False, False, False),
    "l2a_fused": (True, False, True, False, False),
    "l2a_routed_fused": (True, True, True, False, False),
    # l2a_routed_fused with `l2a.routed_rows=capacity`: the compacted queries are T rows.
    "l2a_capacity": (True, True, True, False, True),
    "l2a_dense_path": (True, False, False, True, False),
    "l2a_dense_path_fused": (True, False, True, True, False),
    # The dense-path step of an l2a_capacity run: its token-sparse backward in the capacity
    # layout (l2a/dense_path.py).
    "l2a_dense_path_capacity": (True, True, True, True, True),
}
BACKENDS = ("fa4", "torch")


@dataclass(frozen=True)
class Shape:
    """Qwen3-like (GQA, QK-norm, head_dim set), small enough for a CPU test."""

    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 256
    window: int = 128
    doc_lengths: tuple[int, ...] = (200, 37, 150, 125)  # one packed row of 512 tokens
    layers: int = 2
    seed: int = 0


def _models(shape: Shape):
    """(dense base, its L2A conversion), both in train mode with the trainer's trainable set."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from l2a.convert import convert_model
    from l2a.trainable import mark_trainable

    torch.manual_seed(shape.seed)
    config = Qwen3Config(
        vocab_size=64, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
        max_position_embeddings=4 * sum(shape.doc_lengths), attn_implementation="sdpa",
    )
    base = Qwen3ForCausalLM(config).float()
    l2a = convert_model(base, init="paper", window=shape.window)
    with torch.no_grad():  # a routed mixture: a random router (zero at conversion: all routed)
        for layer in l2a.model.layers:
            layer.self_attn.router.weight.normal_(0, 1.0)
    for model in (base, l2a):
        model.train()
        mark_trainable(model)
    return base, l2a


def _inputs(shape: Shape, model):
    from kernels.utils import doc_ids_from_position_ids

    T = sum(shape.doc_lengths)
    pos = torch.cat([torch.arange(n) for n in shape.doc_lengths])[None]
    g = torch.Generator().manual_seed(shape.seed + 1)
    hidden = torch.randn(1, T, shape.hidden, generator=g)
    pe = model.model.rotary_emb(hidden, pos)
    return hidden, pos, pe, doc_ids_from_position_ids(pos)


@contextlib.contextmanager
def _marked_compiled_regions(counter: OpCounter):
    """The layer's `compiled(fn)` regions run eagerly, counted as compiled regions."""
    import kernels.flex_mask as flex_mask
    import l2a.layers as layers

    saved, layers.compiled = layers.compiled, counter.compiled_region
    # The block mask's bounds: one compiled region on CUDA (kernels/flex_mask.py).
    saved_mask = flex_mask._block_tensors
    flex_mask._block_tensors = counter.compiled_region(saved_mask)
    try:
        yield
    finally:
        layers.compiled = saved
        flex_mask._block_tensors = saved_mask


def _run_stack(counter: OpCounter, layers, call, hidden: torch.Tensor) -> None:
    """Forward through the checkpointed layers, then backward from fixed output gradients
    (so no loss op is counted); phases labelled `(pass, layer index)`."""
    outputs = []
    h = hidden.detach().requires_grad_(True)
    for i, layer in enumerate(layers):
        # When the gradient of a layer's input is ready, that layer's backward is done.
        h.register_hook(lambda grad, prev=i - 1: setattr(counter, "phase", ("backward", prev)))
        counter.phase = ("forward", i)
        out = checkpoint(
            call, layer, h, use_reentrant=False,
            context_fn=lambda i=i: (contextlib.nullcontext(), counter.phase_scope(("recompute", i))),
        )
        counter.phase = None
        h, extra = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        outputs += [t for t in extra if t is not None and t.requires_grad]
    outputs.insert(0, h)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in outputs]
    counter.phase = ("backward", len(layers) - 1)
    torch.autograd.backward(outputs, grads)
    counter.phase = None


def _count_variant(name: str, backend: str, shape: Shape, models, routed_out: list) -> dict:
    from l2a.layers import AttentionContext

    is_l2a, routed, fused, dense_path, capacity = VARIANTS[name]
    base, l2a = models
    model = l2a if is_l2a else base
    # A step's backward starts with no gradients (the optimizer's zero_grad sets them to
    # None): each variant's too, or the ones counted after another would add into its
    # gradients (an add per parameter) where the first one only keeps them.
    for p in model.parameters():
        p.grad = None
    hidden, pos, pe, doc_ids = _inputs(shape, model)
    counter = OpCounter()
    if is_l2a:
        ctx = AttentionContext(doc_ids=doc_ids, backend="auto" if backend == "fa4" else "torch",
                               routed_projections=routed, fused=fused, row_capacity=capacity)

        def call(layer, h):
            out = layer(h, position_embeddings=pe, ctx=ctx, dense=dense_path)
            routed_out.append(out[2])
            return out
    else:
        from transformers.masking_utils import create_causal_mask

        # Built once per forward by the model, outside the layers.
        mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=None,
                                  past_key_values=None, position_ids=pos)

        def call(layer, h):
            return layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)

    stand_ins = contextlib.nullcontext()
    if backend == "fa4":
        from bench.kernel_stand_ins import gpu_attention_stand_ins

        stand_ins = gpu_attention_stand_ins()
    with stand_ins, counter, _marked_compiled_regions(counter):
        _run_stack(counter, list(model.model.layers), call, hidden)
    last = shape.layers - 1
    return {
        "per_layer": {p: counter.summary((p, last)) for p in PASSES},
        "first_layer": {p: counter.summary((p, 0)) for p in PASSES},
    }


def layer_op_counts(backend: str = "fa4", variants=None, shape: Shape | None = None) -> dict:
    """`{"setting": ..., "variants": {name: {"per_layer" | "first_layer": {pass: counts}}}}`;
    counts: `ops`, `syncs`, `compiled_region_ops`, `compiled_region_calls`, `sync_sites`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}, expected some of {list(VARIANTS)}")
    shape = shape or Shape()
    models = _models(shape)
    result, fractions = {}, []
    for name in names:
        routes = []
        result[name] = _count_variant(name, backend, shape, models, routes)
        fractions += [float(d.float().mean()) for d in routes[: shape.layers]]
    setting = {**asdict(shape), "tokens": sum(shape.doc_lengths), "dtype": "float32",
               "backend": backend, "activation_checkpointing": True,
               "routed_fraction": round(sum(fractions) / len(fractions), 3) if fractions else None}
    return {"setting": setting, "variants": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.op_counts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--backend", default="fa4", choices=BACKENDS)
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    args = parser.parse_args(argv)
    record = layer_op_counts(args.backend, args.variants)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    for name, counts in record["variants"].items():
        row = "  ".join(f"{p} {c['ops']:4d} ops {c['launch_proxy']:4d} launches {c['syncs']} syncs"
                        for p, c in counts["per_layer"].items())
        print(f"{name:24s} {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
