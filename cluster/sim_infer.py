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


def _request(config, workload: Workload, tracker, decode_steps: int, prefill, decode) -> int:
    """One request with a fresh StaticCache: `prefill(cache)`, then `decode(cache, i)` per decode step.
    Returns the tracker's peak right after the prefill (or 0)."""
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=workload.context)
    if tracker is not None:
        _tag_cache(cache, tracker)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if workload.precision == "bf16-mixed"
                else contextlib.nullcontext())
    steps = min(max(workload.max_new_tokens - 1, 0), decode_steps)
    with torch.no_grad(), autocast:
        prefill(cache)
        prefill_peak = tracker.peak_bytes() if tracker is not None else 0
        for i in range(steps):
            decode(cache, i)
    return prefill_peak


def generate(model, ids, workload: Workload, tracker=None, decode_steps: int = DECODE_STEPS):
    """Prefill + `decode_steps` steps of the whole model, the ids growing by the argmax token each step."""
    state = {"ids": ids}

    def prefill(cache):
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        state["token"] = _next_token(out.logits)

    def decode(cache, i):
        state["ids"] = torch.cat([state["ids"], state["token"]], dim=-1)
        out = model(input_ids=state["token"], cache=cache, use_cache=True, logits_to_keep=1)
        state["token"] = _next_token(out.logits)

    return _request(model.config, workload, tracker, decode_steps, prefill, decode)


def stage_generate(stage, ids, workload: Workload, hidden_dtype, tracker=None, decode_steps: int = DECODE_STEPS):
    """`generate` for one pipeline stage: token ids into the first, the previous stage's hidden states (a
    received buffer of `hidden_dtype`) into the others; the last computes the last position's logits."""
    batch, seq = ids.shape
    hidden = stage.config.hidden_size

    def run(x, positions, cache):
        kw = {"input_ids": x} if stage.first else {"inputs_embeds": x}
        out = stage.model(**kw, cache=cache, use_cache=True, position_ids=positions).last_hidden_state
        if stage.last:
            stage.lm_head(out[:, -1:, :])

    def prefill(cache):
        x = ids if stage.first else torch.empty((batch, seq, hidden), dtype=hidden_dtype)
        run(x, torch.arange(seq).unsqueeze(0), cache)

    def decode(cache, i):
        x = (torch.zeros((batch, 1), dtype=torch.long) if stage.first
             else torch.empty((batch, 1, hidden), dtype=hidden_dtype))
        run(x, torch.tensor([[seq + i]]), cache)

    return _request(stage.config, workload, tracker, decode_steps, prefill, decode)


def run_inference(spec: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *, fake: bool = True):
    from .simulate import Outcome, tensor_mode

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
    first = True
    if parallel.pp > 1:
        stage_index = parallel.coords(rank)[0]
        start, end = parallel.stage_layers(spec.num_layers)[stage_index]
        first = stage_index == 0
        model = build.StageModule(model, start, end, first, stage_index == parallel.pp - 1)
        dtype = torch.bfloat16 if workload.compute_bytes == 2 else torch.float32
        notes.append(f"pipeline stage {stage_index}/{parallel.pp}: layers [{start}, {end}), one request "
                     "through the stages")

        def request(module, ids, tracker=None, decode_steps=DECODE_STEPS):
            return stage_generate(module, ids, workload, dtype, tracker=tracker, decode_steps=decode_steps)
    else:
        def request(module, ids, tracker=None, decode_steps=DECODE_STEPS):
            return generate(module, ids, workload, tracker=tracker, decode_steps=decode_steps)
    if parallel.tp > 1:
        build.apply_tp(model, spec, parallel, meshes.tp)
    with tensor_mode(fake):
        build.materialize(model, "cpu", init_std=None if fake else 0.02)
        ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq))
        request(model, ids, decode_steps=1)  # untracked warm-up
        tracker = SimMemTracker()
        tracker.track_external(model)
        if first:  # a later pipeline stage never sees the token ids
            tracker.track_as(SimRefType.INP, ids)
        with tracker:
            prefill_peak = request(model, ids, tracker=tracker)
        tracker.reset_mod_stats()
    phase = "prefill" if tracker.peak_bytes() == prefill_peak else "decode"
    return Outcome(tracker=tracker, peak_phase=phase, notes=notes)
