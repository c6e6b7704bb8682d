"""The strategy table: each strategy's module, the order the cost model applies them, and its referee status."""

from __future__ import annotations

from sharder.strategies import (activation_checkpointing, data_parallel, deepspeed_zero, expert, fsdp,
                                kv_cache, lora, offload, pipeline, quantization, tensor_parallel,
                                zero_redundancy)

# Applied in this order (see sharder.cost_model): shapes first, then which blocks a rank holds, then
# what is stored and trained, what is kept for backward, how states are sharded, what leaves the device.
ORDER = (
    ("tensor_parallel", tensor_parallel),
    ("expert", expert),
    ("pipeline", pipeline),
    ("quantization", quantization),
    ("lora", lora),
    ("activation_checkpointing", activation_checkpointing),
    ("data_parallel", data_parallel),
    ("zero_redundancy", zero_redundancy),
    ("fsdp", fsdp),
    ("deepspeed_zero", deepspeed_zero),
    ("offload", offload),
    ("kv_cache", kv_cache),
)
STRATEGIES = dict(ORDER)

CATEGORY_NAMES = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache",
                  "comm_buffers", "temporaries", "other")


def used_strategies(workload, par, model) -> list[str]:
    used = []
    if par.tp > 1:
        used.append("tensor_parallel")
    if par.ep > 1:
        used.append("expert")
    if par.pp > 1:
        used.append("pipeline")
    if workload.quant != "none":
        used.append("quantization")
    if workload.adapters:
        used.append("lora")
    if workload.ac != "none":
        used.append("activation_checkpointing")
    if par.framework == "deepspeed":
        used.append("deepspeed_zero")
    elif par.zero >= 2:
        used.append("fsdp")
    elif par.zero == 1:
        used.append("zero_redundancy")
    elif par.dp > 1:
        used.append("data_parallel")
    if par.offload != "none":
        used.append("offload")
    if not workload.training:
        used.append("kv_cache")
    return used


def verified_map(workload, par, model, gpu) -> dict[str, bool]:
    """Per category: True when a referee (sharder verify) checks it for this plan."""
    plan_ok = all(STRATEGIES[s].VERIFIED for s in used_strategies(workload, par, model))
    if model.is_moe or workload.ac == "selective":
        plan_ok = False
    out = {}
    for cat in CATEGORY_NAMES:
        ok = plan_ok
        if cat == "comm_buffers" and not gpu.is_cpu:
            ok = ok and par.world_size == 1
        out[cat] = ok
    return out


def unverified_parts(workload, par, model, gpu) -> list[str]:
    """Human-readable reasons a plan relies on something no referee checks."""
    parts = [s for s in used_strategies(workload, par, model) if not STRATEGIES[s].VERIFIED]
    if model.is_moe:
        parts.append("MoE routing (uniform routing assumed)")
    if workload.ac == "selective":
        parts.append("selective checkpointing")
    if par.offload != "none" and gpu.is_cpu:
        parts.append("offload on a CPU-only host")
    if not gpu.is_cpu:
        parts.append("GPU device constants (CUDA context, NCCL, fragmentation; not yet calibrated)")
    return parts
