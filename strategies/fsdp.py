"""FSDP2 (fully_shard): dim-0 sharding with padding, unsharded layers in flight, all-gather/reduce-scatter buffers."""

from __future__ import annotations

VERIFIED = True


def padded_shard_numel(shape: tuple[int, ...], world: int) -> int:
    """Elements of one rank's padded shard: FSDP2 pads dim 0 to a multiple of the shard degree."""
    rest = 1
    for d in shape[1:]:
        rest *= d
    return -(-shape[0] // world) * rest


def local_shard_numel(shape: tuple[int, ...], world: int, index: int) -> int:
    """Elements of the unpadded shard a rank owns (torch.chunk on dim 0): what optimizer states mirror."""
    rest = 1
    for d in shape[1:]:
        rest *= d
    chunk = -(-shape[0] // world)
    rows = max(0, min(chunk, shape[0] - index * chunk))
    return rows * rest


def unsharded_group_bytes(shapes: list[tuple[int, ...]], compute_bytes: int) -> int:
    """An all-gathered parameter group in the compute dtype (unpadded views)."""
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total * compute_bytes


def all_gather_buffer_bytes(shapes: list[tuple[int, ...]], world: int, compute_bytes: int) -> int:
    """The flat all-gather output of a group: padded shards × world, in the compute dtype."""
    return sum(padded_shard_numel(s, world) for s in shapes) * world * compute_bytes


def comm_bytes_per_step(param_count: int, world: int, compute_bytes: int, reduce_bytes: int,
                        reshard_after_forward: bool) -> int:
    """Bytes one rank moves per step: all-gather in forward (and again in backward when resharded),
    reduce-scatter of gradients in backward."""
    if world == 1:
        return 0
    frac = (world - 1) / world
    gathers = 2 if reshard_after_forward else 1
    return int(frac * param_count * (gathers * compute_bytes + reduce_bytes))
