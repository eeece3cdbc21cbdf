"""CPU-checkable parts of bench/train_throughput.py (the benchmark itself needs GPUs)."""

from __future__ import annotations

import torch

from bench.train_throughput import SyntheticPackedLoader, kernel_category


def test_kernel_categories_of_real_kernel_names():
    # Names as torch.profiler reports them on an H200 (bench/results/*-train-profile-*.txt).
    names = {
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl",
        "attn_bwd_dkdv_kernel": "attention",
        "attn_fwd_kernel": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128": (
            "attention"
        ),
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT": "matmul",
        "void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add": "other",
        "Memcpy DtoD (Device -> Device)": "other",
    }
    assert {n: kernel_category(n) for n in names} == names


def test_synthetic_loader_is_deterministic_and_packs_documents():
    a = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    b = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    other_rank = SyntheticPackedLoader(64, 2, 100, rank=0, seed=3, docs_per_row=3)
    first, again = next(a), next(b)
    for k in first:
        assert torch.equal(first[k], again[k])
    assert not torch.equal(first["input_ids"], next(other_rank)["input_ids"])
    pos, labels = first["position_ids"], first["labels"]
    for row in range(2):
        starts = (pos[row] == 0).nonzero().flatten().tolist()
        assert len(starts) == 3 and starts[0] == 0
        assert (labels[row, starts] == -100).all()
        assert (labels[row] != -100).sum() == 64 - 3
    # resume: the state of the loader reproduces the next batch
    state = a.state_dict()
    nxt = next(a)
    b2 = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    b2.load_state_dict(state)
    assert torch.equal(next(b2)["input_ids"], nxt["input_ids"])
