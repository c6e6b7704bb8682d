"""Inference: prefill + decode steps with a transformers StaticCache(max_cache_len = seq + max_new_tokens).

The loop is generate()'s, written out because generate()'s stopping checks read tensor values (fake
tensors cannot answer): prefill computes the logits of the last position only (`logits_to_keep=1`),
the next token is the argmax, the ids grow by one column per step. An untracked warm-up (prefill + one
decode step, its own cache) runs first (DESIGN §4: the TP first-use over-count), then the tracked run
with a fresh cache: its key/value tensors are allocated lazily at each layer's first update from the
local key states (KV heads / TP under tensor parallelism) and are filed under "KV Cache".

Data-parallel replicas of an inference server are independent, so dp (and ZeRO) do not change a
rank's memory here. Pipeline-parallel inference runs one stage (build.StageModule: [embedding] + its layers
+ [norm, head]) the way a request passes through it: the first stage takes token ids, the others the
previous stage's hidden states (received into a buffer of the compute dtype), each with its own
StaticCache whose lazily allocated layers are only the stage's.
"""

from __future__ import annotations

import contextlib

import torch

from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

from . import build
from .sim_tracker import SimMemTracker, SimRefType

DECODE_STEPS = 2
"""Decode steps simulated after the prefill (each one allocates the same: the cache is static)."""


def _tag_cache(cache, tracker) -> None:
    """File the lazily allocated key/value tensors of every cache layer under KV Cache."""
    for layer in cache.layers:
        original = layer.lazy_initialization

        def lazy(*args, _original=original, **kwargs):
            with tracker.tag(SimRefType.KV):
                return _original(*args, **kwargs)

        layer.lazy_initialization = lazy


def _next_token(logits):
    if hasattr(logits, "full_tensor"):  # megatron layout: vocabulary-sharded logits
        logits = logits.full_tensor()
    return logits[:, -1:, :].argmax(dim=-1)


def generate(model, ids, workload: Workload, tracker=None, decode_steps: int = DECODE_STEPS):
    """Prefill + `decode_steps` steps. Returns the tracker's peak right after the prefill (or 0)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=workload.context)
    if tracker is not None:
        _tag_cache(cache, tracker)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if workload.precision == "bf16-mixed"
                else contextlib.nullcontext())
    steps = min(max(workload.max_new_tokens - 1, 0), decode_steps)
    with torch.no_grad(), autocast:
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = _next_token(out.logits)
        del out
        prefill_peak = tracker.peak_bytes() if tracker is not None else 0
        for _ in range(steps):
            ids = torch.cat([ids, token], dim=-1)
            out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            token = _next_token(out.logits)
            del out
    return prefill_peak


def stage_generate(stage, ids, workload: Workload, hidden_dtype, tracker=None, decode_steps: int = DECODE_STEPS):
    """`generate` for one pipeline stage. Returns the tracker's peak right after the prefill (or 0)."""
    from transformers import StaticCache

    cache = StaticCache(config=stage.config, max_cache_len=workload.context)
    if tracker is not None:
        _tag_cache(cache, tracker)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if workload.precision == "bf16-mixed"
                else contextlib.nullcontext())
    batch, seq = ids.shape
    hidden = stage.config.hidden_size
    steps = min(max(workload.max_new_tokens - 1, 0), decode_steps)

    def run(x, positions):
        kw = {"input_ids": x} if stage.first else {"inputs_embeds": x}
        out = stage.model(**kw, cache=cache, use_cache=True, position_ids=positions).last_hidden_state
        if stage.last:
            return stage.lm_head(out[:, -1:, :])
        return out

    with torch.no_grad(), autocast:
        x = ids if stage.first else torch.empty((batch, seq, hidden), dtype=hidden_dtype)
        out = run(x, torch.arange(seq).unsqueeze(0))
        del out, x
        prefill_peak = tracker.peak_bytes() if tracker is not None else 0
        for i in range(steps):
            x = (torch.zeros((batch, 1), dtype=torch.long) if stage.first
                 else torch.empty((batch, 1, hidden), dtype=hidden_dtype))
            out = run(x, torch.tensor([[seq + i]]))
            del out, x
    return prefill_peak


def run_stage_inference(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *,
                        fake: bool = True):
    from .simulate import Outcome, tensor_mode

    notes: list[str] = []
    stage_index = parallel.coords(rank)[0]
    start, end = parallel.stage_layers(spec.num_layers)[stage_index]
    first, last = stage_index == 0, stage_index == parallel.pp - 1
    meshes = build.build_meshes(parallel)
    full = build.build_meta_model(spec, workload)
    notes.extend(full.sharder_notes)
    if parallel.sp:
        import dataclasses

        parallel = dataclasses.replace(parallel, sp=False)
        notes.append("inference: sequence parallel ignored (a one-token decode step cannot be split)")
    stage = build.StageModule(full, start, end, first, last)
    if parallel.tp > 1:
        build.apply_tp(stage, spec, parallel, meshes.tp)
    dtype = torch.bfloat16 if workload.compute_bytes == 2 else torch.float32
    with tensor_mode(fake):
        build.materialize(stage, "cpu", init_std=None if fake else 0.02)
        ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq))
        stage_generate(stage, ids, workload, dtype, tracker=None, decode_steps=1)  # untracked warm-up
        tracker = SimMemTracker()
        tracker.track_external(stage)
        if first:
            tracker.track_as(SimRefType.INP, ids)
        with tracker:
            prefill_peak = stage_generate(stage, ids, workload, dtype, tracker=tracker)
        tracker.reset_mod_stats()
    phase = "prefill" if tracker.peak_bytes() == prefill_peak else "decode"
    notes.append(f"pipeline stage {stage_index}/{parallel.pp}: layers [{start}, {end}), one request through the stages")
    return Outcome(tracker=tracker, peak_phase=phase, notes=notes)


def run_inference(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *, fake: bool = True):
    from .simulate import Outcome, tensor_mode

    if parallel.pp > 1:
        return run_stage_inference(spec, workload, parallel, rank, fake=fake)

    notes: list[str] = []
    if parallel.dp > 1:
        notes.append("inference: data-parallel replicas are independent; dp/zero do not change this rank")
    meshes = build.build_meshes(parallel)
    model = build.build_meta_model(spec, workload)
    notes.extend(model.sharder_notes)
    if parallel.sp:
        import dataclasses

        parallel = dataclasses.replace(parallel, sp=False)
        notes.append("inference: sequence parallel ignored (a one-token decode step cannot be split)")
    if parallel.tp > 1:
        build.apply_tp(model, spec, parallel, meshes.tp)
    with tensor_mode(fake):
        build.materialize(model, "cpu", init_std=None if fake else 0.02)
        ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq))
        generate(model, ids, workload, tracker=None, decode_steps=1)  # untracked warm-up
        tracker = SimMemTracker()
        tracker.track_external(model)
        tracker.track_as(SimRefType.INP, ids)
        with tracker:
            prefill_peak = generate(model, ids, workload, tracker=tracker)
        tracker.reset_mod_stats()
    phase = "prefill" if tracker.peak_bytes() == prefill_peak else "decode"
    return Outcome(tracker=tracker, peak_phase=phase, notes=notes)
