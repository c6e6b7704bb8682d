"""Plain data parallel (DDP, --zero 0): every rank holds everything plus the gradient buckets."""

from __future__ import annotations

VERIFIED = True

BUCKET_CAP_BYTES = 25 * 1024 * 1024
"""DDP's default bucket_cap_mb."""


def ddp_bucket_bytes(trainable_grad_bytes: int, world: int) -> int:
    """DDP's reducer keeps flat buckets as large as all gradients together (gradient_as_bucket_view=False).
    A world of one still builds them."""
    return trainable_grad_bytes


def allreduce_bytes_per_step(grad_bytes: int, world: int) -> int:
    """Ring all-reduce: each rank sends 2 (W - 1) / W of the gradient bytes."""
    if world == 1:
        return 0
    return int(2 * (world - 1) / world * grad_bytes)
