"""bench.kernel_categories: one classification for the training and prefill profiles, on
kernel names as the CUDA profiler reports them on an H200 (cuBLAS, cuDNN, NCCL, PyTorch,
FlashAttention-4, our Triton kernels) and CPU operator names."""

from bench.kernel_categories import CATEGORIES, kernel_category

NAMES = {
    # ZeRO-3's gathers and reductions and Ulysses' all-to-all
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
    "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
    "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)": "communication",
    "c10d::allgather_": "communication",
    "attn_bwd_dkdv_kernel": "attention",
    "attn_fwd_kernel": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1": "attention",
    "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90": "attention",
    "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT": "matmul",
    "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN": "matmul",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1": "matmul",
    "aten::mm": "matmul",
    "Memcpy DtoD (Device -> Device)": "copy_index",
    "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<"
    "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)": "copy_index",
    "void at::native::_scatter_gather_elementwise_kernel<128, 4>": "copy_index",
    "void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>": "copy_index",
    "void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add": "elementwise",
    "void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<"
    "c10::BFloat16, c10::BFloat16, c10::BFloat16, at::native::binary_internal::MulFunctor<float> > >": "elementwise",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>": "elementwise",
    "triton_poi_fused_add_mul_0": "elementwise",
    "void at::cuda::cub::DeviceScanKernel<...>": "other",
}


def test_real_kernel_names():
    assert {n: kernel_category(n) for n in NAMES} == NAMES
    assert set(NAMES.values()) == set(CATEGORIES)


def test_both_profiles_use_it():
    """The training profile and the prefill profile classify with this one function."""
    import bench.prefill_profile as prefill
    import bench.train_throughput as train

    assert prefill.kernel_category is kernel_category and prefill.CATEGORIES == CATEGORIES
    assert "kernel_category" not in vars(train)  # no second classifier there


def test_cuda_api_summary_keeps_the_api_calls_by_host_time():
    """The host side of a profiled step: only CUDA runtime / driver API calls, largest CPU
    time first, with their call counts; kernels (no CPU time) and operators are left out."""
    from types import SimpleNamespace as E

    from bench.kernel_categories import cuda_api_summary

    events = [E(key="cudaLaunchKernel", self_cpu_time_total=900_000.0, count=12000),
              E(key="attn_fwd_kernel", self_cpu_time_total=0.0, count=28),
              E(key="cudaStreamSynchronize", self_cpu_time_total=2_500_000.0, count=112),
              E(key="cuLaunchKernelEx", self_cpu_time_total=400_000.0, count=168),
              E(key="aten::mm", self_cpu_time_total=50_000.0, count=300)]
    got = cuda_api_summary(events, top=2)
    assert list(got["cpu_ms"]) == ["cudaStreamSynchronize", "cudaLaunchKernel"]
    assert got["cpu_ms"]["cudaStreamSynchronize"] == 2500.0
    assert got["calls"] == {"cudaStreamSynchronize": 112, "cudaLaunchKernel": 12000}
