"""Pipeline-parallel training: the rank's stage with torch.distributed.pipelining (DESIGN §3, §4).

The stage module holds the embedding (first stage), decoder layers [start, end) from
`parallel.stage_layers`, and the final norm + head (last stage); TP / AC / FSDP are applied to it as
to a whole model. `PipelineStage` gets static `input_args` / `output_args` (shapes from an untracked
probe forward of one micro-batch; example inputs require grad), the schedule (GPipe or 1F1B over
`workload.micro_batches`) gets `loss_fn` on every stage (backward never runs otherwise), and its
point-to-point warm-up vote (an int recv + `.item()`) is skipped by declaring every stage static.
Other sends/receives are no-ops of the fake process group that change no allocation. The stage's
receive buffers (M per direction, made on the first step) are filed under "Pipeline Buffer".
The last stage runs with `return_outputs=True` (the default): it keeps every micro-batch's logits
until the next step and merges them at the end of the step.
"""

from __future__ import annotations


import torch

from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

from . import build
from .sim_tracker import SimRefType, training_tracker
from .sim_train import forward_context, hidden_dtype, loss_context, model_kwargs, prepare_model, uses_fsdp


def _static_warmup(schedule) -> None:
    from torch.distributed.pipelining._utils import InferenceMode

    def warmup(stages, has_backward, p2p_done):
        for stage in stages:
            stage._inference_mode = InferenceMode.STATIC

    schedule._warmup_p2p = warmup


def _tag_buffers(stage, tracker) -> None:
    for name in ("_prepare_forward_infra", "_prepare_backward_infra"):
        original = getattr(stage, name)

        def tagged(*args, _original=original, **kwargs):
            with tracker.tag(SimRefType.PIPE):
                return _original(*args, **kwargs)

        setattr(stage, name, tagged)


def _example(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A fresh tensor with t's metadata (DTensor stays DTensor)."""
    if hasattr(t, "to_local"):
        from torch.distributed.tensor import DTensor

        local = torch.empty_like(t.to_local()).requires_grad_(requires_grad)
        return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False,
                                  shape=t.shape, stride=t.stride())
    return torch.empty_like(t).requires_grad_(requires_grad)


def run_pipeline(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *, fake: bool = True):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from .simulate import Outcome, tensor_mode

    notes: list[str] = []
    stage_index = parallel.coords(rank)[0]
    start, end = parallel.stage_layers(spec.num_layers)[stage_index]
    first, last = stage_index == 0, stage_index == parallel.pp - 1
    micro = workload.micro_batches
    mb = workload.micro_batch_size
    meshes = build.build_meshes(parallel)
    full = build.build_meta_model(spec, workload)
    notes.extend(full.sharder_notes)
    if spec.tie_word_embeddings and parallel.pp > 1:
        notes.append("tied embeddings: the first stage's embedding and the last stage's head are separate copies")
    module = build.StageModule(full, start, end, first, last)
    module, loss_parallel = prepare_model(spec, workload, parallel, meshes, model=module)
    module.extra_kwargs = lambda batch: model_kwargs(module, workload, parallel, batch, first_stage=first)
    if workload.precision == "bf16-mixed" and not uses_fsdp(parallel):
        module.forward_context = lambda: forward_context(workload, parallel)

    def loss_fn(logits, labels):
        return full.loss_function(logits=logits, labels=labels, vocab_size=spec.vocab_size)

    with tensor_mode(fake):
        build.materialize(module, "cpu", init_std=None if fake else 0.02)
        ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq))
        # probe one micro-batch (untracked) for the stage's input/output metadata
        if first:
            example_in = ids[:mb]
        else:
            hidden_seq = workload.seq // parallel.tp if parallel.sp else workload.seq
            example_in = torch.empty((mb, hidden_seq, spec.hidden_size), dtype=hidden_dtype(workload, parallel))
        with torch.no_grad(), loss_context(loss_parallel):
            probe_out = module(example_in)
        for sub in module.modules():  # the probe must leave FSDP as a real first step would find it
            if hasattr(sub, "reshard"):
                sub.reshard()
        input_args = example_in if first else _example(example_in, True)
        output_args = _example(probe_out, not last)
        del probe_out
        stage = PipelineStage(module, stage_index, parallel.pp, torch.device("cpu"),
                              input_args=input_args, output_args=output_args, group=meshes.pp_group)
        cls = Schedule1F1B if parallel.schedule == "1f1b" else ScheduleGPipe
        schedule = cls(stage, n_microbatches=micro, loss_fn=loss_fn)
        _static_warmup(schedule)
        optimizer = build.make_optimizer(module, workload)
        fsdp = uses_fsdp(parallel)
        tracker = training_tracker(module, optimizer, ids, fsdp)
        _tag_buffers(stage, tracker)
        warmup = 0
        for iteration in range(2):
            with tracker:
                with loss_context(loss_parallel):
                    if first:
                        schedule.step(ids, target=ids if last else None)
                    elif last:
                        schedule.step(target=ids)
                    else:
                        schedule.step()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
            if iteration == 0:
                warmup = tracker.peak_bytes()
    notes.append(f"pipeline stage {stage_index}/{parallel.pp}: layers [{start}, {end}), "
                 f"{parallel.schedule}, {micro} micro-batches of {mb}")
    return Outcome(tracker=tracker, warmup_peak_bytes=warmup, notes=notes)
