"""Where a prefill's GPU time goes: `torch.profiler` over one prefill forward, kernel time
summed per category and the longest kernels listed (`bench.inference --profile-prefill`).

Categories: `bench.kernel_categories` (communication, attention, matmul, copy_index,
elementwise, other), the same as the training profile's.

On the CPU (the smoke run) there are no kernels: the CPU operators' self time stands in,
with the same categories (`aten::mm` is a matmul there).
"""

from __future__ import annotations

import contextlib
import time

import torch

from bench.kernel_categories import CATEGORIES, kernel_category


def summarise(rows: list[tuple[str, int, float]], top: int = 25) -> dict:
    """``rows``: (kernel name, calls, total microseconds) -> milliseconds per category,
    their share of the total, and the ``top`` longest kernels."""
    per = dict.fromkeys(CATEGORIES, 0.0)
    for name, _, us in rows:
        per[kernel_category(name)] += us / 1000
    total = sum(per.values())
    longest = sorted(rows, key=lambda r: -r[2])[:top]
    return {
        "kernel_ms_total": round(total, 3),
        "kernel_ms": {c: round(ms, 3) for c, ms in per.items()},
        "kernel_share": {c: round(ms / total, 4) if total else 0.0 for c, ms in per.items()},
        "top_kernels": [
            {
                "name": name[:240],
                "category": kernel_category(name),
                "calls": calls,
                "ms": round(us / 1000, 3),
                "share": round(us / 1000 / total, 4) if total else 0.0,
            }
            for name, calls, us in longest
        ],
    }


def _kernel_rows(prof, on_gpu: bool) -> list[tuple[str, int, float]]:
    """(name, calls, microseconds): CUDA kernels on a GPU, CPU operators' self time else."""
    from torch.autograd import DeviceType

    rows = []
    for evt in prof.key_averages():
        if on_gpu:
            if evt.device_type != DeviceType.CUDA:
                continue
            us = evt.device_time_total
        else:
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append((evt.key, evt.count, float(us)))
    return rows


@torch.no_grad()
def profile_prefill(model, make_cache, length: int, device, context=None, warm: bool = True,
                    seed: int = 0, top: int = 25) -> dict:
    """One unprofiled prefill of ``length`` tokens (unless ``warm`` is False: the caller ran
    one just now), then one under the profiler; ``context`` wraps both (as the timed runs)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(device)

    def prefill():
        cache = make_cache(model)
        with context() if context else contextlib.nullcontext():
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        del out, cache

    if warm:
        prefill()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    if on_gpu:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        prefill()
        if on_gpu:
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    result = {"length": length, "profiled_wall_s": round(wall, 4),
              "timing": "CUDA kernels" if on_gpu else "CPU operators (self time)"}
    result.update(summarise(_kernel_rows(prof, on_gpu), top))
    return result
