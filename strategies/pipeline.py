"""Pipeline parallelism (torch.distributed.pipelining): stages, in-flight micro-batches, buffers, bubble."""

from __future__ import annotations

from sharder.errors import SharderInputError

VERIFIED = True


def in_flight_micro_batches(schedule: str, micro_batches: int, stages: int, stage: int) -> int:
    """Micro-batches whose activations a stage holds at once: GPipe keeps all M; 1F1B min(M, P - s)."""
    if schedule == "gpipe":
        return micro_batches
    return min(micro_batches, stages - stage)


def forward_after_first_backward(schedule: str, micro_batches: int, stages: int, stage: int) -> bool:
    """Does the stage run a forward after its first backward? GPipe never; 1F1B when M > P - s."""
    return schedule != "gpipe" and micro_batches > stages - stage


def validate(schedule: str, micro_batches: int, stages: int, num_layers: int) -> None:
    if stages > num_layers:
        raise SharderInputError(f"--pp {stages} exceeds the model's {num_layers} decoder layers")
    if stages > 1 and schedule == "1f1b" and micro_batches < stages:
        raise SharderInputError(
            f"1F1B needs at least as many micro-batches as stages: --micro-batches {micro_batches} < --pp {stages}; "
            f"raise --micro-batches or use --schedule gpipe")


def receive_buffer_bytes(stage: int, stages: int, micro_batches: int, tokens_per_micro: int,
                         hidden: int, act_bytes: int) -> int:
    """PipelineStage keeps M receive buffers per direction: activations in (not stage 0), gradients in
    (not the last stage), each micro-batch × hidden in the compute dtype."""
    one = tokens_per_micro * hidden * act_bytes
    n = 0
    if stage > 0:
        n += micro_batches
    if stage < stages - 1:
        n += micro_batches
    return n * one


def bubble_fraction(schedule: str, micro_batches: int, stages: int) -> float:
    """Idle fraction of a step: (P - 1) / (M + P - 1) for GPipe and 1F1B alike."""
    if stages == 1:
        return 0.0
    return (stages - 1) / (micro_batches + stages - 1)
