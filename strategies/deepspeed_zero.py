"""DeepSpeed ZeRO-1/2/3 model states and its own buffers at DeepSpeed's default config values.

ZeRO-1/2 follow DeepSpeed 0.19.8's `deepspeed/runtime/zero/stage_1_and_2.py` (DeepSpeedZeroOptimizer)
allocation by allocation, for one optimizer parameter group, no offload, DeepSpeed's defaults
(contiguous_gradients on, overlap_comm off below stage 3, round_robin_gradients and
parameter_alignment off, grad_accum_dtype unset so gradients stay in the model dtype), and measured
on this machine (gloo, CPU, 2 ranks, fp32 and bf16; benchmarks/results/executor.md):

* `bf16.enabled` casts the model to bf16 (no autocast); `model_bytes` below is 2 then, else 4.
* Line numbers cite stage_1_and_2.py unless another file is named.

ZeRO-0/3 and optimizer offload keep the DeepSpeed memory.rst formulas (not measured).
"""

from __future__ import annotations

VERIFIED = False  # ZeRO-1/2 without offload are measured (tests/test_executor.py); ZeRO-3 and offload are not

REDUCE_BUCKET_SIZE = 500_000_000
"""zero_optimization.reduce_bucket_size default (elements; zero/config.py:113)."""
ALLGATHER_BUCKET_SIZE = 500_000_000
"""zero_optimization.allgather_bucket_size default (elements; zero/config.py:132). ZeRO-1/2 all-gather
the updated partitions in place into the flat parameters (runtime/utils.py:1008), so it allocates nothing."""
STAGE3_PREFETCH_BUCKET_SIZE = 50_000_000
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_PARAM_PERSISTENCE_THRESHOLD = 100_000

NCCL_START_ALIGNMENT_FACTOR = 2
"""`self.nccl_start_alignment_factor = 2` (line 387): partitions start 4-byte aligned in 16-bit."""
FP32 = 4
SCALAR = 4
"""A 0-dim fp32 tensor: AdamW's `step`, and DeepSpeed's `_global_grad_norm` (step(), line 3071)."""


# ----------------------------------------------------------------------------------------- ZeRO-1/2
def flat_numel(numel: int, world: int) -> int:
    """Elements of the flat 16-bit (or fp32) parameter group: the trainable parameters flattened and
    zero-padded to a multiple of nccl_start_alignment_factor * world (lines 441-446, and
    flatten_dense_tensors_aligned, line 1390 -> runtime/utils.py:994 align_dense_tensors)."""
    alignment = NCCL_START_ALIGNMENT_FACTOR * world
    return -(-numel // alignment) * alignment


def partition_numel(numel: int, world: int) -> int:
    """Elements of one rank's partition: the flat group in `world` equal parts
    (get_data_parallel_partitions, line 2559; partition_size, line 586)."""
    return flat_numel(numel, world) // world


def partition_param_numels(numels: list[int], world: int, rank: int) -> list[int]:
    """Whole sizes of the parameters (in model.parameters() order) that start inside `rank`'s
    partition or straddle its start: `params_in_partition` (get_partition_info, line 2579)."""
    size = partition_numel(sum(numels), world)
    start, end = size * rank, size * (rank + 1)
    out, at = [], 0
    for n in numels:
        if start <= at < end or at < start < at + n:
            out.append(n)
        at += n
    return out


def gradient_partition_numel(numels: list[int], world: int, rank: int) -> int:
    """Elements of `grads_in_partition`: one buffer as large as every parameter in the partition,
    whole (copy_grads_in_partition, lines 2186-2194; ZeRO-1 and ZeRO-2 both take this path with
    contiguous gradients, lines 2270-2274). Alive from the first reduction to the optimizer step."""
    return sum(partition_param_numels(numels, world, rank))


def gradient_pad_numel(numels: list[int], world: int, rank: int) -> int:
    """Zeros that complete `averaged_gradients` where no parameter covers the partition (the last
    rank's alignment padding; get_flat_partition, lines 2726 and 2891)."""
    size = partition_numel(sum(numels), world)
    start = size * rank
    covered = max(0, min(start + size, sum(numels)) - start)
    return size - covered


def zero12_state_bytes(numels: list[int], world: int, rank: int, model_bytes: int,
                       optimizer: str = "adamw") -> dict[str, int]:
    """Per-rank bytes of what ZeRO-1/2 keep between steps, and their gradient buffers.

    parameters: the flat model-dtype group every parameter is a view of (bit16_groups_flat, lines
      505-524; _update_model_bit16_weights, line 889), replicated on every rank.
    optimizer_states: the rank's fp32 master partition, a copy even for an fp32 model
      (`.detach().clone().to(fp32)`, line 560), the torch optimizer's states on it (AdamW: exp_avg and
      exp_avg_sq of the partition, and its 0-dim fp32 `step`; SGD: the momentum buffer) and
      DeepSpeed's last global gradient norm (0-dim fp32, line 3071).
    gradients: what holds the rank's gradients from the end of the backward to the optimizer step:
      grads_in_partition in the model dtype plus the zero padding of `averaged_gradients`.
    """
    part = partition_numel(sum(numels), world)
    states = (2 * part * FP32 + SCALAR) if optimizer == "adamw" else part * FP32
    return {"parameters": flat_numel(sum(numels), world) * model_bytes,
            "gradients": (gradient_partition_numel(numels, world, rank) + gradient_pad_numel(numels, world, rank))
            * model_bytes,
            "optimizer_states": part * FP32 + states + SCALAR}


def bucket_bytes(model_bytes: int, overlap_comm: bool = False) -> int:
    """The contiguous-gradient reduce bucket: `torch.empty(reduce_bucket_size)` in the gradient
    dtype (the model dtype; setup_buckets, lines 3256-3280), made at the first gradient hook of a
    backward whatever the model's size (process_gradients, line 2284; ZeRO-1 too), freed at the end
    of that backward (_release_ipg_buffers, line 924, from the epilogue, line 1061). A second one
    with overlap_comm (default off below stage 3, zero/config.py:384). Measured on this machine:
    2,000,000,000 B in fp32, 1,000,000,000 B in bf16."""
    return REDUCE_BUCKET_SIZE * model_bytes * (2 if overlap_comm else 1)


def reduction_bytes(numel: int, model_bytes: int) -> int:
    """Beyond the bucket while it is reduced: allreduce_bucket flattens the bucket's gradients into a
    new tensor (line 2367; from allreduce_and_scatter, line 1545, with the default
    use_multi_rank_bucket_allreduce). Under ZeRO-1 the same bytes are the unreduced param.grad
    tensors at the start of reduce_gradients (line 958)."""
    return min(numel, REDUCE_BUCKET_SIZE) * model_bytes


def step_moment(numels: list[int], world: int, rank: int, model_bytes: int,
                optimizer: str = "adamw") -> dict[str, int]:
    """Beyond the states, the worst moment of DeepSpeed's optimizer step (step(), lines 3013-3169),
    the larger of:
    (a) gradients: grads_in_partition and the padding (`averaged_gradients`), next to temporaries:
        their flatten in the model dtype (line 3117) and, for a 16-bit model, its fp32 copy (line 3118);
    (b) after grads_in_partition is freed (line 3131): the fp32 gradient partition and, for AdamW
        (torch's single-tensor path, foreach=False), its two partition-sized temporaries
        (`exp_avg_sq.sqrt()` and its division by the bias correction). SGD updates in place.
    The bucket is gone by then (freed at the end of the backward)."""
    part = partition_numel(sum(numels), world)
    held = (gradient_partition_numel(numels, world, rank) + gradient_pad_numel(numels, world, rank)) * model_bytes
    flatten = {"gradients": held, "temporaries": part * model_bytes + (part * FP32 if model_bytes != FP32 else 0)}
    update = {"gradients": part * FP32, "temporaries": part * FP32 * (2 if optimizer == "adamw" else 0)}
    return max(flatten, update, key=lambda m: sum(m.values()))


# ----------------------------------------------------------------------------------------- ZeRO-0/3
def model_state_bytes(params: int, world: int, stage: int, offload: str, mixed: bool) -> dict[str, int]:
    """Per-rank device bytes of model states (the DeepSpeed memory.rst formulas; ZeRO-0/3 and offload).

    Mixed precision: 2 B fp16/bf16 weights + 2 B grads + 12 B fp32 master, momentum, variance.
    ZeRO-1 shards the 12 B; ZeRO-2 also the gradients; ZeRO-3 also the 16-bit weights.
    """
    weight_b, grad_b, opt_b = (2, 2, 12) if mixed else (4, 4, 8)
    shard = lambda n: -(-n // world)  # noqa: E731
    weights = shard(params) * weight_b if stage >= 3 else params * weight_b
    grads = shard(params) * grad_b if stage >= 2 else params * grad_b
    optim = shard(params) * opt_b if stage >= 1 else params * opt_b
    if offload in ("optimizer", "all"):
        optim = 0
    if offload in ("params", "all") and stage == 3:
        weights = 0
    return {"parameters": weights, "gradients": grads, "optimizer_states": optim}


def buffer_bytes(params: int, stage: int, largest_layer_params: int, mixed: bool) -> int:
    """DeepSpeed's communication buffers at defaults.

    Stage 1/2: the reduce bucket (`bucket_bytes`). Stage 3: prefetch + live-parameter limits (not measured)."""
    elem = 2 if mixed else 4
    if stage in (1, 2):
        return bucket_bytes(elem)
    if stage == 3:
        live = min(params, max(largest_layer_params, STAGE3_PREFETCH_BUCKET_SIZE))
        return live * elem + min(params, REDUCE_BUCKET_SIZE) * elem
    return 0
