"""Where in a training step the activation memory peaks, simulated on the CPU.

One forward + backward of a small Qwen3-shaped model (L2A or dense) with activation
checkpointing, the tiled MLP and, optionally, DeepSpeed-Ulysses wrapped on a one-rank group
(its all-to-all copies happen, the exchange is with itself), under ``bench.live_bytes``:
the live tensor bytes after every allocation. The shape keeps the ratios of Qwen3-8B at a
long sequence (q width = hidden, KV width = hidden / 4, MLP width = 3 x hidden, tokens per
rank = 64 x hidden, i.e. 64 tiled-MLP shards as at 512K tokens with SP=2), and the fp32
chunk sizes of the norms, the router and the gated o_proj are scaled by the same factor,
so every tensor is the same multiple of one "stream copy" (``U`` = 2 x hidden x tokens
bytes; 2 GiB at 512K tokens, SP=2, hidden 4096) as in the large run.

The attention kernels do not run: their launches are replaced by nothing, so their
outputs are garbage, but every buffer they allocate (outputs, LSE, the backward's dq /
dk / dv / delta and compacted q / dO copies) is allocated as on the GPU (the H200 launch
config, ``compact`` copies on). Values are meaningless; the allocation timeline is the
one of the real code. Not simulated: ZeRO-3 (gathered weights, gradient buckets), the
chunked loss (the step here ends in the final norm), CUDA allocator rounding.

    python -m bench.memory_timeline --variant l2a --layers 3     # ~1-2 min on one core

Prints the peaks of the backward's phases in U above the memory live when the backward
starts (the checkpointed layer inputs and the last hidden state): the largest is where
the step's peak is, and the difference between two builds is what they save, in U.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
from dataclasses import replace

import torch

HIDDEN, TOKENS = 256, 16384  # 64 x hidden tokens, as 262144 = 64 x 4096 per rank at 512K/SP2
REAL_HIDDEN, REAL_TOKENS = 4096, 262144


def _scaled(real_rows: int, real_width: int, width: int) -> int:
    """Rows of a chunk whose bytes are the same fraction of U here as in the large run."""
    real_u, u = 2 * REAL_HIDDEN * REAL_TOKENS, 2 * HIDDEN * TOKENS
    return max(1, round(real_rows * real_width / real_u * u / width))


def _allocation_only_kernels() -> None:
    import kernels.flash.config as kc
    import kernels.flash.host as kh

    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton path on CPU tensors
    kc.INTERPRET_CONFIG = replace(kc.INTERPRET_CONFIG, compact=True)  # as the H200 dkdv/128
    kh.run_with_fallback = lambda *a, **k: None  # allocate, never launch


def _scale_chunks() -> None:
    import l2a.gated_output
    import l2a.layers
    import l2a.rmsnorm
    import l2a.router_logit

    l2a.rmsnorm.CHUNK_ELEMENTS = _scaled(l2a.rmsnorm.CHUNK_ELEMENTS, 1, 1)
    rows = _scaled(l2a.router_logit.CHUNK_ROWS, REAL_HIDDEN, HIDDEN)
    l2a.layers.router_logit = functools.partial(l2a.router_logit.router_logit, chunk_rows=rows)
    l2a.gated_output.CHUNK_ROWS = _scaled(l2a.gated_output.CHUNK_ROWS, REAL_HIDDEN, HIDDEN)


def _model(variant: str, layers: int):
    from l2a.convert import convert_model
    from l2a.trainable import mark_trainable
    from train.memory import enable_tiled_mlp
    from train.tiny_base import qwen3_config, random_qwen3

    shape = dict(hidden_size=HIDDEN, intermediate_size=3 * HIDDEN, num_hidden_layers=layers,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=HIDDEN // 8,
                 vocab_size=128, tie_word_embeddings=False)
    base = random_qwen3(qwen3_config(shape, max_position_embeddings=TOKENS), seed=0)
    model = convert_model(base, init="paper", window=64) if variant == "l2a" else base
    if variant == "l2a":
        model.l2a_runtime.attn_backend = "triton"
        model.config.l2a_router_threshold = 0.6  # no token routed, as in the long probes
    model.to(torch.bfloat16).train()
    mark_trainable(model)
    enable_tiled_mlp(model, "auto")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _ulysses_one_rank(model) -> None:
    import deepspeed

    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29541", RANK="0", WORLD_SIZE="1",
                     LOCAL_RANK="0").items():
        os.environ.setdefault(k, v)
    deepspeed.init_distributed("gloo")
    import torch.distributed as dist

    from train.parallel.apply import apply_to_model

    apply_to_model(model, dist.group.WORLD, 1)


def run(variant: str = "l2a", layers: int = 3, ulysses: bool = True, top: int = 12) -> dict:
    from bench.live_bytes import LiveBytes

    _allocation_only_kernels()
    _scale_chunks()
    model = _model(variant, layers)
    if ulysses and variant == "l2a":
        _ulysses_one_rank(model)
    ids = torch.randint(0, 128, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    kw = {"doc_ids": torch.zeros(1, TOKENS, dtype=torch.long)} if variant == "l2a" else {}
    live = LiveBytes(stack=True, ignore=list(model.parameters()))
    timeline: list[tuple[int, str]] = []
    count = live._count

    def count_and_record(func, t):
        before = live.current
        count(func, t)
        if live.current != before:
            timeline.append((live.current, live._live[id(t.untyped_storage())][1]))

    live._count = count_and_record
    with live:
        out = model.model(input_ids=ids, position_ids=torch.arange(TOKENS)[None],
                          use_cache=False, **kw).last_hidden_state
        start, first = live.current, len(timeline)
        out.backward(torch.ones_like(out))
    unit = 2 * HIDDEN * TOKENS
    phases: dict[str, tuple[int, str]] = {}  # the highest point reached at each site
    for n, label in timeline[first:]:
        site = re.sub(r"^\S+ \([^)]*\) \S+ @ ", "", label)
        if n > phases.get(site, (0,))[0]:
            phases[site] = (n, label)
    ranked = sorted(phases.values(), key=lambda x: -x[0])[:top]
    return {"variant": variant, "layers": layers, "tokens": TOKENS, "hidden": HIDDEN,
            "unit_bytes": unit, "live_at_backward_start_U": round(start / unit, 2),
            "peak_above_backward_start_U": round((live.peak - start) / unit, 2),
            "phases_above_backward_start_U": [
                {"U": round((n - start) / unit, 2), "allocation": label} for n, label in ranked]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("l2a", "dense"), default="l2a")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--no-ulysses", dest="ulysses", action="store_false")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.variant, args.layers, args.ulysses)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.variant}: peak {result['peak_above_backward_start_U']} U above the backward's "
          f"start ({result['live_at_backward_start_U']} U live then); U = {result['unit_bytes']} B")
    for row in result["phases_above_backward_start_U"]:
        print(f"{row['U']:6.2f}  {row['allocation'][:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
