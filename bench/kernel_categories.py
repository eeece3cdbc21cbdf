"""One classification of GPU kernels (or, on the CPU, operators) by name, for every profile
the benchmarks take: training steps (`bench.train_throughput --profile`) and prefills
(`bench.inference --profile-prefill`).

Categories, first match wins, in this order:

- communication: NCCL kernels (all-gather, reduce-scatter, all-reduce, all-to-all of ZeRO
  and Ulysses) and the c10d operators that stand for them on the CPU;
- attention: SDPA / cuDNN / FlashAttention / FlexAttention kernels and our Triton attention
  kernels (`attn_fwd_kernel`, ...);
- matmul: cuBLAS / CUTLASS GEMMs (`gemm`, `nvjet`, `xmma`, `cutlass`, ...);
- copy_index: copies, casts done by the copy kernel, cat, gather / scatter / index, fills
  and memsets;
- elementwise: the other elementwise and reduction kernels (norms, RoPE, SiLU, adds, the
  router's logit, Inductor's `triton_poi` / `triton_red`);
- other: the rest (cumsum, sort, ...).

Result files written before this module (train profiles of 2026-11-27) name communication
`nccl` and put copies and elementwise kernels together under `other`.
"""

from __future__ import annotations

CATEGORIES = ("communication", "attention", "matmul", "copy_index", "elementwise", "other")

_PATTERNS = (
    ("communication", ("nccl", "c10d::", "allgather", "all_gather", "reducescatter",
                       "reduce_scatter", "allreduce", "all_reduce", "alltoall", "all_to_all",
                       "sendrecv")),
    ("attention", ("attn", "attention", "flash", "fmha", "sdpa", "softmax")),
    ("matmul", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "cublas", "matmul",
                "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("copy_index", ("copy", "memcpy", "memset", "cat", "gather", "scatter", "index",
                    "fill", "take", "clone", "contiguous")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce", "triton_poi",
                     "triton_red", "triton_per", "aten::")),
)


def kernel_category(name: str) -> str:
    """The category of a kernel (or a CPU operator) by its name."""
    low = name.lower()
    for category, needles in _PATTERNS:
        if any(n in low for n in needles):
            return category
    return "other"


def cuda_api_summary(events, top: int = 8) -> dict:
    """The host side of a profiled step: CPU time and call count of the CUDA runtime / driver
    API calls a CUDA-only torch.profiler records (`cudaLaunchKernel`, `cuLaunchKernelEx`,
    `cudaStreamSynchronize`, `cudaMemcpyAsync`, ...), the `top` by CPU time. A step whose wall
    time is well above its kernel time is host-bound; these say where the host time went:
    launches (many small kernels, a slow launch path) or waits (`...Synchronize`, blocking
    copies: a host sync per routed count or document list). `events`: `key_averages()`."""
    rows = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events
            if e.key.startswith("cu") and e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    return {"cpu_ms": {k: round(ms, 1) for k, ms, _ in rows[:top]},
            "calls": {k: n for k, _, n in rows[:top]}}
