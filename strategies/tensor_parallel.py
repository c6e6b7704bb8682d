"""Tensor parallelism (DTensor colwise/rowwise): validity, local shapes and activation split."""

from __future__ import annotations

from sharder.errors import SharderInputError
from sharder.model_spec import ModelSpec

VERIFIED = True


def validate(model: ModelSpec, tp: int) -> None:
    """TP must divide heads, KV heads and the FFN size (per-head shards); fused projections need a plan."""
    if tp == 1:
        return
    bad = [f"{name} {value}" for name, value in (
        ("attention heads", model.num_heads), ("KV heads", model.num_kv_heads),
        ("FFN size", model.intermediate_size)) if value % tp]
    if bad:
        raise SharderInputError(
            f"--tp {tp} must divide the model's {', '.join(bad)}; choose a TP degree that divides "
            f"{model.num_heads} heads and {model.num_kv_heads} KV heads")
    if model.fused_qkv or model.fused_gate_up:
        raise SharderInputError(
            f"{model.name} has fused projections (qkv_proj/gate_up_proj): a column shard of a fused "
            f"projection is not a per-head shard; use --tp 1 with FSDP or pipeline parallelism")


def local_rows(size: int, tp: int, tp_index: int = 0) -> int:
    """Rows a rank holds of a dim split by torch.chunk (DTensor Shard): ceil chunks, the last may be short."""
    chunk = -(-size // tp)
    return max(0, min(chunk, size - tp_index * chunk))


def comm_bytes_per_layer(tokens: int, hidden: int, act_bytes: int, tp: int, training: bool) -> int:
    """Bytes one rank sends per decoder layer: two all-reduces forward (attention, MLP), two backward."""
    if tp == 1:
        return 0
    ring = 2 * (tp - 1) / tp
    calls = 4 if training else 2
    return int(calls * ring * tokens * hidden * act_bytes)
