"""LoRA / QLoRA adapters: A (r × in) and B (out × r) per target Linear, trained; the base frozen."""

from __future__ import annotations

VERIFIED = True


def adapter_numel(in_features: int, out_features: int, rank: int) -> int:
    return rank * (in_features + out_features)


def adapter_activation_bytes_per_token(in_features: int, rank: int, act_bytes: int) -> int:
    """A LoRA branch saves its (dropout-free) input, shared with the base Linear, and A's output (r)."""
    return rank * act_bytes
