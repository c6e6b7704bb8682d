"""Device constants the CPU referee cannot see: cuBLAS workspace, block rounding, CUDA context, NCCL, fragmentation.

Not yet calibrated on a GPU (no device was lent when this was written): the figures are PyTorch's and
NVIDIA's documented defaults, and every one is marked unverified in results.
"""

from __future__ import annotations

from sharder.hardware import GpuType, MiB

CUBLAS_WORKSPACE_HOPPER = 32 * MiB
"""PyTorch's default cuBLAS workspace on sm90+ (CUBLAS_WORKSPACE_CONFIG :4096:8), counted as allocated."""
CUBLAS_WORKSPACE_OLDER = 4096 * 1024 * 2 + 16 * 1024 * 8
"""Default ':4096:2:16:8' before Hopper."""
CUDA_CONTEXT = 500 * MiB
"""CUDA context and kernels loaded lazily: typically 300-600 MiB, not in torch's counters."""
NCCL_BUFFERS = 320 * MiB
"""NCCL channel buffers of one communicator on 8 GPUs (NCCL_BUFFSIZE 4 MiB × channels × peers)."""
FRAGMENTATION = 0.05
"""Caching-allocator slack over allocated bytes at the peak (reserved − allocated)."""
ROUNDING_PER_TENSOR = 256
"""Mean bytes lost to 512-byte rounding per live tensor."""
HOPPER_PLUS = ("H100", "H200", "B200", "GH200", "RTX5090")


def cublas_workspace(gpu: GpuType) -> int:
    if gpu.is_cpu or gpu.vendor != "nvidia":
        return 0
    return CUBLAS_WORKSPACE_HOPPER if gpu.name.upper().startswith(HOPPER_PLUS) else CUBLAS_WORKSPACE_OLDER


def allocated_and_reserved(tensor_bytes: int, gpu: GpuType, world_size: int,
                           breakdown: dict[str, int] | None = None) -> tuple[int, int]:
    """(peak_allocated_bytes, peak_reserved_bytes) from the tensor part. CPU ranks add nothing."""
    if gpu.is_cpu:
        return tensor_bytes, tensor_bytes
    live_tensors = 2000  # a few hundred parameters and saved tensors; rounding is small either way
    allocated = tensor_bytes + cublas_workspace(gpu) + live_tensors * ROUNDING_PER_TENSOR
    comm = NCCL_BUFFERS if world_size > 1 else 0
    reserved = int(allocated * (1 + FRAGMENTATION)) + CUDA_CONTEXT + comm
    return allocated, reserved
