"""DeepSpeed ZeRO-1/2/3 model states and its own buffers at DeepSpeed's default config values."""

from __future__ import annotations

VERIFIED = False  # DeepSpeed's buffers are modelled from its defaults, not measured by the referee

REDUCE_BUCKET_SIZE = 500_000_000
"""zero_optimization.reduce_bucket_size default (elements)."""
ALLGATHER_BUCKET_SIZE = 500_000_000
"""zero_optimization.allgather_bucket_size default (elements)."""
STAGE3_PREFETCH_BUCKET_SIZE = 50_000_000
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_PARAM_PERSISTENCE_THRESHOLD = 100_000


def model_state_bytes(params: int, world: int, stage: int, offload: str, mixed: bool) -> dict[str, int]:
    """Per-rank device bytes of model states (the DeepSpeed memory.rst formulas).

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

    Stage 1/2 (stage_1_and_2.py `setup_buckets`): with contiguous_gradients (default on) the first backward
    allocates the reduce bucket at the full reduce_bucket_size in the model's dtype, whatever the model's
    size (a second one only with overlap_comm, off by default below stage 3). Measured on this machine
    (DeepSpeed 0.19.8, gloo, fp32): 2,000,000,000 B on a 0.5 M-parameter model.
    Stage 3: prefetch + live-parameter limits (not measured)."""
    elem = 2 if mixed else 4
    if stage in (1, 2):
        return REDUCE_BUCKET_SIZE * elem
    if stage == 3:
        live = min(params, max(largest_layer_params, STAGE3_PREFETCH_BUCKET_SIZE))
        return live * elem + min(params, REDUCE_BUCKET_SIZE) * elem
    return 0
