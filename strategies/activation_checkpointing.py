"""Activation checkpointing (checkpoint_wrapper per decoder layer): what a layer keeps for backward."""

from __future__ import annotations

VERIFIED = True


def saved_per_layer(full_saved: int, layer_input: int, mode: str) -> int:
    """Bytes a decoder layer keeps between forward and backward.

    none: everything autograd saves; full: only the layer's input (recomputed in backward);
    selective (torchtitan's op-level policy, every other matmul output kept): modelled as half way.
    """
    if mode == "full":
        return layer_input
    if mode == "selective":
        return layer_input + (full_saved - layer_input) // 2
    return full_saved


def recompute_extra(full_saved: int, layer_input: int, mode: str) -> int:
    """Bytes alive during one layer's backward because its forward is recomputed there (the
    recomputed tensors, less the input the checkpoint already keeps)."""
    return full_saved - layer_input if mode in ("full", "selective") else 0
