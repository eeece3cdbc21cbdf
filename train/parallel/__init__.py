"""Sequence parallelism (DeepSpeed-Ulysses), applied to the model from outside.

The package, bottom to top (each module imports only those above it in this list):
- `topology`: the validated layout of the ranks (`Topology`: world, SP and DP sizes and
  ranks; `TopologyError` for a size that cannot work) that the trainer reads;
- `comm`: the differentiable collectives (`gather_sequence`, the uneven all-to-all
  `exchange`);
- `groups`: DeepSpeed's SP process groups as the `mpu` of `deepspeed.initialize`;
- `shard`: a packed row -> this rank's slice, and the router's outputs of the whole row;
- `ulysses`, `routed`, `halo`: the attention cores (all-to-all over heads; the routed
  queries' uneven all-to-all; the local window's halo exchange);
- `apply`: wrapping a model's attention cores (L2A) or DeepSpeed's registration (dense).


`train.sequence_parallel=N` splits the ranks into groups of N consecutive ranks (DeepSpeed's
`parallel_state_sp`, passed to `deepspeed.initialize` as `mpu`). All ranks of a group read
the same packed row; each holds a contiguous 1/N slice of its tokens (`shard_batch`) and
runs embeddings, norms, MLPs, router, gate and loss on that slice only. Only the attention
core of every branch (`L2ABranchAttention.attention_core`) is wrapped (`apply_to_model`):
DeepSpeed's `UlyssesSPAttentionHF` all-to-alls q/k/v from (B, H, T/N, D) to (B, H/N, T, D),
the unchanged kernels run on whole sequences for H/N heads, and the output goes back to the
slice. KV heads are replicated when there are fewer than N (DeepSpeed's rule). The local
branch needs only the window before each query: by default it keeps the slice and gets the
window's keys and values from the ranks before it (`halo`).

With routed-only global projections (`l2a.routed_projections`) the global branch calls
`L2ABranchAttention.routed_attention_core` instead, on this rank's compacted routed queries
(a count that differs per rank): `routed.RoutedUlyssesCore` all-to-alls the keys and values as
above, sends every rank's query rows of a head group to the rank of that group (uneven
row counts), runs the original core on the whole row's routed queries for H/N heads and
sends the output rows back.

Gradients: DeepSpeed sums them over all ranks and divides by the data-parallel size
(world / N) under an SP mpu (`stage_1_and_2.py`, `stage3.py`: `div_(world / sp)`), so
the trainer normalises the LM loss by the data-parallel size, not the world size.
"""
