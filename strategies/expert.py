"""Expert parallelism for MoE: experts split over EP ranks; all-to-all token exchange."""

from __future__ import annotations

from sharder.errors import SharderInputError

VERIFIED = False  # the referee does not simulate MoE routing yet (data-dependent shapes)


def validate(num_experts: int, ep: int, ranks_per_stage: int) -> None:
    if ep == 1:
        return
    if not num_experts:
        raise SharderInputError("--ep needs a mixture-of-experts model (this model has no experts)")
    if num_experts % ep:
        raise SharderInputError(f"--ep {ep} must divide the model's {num_experts} experts")
    if ranks_per_stage % ep:
        raise SharderInputError(f"--ep {ep} must divide dp × tp = {ranks_per_stage}")


def tokens_per_expert(tokens: int, experts_per_token: int, num_experts: int) -> int:
    """Tokens routed to one expert under uniform routing (capacity factor 1)."""
    return -(-tokens * experts_per_token // num_experts)


def all_to_all_bytes(tokens: int, hidden: int, experts_per_token: int, act_bytes: int, ep: int) -> int:
    if ep == 1:
        return 0
    return int(2 * tokens * experts_per_token * hidden * act_bytes * (ep - 1) / ep)
