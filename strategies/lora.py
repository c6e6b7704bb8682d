"""LoRA / QLoRA adapters: A (r × in) and B (out × r) per target Linear, trained; the base frozen."""

from __future__ import annotations

VERIFIED = True


MODULE_ROLES = {"qkv_proj": "q_proj", "query_key_value": "q_proj", "W_pack": "q_proj", "dense": "o_proj",
                "gate_up_proj": "gate_proj", "dense_h_to_4h": "up_proj", "dense_4h_to_h": "down_proj"}
"""transformers module names of fused or renamed Linears -> the --lora-targets name they answer to (the
same mapping sharder.param_layout uses: a fused qkv answers to q_proj, a fused gate_up to gate_proj)."""


def is_target(module_name: str, targets) -> bool:
    return module_name in targets or MODULE_ROLES.get(module_name) in targets


def adapter_numel(in_features: int, out_features: int, rank: int) -> int:
    return rank * (in_features + out_features)


def adapter_activation_bytes_per_token(in_features: int, rank: int, act_bytes: int) -> int:
    """A LoRA branch saves its (dropout-free) input, shared with the base Linear, and A's output (r)."""
    return rank * act_bytes
