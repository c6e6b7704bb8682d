"""Training without pipeline stages: single rank, DDP, ZeRO-1, FSDP2 (ZeRO-2/3, HSDP), TP, DP×TP, LoRA,
gradient accumulation. One warm-up iteration, one measured iteration (DESIGN §3)."""

from __future__ import annotations

import contextlib

import torch

from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

from . import build
from .sim_tracker import SimRefType, training_tracker


def uses_fsdp(parallel: ParallelConfig) -> bool:
    return parallel.zero >= 2


def prepare_model(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, meshes: build.Meshes,
                  model=None, apply_fsdp=None):
    """TP → LoRA → AC → FSDP on the meta model, in DESIGN §3's order. Returns (model, loss_parallel).
    `apply_fsdp(model, workload, parallel, dp_mesh)` defaults to build.apply_fsdp (the executor passes its own,
    with CPU offload)."""
    if model is None:
        model = build.build_meta_model(spec, workload)
    loss_parallel = False
    if parallel.tp > 1:
        loss_parallel = build.apply_tp(model, spec, parallel, meshes.tp)
    if workload.adapters:
        build.apply_lora(model, workload)
    if workload.ac == "full":
        build.apply_ac(model)
    if uses_fsdp(parallel):
        (apply_fsdp or build.apply_fsdp)(model, workload, parallel, meshes.dp)
    return model, loss_parallel


def forward_context(workload: Workload, parallel: ParallelConfig):
    """bf16-mixed without FSDP runs under CPU autocast (FSDP2 casts through its MixedPrecisionPolicy)."""
    if workload.precision == "bf16-mixed" and not uses_fsdp(parallel):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hidden_dtype(workload: Workload, parallel: ParallelConfig) -> torch.dtype:
    """Dtype of the residual stream between layers: bf16 when the weights compute in bf16 (bf16-true,
    or bf16-mixed through FSDP's MixedPrecisionPolicy); fp32 otherwise (autocast keeps the fp32
    embedding output and residual adds)."""
    if workload.precision == "bf16-true" or (workload.precision == "bf16-mixed" and uses_fsdp(parallel)):
        return torch.bfloat16
    return torch.float32


def loss_context(loss_parallel: bool):
    if loss_parallel:
        from torch.distributed.tensor.parallel import loss_parallel as lp

        return lp()
    return contextlib.nullcontext()


def model_kwargs(model, workload: Workload, parallel: ParallelConfig, batch: int, *, first_stage: bool = True) -> dict:
    """Extra forward arguments. Under sequence parallelism the model sees a sequence-sharded input
    (megatron's embedding output, or a later pipeline stage's input), so positions (and eager's
    mask) are computed for the full sequence here."""
    if not (parallel.sp and (parallel.tp_layout == "megatron" or not first_stage)):
        return {}
    seq = workload.seq
    position_ids = torch.arange(seq).unsqueeze(0)
    kwargs = {"position_ids": position_ids}
    if workload.attention == "eager":
        from transformers.masking_utils import create_causal_mask

        probe = torch.empty((batch, seq, 0), dtype=hidden_dtype(workload, parallel))  # zero bytes: shape only
        kwargs["attention_mask"] = create_causal_mask(config=model.config, inputs_embeds=probe, attention_mask=None,
                                                      cache=None, position_ids=position_ids)
    return kwargs


def train_step(model, optimizer, ids, workload: Workload, parallel: ParallelConfig, loss_parallel: bool) -> None:
    """Forward with labels → backward (per micro-batch) → step → zero_grad(set_to_none=True)."""
    micro = workload.micro_batches
    size = ids.shape[0] // micro
    for i in range(micro):
        x = ids[i * size:(i + 1) * size]
        with loss_context(loss_parallel):
            with forward_context(workload, parallel):
                loss = model(input_ids=x, labels=x, **model_kwargs(model, workload, parallel, size)).loss
            if micro > 1:
                loss = loss / micro
            loss.backward()
        del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_training(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *, fake: bool = True):
    from .simulate import Outcome, tensor_mode

    notes: list[str] = []
    meshes = build.build_meshes(parallel)
    model, loss_parallel = prepare_model(spec, workload, parallel, meshes)
    notes.extend(getattr(model, "sharder_notes", []))
    fsdp = uses_fsdp(parallel)
    with tensor_mode(fake):
        build.materialize(model, "cpu", init_std=None if fake else 0.02)
        ddp = not fsdp and parallel.dp > 1
        if ddp:
            model = wrap_ddp(model, meshes.dp_group, fake)
            notes.append("data parallel: torch DDP (defaults: 25 MB buckets, gradient_as_bucket_view=False; "
                         "buckets filed under DDP Bucket)")
        zero1 = meshes.dp_group if (parallel.zero == 1 and parallel.dp > 1) else None
        if zero1 is not None:
            notes.append("ZeRO-1: ZeroRedundancyOptimizer over the dp group")
        optimizer = build.make_optimizer(model, workload, zero1_group=zero1)
        ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq))
        tracker = training_tracker(model, optimizer, ids, fsdp)
        if ddp:
            _tag_ddp_buckets(model, tracker)
        warmup = 0
        for iteration in range(2):
            with tracker:
                train_step(model, optimizer, ids, workload, parallel, loss_parallel)
            tracker.reset_mod_stats()
            if iteration == 0:
                warmup = tracker.peak_bytes()
    return Outcome(tracker=tracker, warmup_peak_bytes=warmup, notes=notes)


def wrap_ddp(model, group, fake: bool = False):
    """torch DDP over the fake process group. Its start-up check reads parameter data (fake tensors
    have none) and only compares shapes across ranks, so it is skipped; the fake group's all-reduce
    future carries no tensor, so the comm hook returns the bucket itself (what the in-place
    all-reduce returns)."""
    import torch.nn.parallel.distributed as ddp_module
    from torch.nn.parallel import DistributedDataParallel

    original = ddp_module._verify_param_shape_across_processes
    ddp_module._verify_param_shape_across_processes = lambda *args, **kwargs: None
    try:
        wrapped = DistributedDataParallel(model, process_group=group)
    finally:
        ddp_module._verify_param_shape_across_processes = original
    if fake:
        # the reducer's one-time bucket rebuild (2nd forward) reads tensor data in C++; under fake
        # tensors keep the construction-time buckets (same total bytes: one bucket slot per grad)
        wrapped.reducer = _NoRebuild(wrapped.reducer)
    return wrapped


class _NoRebuild:
    def __init__(self, reducer):
        object.__setattr__(self, "_reducer", reducer)

    def _rebuild_buckets(self):
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)

    def __setattr__(self, name, value):
        setattr(self._reducer, name, value)


def _tag_ddp_buckets(model, tracker) -> None:
    original = model._pre_forward

    def pre_forward(*args, **kwargs):  # the reducer (re)builds its buckets here
        with tracker.tag(SimRefType.DDP):
            return original(*args, **kwargs)

    model._pre_forward = pre_forward

    def hook(state, bucket):
        buffer = bucket.buffer()
        buffer.div_(model.process_group.size())  # the default hook's pre-division, in place
        tracker.track_as(SimRefType.DDP, buffer)
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    model.register_comm_hook(None, hook)
