"""A first-principles model of peak GPU memory per rank for training L2A or the dense
baseline: what scales with the sequence length, the sequence-parallel size and the ZeRO
stage. docs/BENCHMARKS.md ("Memory model") writes the same formulas out.

    python -m train.plan experiment=qwen3_128k --gpus 8 --gib 80   # will this run fit?
    python -m train.plan --table                                   # the table of the docs
    python -m train.plan --check               # the measured SP=2 runs against the model

Everything is bytes per GPU; ``t = micro_batch * seq_len / sp`` tokens per rank. What is
modelled (bf16 training, AdamW, DeepSpeed ZeRO):

* static: bf16 parameters, bf16 gradients, fp32 master weights + Adam moments (12 bytes per
  trainable parameter), each divided by the world size where the ZeRO stage partitions it;
  ZeRO buffers (the gradient-reduction bucket, the gathered weights of one layer, the
  prefetch bucket).
* activations, with activation checkpointing per decoder layer: every layer's input
  (``2 * hidden`` bytes per token per layer, kept from the forward to the backward unless
  offloaded to the CPU), plus the tensors one recomputed layer saves for its backward
  (``layer_saved_bytes_per_token``), plus the backward's transient gradients (two of the
  stream's width, and the MLP's intermediate gradients of one shard).

Not modelled: allocator fragmentation and the caching allocator's reserve, CUDA/NCCL
context (outside ``max_memory_allocated``), the optimizer step's transient fp32 gradient
copy (not at the same time as the activation peak), and the attention kernels' own scratch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A Qwen2/Qwen3 decoder shape (the numbers of its HF config)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qk_norm: bool = True  # Qwen3: per-head RMSNorm on q and k
    qkv_bias: bool = False  # Qwen2: biases on q, k, v

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


SHAPES = {
    "qwen3_8b": Shape(hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128,
                      intermediate=12288, vocab=151936, tied=False),
    "qwen3_1p7b": Shape(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128,
                        intermediate=6144, vocab=151936, tied=True),
    "qwen25_7b": Shape(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128,
                       intermediate=18944, vocab=152064, tied=False, qk_norm=False, qkv_bias=True),
}


def attention_params(s: Shape) -> int:
    """One attention branch: q, k, v, o projections (+ biases, + QK-norm weights)."""
    n = s.hidden * s.q_width * 2 + s.hidden * s.kv_width * 2
    if s.qkv_bias:
        n += s.q_width + 2 * s.kv_width
    if s.qk_norm:
        n += 2 * s.head_dim
    return n


def param_counts(s: Shape, variant: str) -> tuple[int, int]:
    """(total, trainable) parameters. Trainable: the attention branches, the router and every
    norm (l2a.trainable); frozen: MLPs, embeddings, LM head."""
    attn = attention_params(s) * (2 if variant == "l2a" else 1)
    norms = 2 * s.hidden + (s.hidden if variant == "l2a" else 0)  # input, post (+ global)
    router = s.hidden if variant == "l2a" else 0
    mlp = 3 * s.hidden * s.intermediate
    per_layer_trainable = attn + norms + router
    trainable = s.layers * per_layer_trainable + s.hidden  # + the final norm
    frozen = s.layers * mlp + s.vocab * s.hidden * (1 if s.tied else 2)
    return trainable + frozen, trainable


def layer_saved_bytes_per_token(s: Shape, variant: str, tiled_mlp_shards: int = 1,
                                norms: str | None = None, router_copy: bool = False,
                                zero3_linear: bool = False,
                                branch_output_kept: bool = False) -> float:
    """Bytes per token that one recomputed decoder layer saves for its backward (bf16
    activations, h = hidden, q = heads * head_dim, k = kv_heads * head_dim, I = intermediate).
    The MLP is frozen, so its projections save no input; the attention projections are
    trained and save theirs.

    norms: ``hf`` (transformers' RMSNorm: saves an fp32 copy of its input and the bf16
    normalised tensor; the dense baseline) or ``lean`` (l2a/rmsnorm.py: saves its input only;
    the L2A model). Default: ``lean`` for l2a, ``hf`` for dense.

    One attention branch with its norm:
      hf:   norm 4h (fp32 input) + 2h (normed) + 2h (output, the projections' input);
            q: QK-norm 4q + 2q, after RoPE 2q; k the same with k; v 2k; attention output
            2q; o_proj input 2q                           -> 8h + 12q + 10k
      lean: norm output 2h (its input is the layer input, already kept as the checkpoint);
            q: before QK-norm 2q, after RoPE 2q; k likewise; v, output, o_proj input as
            above                                         -> 2h + 8q + 6k
      (Qwen2, no QK-norm: q and k only after RoPE: 6q + 4k in both cases.)
    Post-attention norm: hf 4h + 2h, lean 2h (its input). MLP (down(silu(gate) * up)):
    gate, silu(gate), up = 3 * 2I; tiled: its input 2h only (one shard's tensors exist
    in the backward only: see ``predict``'s transient).
    zero3_linear: under ZeRO-3 DeepSpeed replaces ``F.linear`` process-wide by its
    ``LinearFunctionForZeroStage3`` (``memory_efficient_linear``, on by default), which saves
    a linear's input even when the weight is frozen: the untiled MLP then also keeps its
    input 2h and down_proj's input 2I (a tiled MLP recomputes those per shard).
    L2A adds the global branch: as a branch, plus (lean) its norm's input 2h, (router_copy:
    before l2a/router_logit.py) an fp32 copy of the router input 4h, and
    (branch_output_kept: before l2a/gated_output.py) the branch output kept for the gate's
    gradient 2h.
    """
    norms = norms or ("lean" if variant == "l2a" else "hf")
    if norms not in ("hf", "lean"):
        raise ValueError(f"norms: must be hf or lean, got {norms!r}")
    h, q, k, inter = s.hidden, s.q_width, s.kv_width, s.intermediate
    lean = norms == "lean"
    if s.qk_norm:
        qk = (8 * q + 6 * k) if lean else (12 * q + 10 * k)
    else:
        qk = 6 * q + 4 * k
    branch = (2 * h if lean else 8 * h) + qk
    post_norm = 2 * h if lean else 6 * h
    if tiled_mlp_shards <= 1:
        mlp = 6 * inter + ((2 * h + 2 * inter) if zero3_linear else 0)
    else:
        mlp = 2 * h
    total = branch + post_norm + mlp
    if variant == "l2a":
        total += (branch + (2 * h if lean else 0) + (4 * h if router_copy else 0)
                  + (2 * h if branch_output_kept else 0))
    return total


@dataclass
class Breakdown:
    params: float
    grads: float
    optimizer_states: float
    zero_buffers: float
    checkpointed_inputs: float
    layer_saved: float
    backward_transient: float
    loss: float

    @property
    def static(self) -> float:
        return self.params + self.grads + self.optimizer_states

    @property
    def activations(self) -> float:
        """Peak minus parameters, gradients and optimizer states (the issue's definition;
        the ZeRO buffers count here, as they do in a measured peak)."""
        return self.peak - self.static

    @property
    def peak(self) -> float:
        # The loss's buffers are gone before the first layer's backward; the layer phase
        # (checkpoints + one recomputed layer + its gradients) is the larger one at long
        # sequences, the loss phase (checkpoints + logits chunk) at short ones.
        layer_phase = self.checkpointed_inputs + self.layer_saved + self.backward_transient
        loss_phase = self.checkpointed_inputs + self.loss
        return self.static + self.zero_buffers + max(layer_phase, loss_phase)

    def gib(self) -> dict:
        d = {k: round(v / GIB, 2) for k, v in asdict(self).items()}
        d.update(static=round(self.static / GIB, 2), activations=round(self.activations / GIB, 2),
                 peak=round(self.peak / GIB, 2))
        return d


def predict(
    shape: Shape | str,
    variant: str,
    seq_len: int,
    world: int,
    sp: int = 1,
    zero_stage: int = 3,
    micro_batch: int = 1,
    tiled_mlp_shards: int = 1,
    offload_checkpoints: bool = False,
    norms: str | None = None,
    router_copy: bool = False,
    branch_output_kept: bool = False,
    precision: str = "bf16",
    loss_chunk: int = 4096,
    reduce_bucket: int = 500_000_000,
    prefetch_bucket: int = 50_000_000,
) -> Breakdown:
    """Peak memory per GPU (bytes) of one training step, split into its parts."""
    s = SHAPES[shape] if isinstance(shape, str) else shape
    if variant not in ("l2a", "dense"):
        raise ValueError(f"variant: must be l2a or dense, got {variant!r}")
    if world % sp or seq_len % sp:
        raise ValueError(f"sp ({sp}) must divide world ({world}) and seq_len ({seq_len})")
    total, trainable = param_counts(s, variant)
    t = micro_batch * seq_len // sp
    shard_params = world if zero_stage == 3 else 1
    shard_grads = world if zero_stage >= 2 else 1
    shard_states = world if zero_stage >= 1 else 1
    # bf16: bf16 parameters and gradients, fp32 master weights + two Adam moments (12 B);
    # fp32: the parameters are their own master weights (4 B), gradients 4 B, moments 8 B.
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision: must be bf16 or fp32, got {precision!r}")
    pbytes = 2 if precision == "bf16" else 4
    params = pbytes * total / shard_params
    grads = pbytes * trainable / shard_grads
    states = (12 if precision == "bf16" else 8) * trainable / shard_states
    mlp = 3 * s.hidden * s.intermediate
    one_layer = (attention_params(s) * (2 if variant == "l2a" else 1) + mlp) * 2
    buffers = 2 * reduce_bucket + ((one_layer + 2 * prefetch_bucket) if zero_stage == 3 else 0)
    checkpoints = 0.0 if offload_checkpoints else s.layers * 2 * s.hidden * t
    saved = layer_saved_bytes_per_token(s, variant, tiled_mlp_shards, norms, router_copy,
                                        zero3_linear=zero_stage == 3,
                                        branch_output_kept=branch_output_kept) * t
    shards = max(tiled_mlp_shards, 1)
    # Two stream-wide gradients (into and out of the op being differentiated), and, in the
    # MLP's backward, the gradients of two intermediate tensors; tiled: of one shard, plus
    # that shard's recomputed gate, silu(gate) and up.
    if shards > 1:
        transient = 2 * 2 * s.hidden * t + (2 + 3) * 2 * s.intermediate * t / shards
    else:
        transient = 2 * 2 * s.hidden * t + 2 * 2 * s.intermediate * t
    # The chunked loss: one chunk of fp32 logits and its bf16 gradient, the gradient of the
    # last hidden state (bf16) and the final norm's fp32 input and bf16 output.
    loss = loss_chunk * s.vocab * (4 + 2) + 2 * s.hidden * t + 6 * s.hidden * t
    return Breakdown(params, grads, states, buffers, checkpoints, saved, transient, loss)


def auto_shards(seq_len: int, sp: int, hidden: int) -> int:
    """The shard count of the measured runs below: ceil(tokens per rank / hidden), the rule
    `train.tiled_mlp=auto` had then (now train/memory.py's auto_tiled_mlp_shards)."""
    return max(1, math.ceil(seq_len / sp / hidden))


CASES = [
    # (label, shape, seq, world, sp, zero, tiled, offload); "before": the L2A layer with
    # transformers' RMSNorm and the router's fp32 input copy (the 114 / 89 GiB runs).
    ("2x H200, SP=1, before", "qwen3_8b", 131072, 2, 1, 3, False, False),
    ("2x H200, SP=1", "qwen3_8b", 131072, 2, 1, 3, False, False),
    ("2x H200, SP=1, tiled MLP", "qwen3_8b", 131072, 2, 1, 3, True, False),
    ("2x H200, SP=2", "qwen3_8b", 131072, 2, 2, 3, False, False),
    ("2x H200, SP=2, tiled MLP", "qwen3_8b", 131072, 2, 2, 3, True, False),
    ("2x H200, SP=2, tiled MLP + offload", "qwen3_8b", 131072, 2, 2, 3, True, True),
    ("8x H100, SP=8", "qwen3_8b", 131072, 8, 8, 3, False, False),
    ("8x H100, SP=8, tiled MLP", "qwen3_8b", 131072, 8, 8, 3, True, False),
]


# Measured on 2x H200 (bench.train_throughput, Qwen3-8B shape, ZeRO-3, bf16, activation
# checkpointing, train.tiled_mlp=auto, SP=2; docs/BENCHMARKS.md): (variant, seq_len, peak
# GiB, activations GiB = peak - memory resident between steps, the L2A build kept the
# global branch's output for backward, results JSON). Dense's 128K run is left out: its
# resident memory included the preceding L2A run's.
MEASURED_SP2 = [
    ("l2a", 131072, 60.3, 29.6, True, "H200-x2-sp2-128k-qwen3-8b-tiled-2026-11-30.json"),
    ("l2a", 393216, 103.1, 72.5, True, "H200-x2-sp2-384k-qwen3-8b-l2a-probe-2026-11-30.json"),
    ("l2a", 524288, 130.47, 99.8, True, "H200-x2-sp2-512k-qwen3-8b-l2a-probe-2026-11-30.json"),
    ("dense", 262144, 75.4, 56.0, False, "H200-x2-sp2-256k-qwen3-8b-dense-probe-2026-11-30.json"),
    ("dense", 393216, 105.54, 86.14, False, "H200-x2-sp2-384k-qwen3-8b-dense-probe-2026-11-30.json"),
    ("l2a", 524288, 129.16, 98.49, False,
     "H200-x2-sp2-512k-qwen3-8b-l2a-probe-gated-2026-11-30.json"),
    # bench.memory_breakdown, one process per variant's engine in turn (the ZeRO-3 release
    # fixed), the gated o_proj: peak of a normal step, activations above the allocated
    # memory at its start.
    ("l2a", 131072, 59.78, 29.12, False, "H200-x2-sp2-128k-qwen3-8b-memory-breakdown-2026-11-30.json"),
    ("dense", 131072, 51.84, 31.95, False,
     "H200-x2-sp2-128k-qwen3-8b-memory-breakdown-2026-11-30.json"),
]

# Runs that ran out of memory on the 139.8 GiB card: (variant, seq_len, GiB allocated when
# the failing request came + that request = the least the step needed, results JSON).
OUT_OF_MEMORY_SP2 = [
    ("dense", 524288, 131.72 + 4.0, "H200-x2-sp2-512k-qwen3-8b-dense-probe-2026-11-30.json"),
]


def checks() -> list[dict]:
    """The measured SP=2 runs beside the model's prediction for the same build, and the
    runs that ran out of memory (measured_peak None, `needed_at_least` the GiB the failing
    step had asked for when it failed)."""
    rows = []
    points = [(v, n, peak, act, kept, None) for v, n, peak, act, kept, _ in MEASURED_SP2]
    points += [(v, n, None, None, False, least) for v, n, least, _ in OUT_OF_MEMORY_SP2]
    for variant, seq, peak, act, kept, least in points:
        s = SHAPES["qwen3_8b"]
        b = predict("qwen3_8b", variant, seq, world=2, sp=2, zero_stage=3,
                    tiled_mlp_shards=auto_shards(seq, 2, s.hidden), branch_output_kept=kept)
        rows.append({"variant": variant, "seq_len": seq, "branch_output_kept": kept,
                     "measured_peak": peak, "needed_at_least": least,
                     "predicted_peak": round(b.peak / GIB, 2),
                     "measured_activations": act,
                     "predicted_activations": round(b.activations / GIB, 2)})
    return rows


def table() -> list[dict]:
    rows = []
    for label, shape, seq, world, sp, zero, tiled, offload in CASES:
        s = SHAPES[shape]
        shards = auto_shards(seq, sp, s.hidden) if tiled else 1
        before = label.endswith("before")
        for variant in ("l2a", "dense"):
            b = predict(shape, variant, seq, world, sp, zero, tiled_mlp_shards=shards,
                        offload_checkpoints=offload, norms="hf" if before else None,
                        router_copy=before and variant == "l2a", branch_output_kept=before)
            rows.append({"case": label, "variant": variant, "shape": shape, "seq_len": seq,
                         "world": world, "sp": sp, "zero": zero, "tiled_mlp_shards": shards,
                         "offload_checkpoints": offload, **b.gib()})
    return rows
