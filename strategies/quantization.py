"""Weight quantization of frozen weights (int8, nf4/int4 with per-block constants), bitsandbytes layout."""

from __future__ import annotations

VERIFIED = False  # quantized kernels are not simulated on CPU

BLOCK = 64
"""bitsandbytes 4-bit block size: one absmax constant per 64 weights."""


def quantized_bytes(numel: int, quant: str, double_quant: bool = True) -> int:
    """Bytes of one quantized Linear weight.

    int8 (LLM.int8): 1 B per weight + one fp32 scale per output row (approximated as numel/4096 rows).
    nf4/int4: 0.5 B per weight + constants: fp32 absmax per 64 weights, or with double quantization
    an int8 absmax per 64 plus fp32 constants per 256 blocks.
    """
    if quant == "int8":
        return numel + 4 * max(1, numel // 4096)
    if quant in ("nf4", "int4"):
        blocks = -(-numel // BLOCK)
        constants = (blocks + 4 * -(-blocks // 256)) if double_quant else 4 * blocks
        return -(-numel // 2) + constants
    raise ValueError(quant)


def dequant_temp_bytes(largest_weight_numel: int, compute_bytes: int) -> int:
    """A 4-bit matmul dequantizes one weight to the compute dtype at a time."""
    return largest_weight_numel * compute_bytes
