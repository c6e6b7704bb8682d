"""The referee: one rank of a W-rank job, simulated in this process with fake tensors (DESIGN.md §3).

    from sharder.cluster.simulate import simulate_rank
    result = simulate_rank(spec, workload, parallel, rank=3)
    result.peak_bytes, result.breakdown, result.raw

How (DESIGN §3, "Ground truth for training"):
1. a fake process group of W ranks (`init_process_group("fake", rank=r, world_size=W, store=FakeStore())`)
   and a (pp, dp, tp) device mesh over it — (pp, dp_replicate, dp_shard, tp) for HSDP;
2. the transformers model from `spec.hf_config` on the meta device (sdpa or eager attention, fp32
   parameters — bf16 for bf16-true —, train mode, use_cache=False);
3. outside fake mode: TP (`parallelize_module`), LoRA adapters, activation checkpointing
   (`checkpoint_wrapper` per decoder layer), FSDP2 (`fully_shard` per decoder layer, then the root);
4. inside `FakeTensorMode(allow_non_fake_inputs=True)`: `to_empty(device="cpu")`, re-tie, rotary rebuild,
   optimizer (AdamW(foreach=False) or SGD with momentum; ZeroRedundancyOptimizer for ZeRO-1; DDP for
   ZeRO-0/1 with dp > 1), inputs `randint(vocab, (batch, seq))`;
5. `FSDPMemTracker` (with FSDP) or `MemTracker` (without): iteration 0 in a first `with tracker:`
   block (warm-up), iteration 1 in a second; the answer is that block's peak "Total" and the
   category snapshot at that moment.

Pipeline stages (`sim_pipeline`) and inference with a `StaticCache` (`sim_infer`) follow the same scheme.

Workarounds (DESIGN §4): transformers' packed-sequence check is patched to "not packed" (it cannot read
fake position ids and would build a full (B,1,S,S) mask); `to_empty` unties embeddings, so they are
re-tied; fake "cuda" cannot run autograd, so the simulated device is "cpu"; AdamW runs with
foreach=False; the p2p warm-up vote of the pipeline schedule is skipped (every stage declared static).

Categories (`SimResult.breakdown`, sharder's names, bytes at the peak moment):
    parameters        Parameter / Sharded Param (the rank's local shard under FSDP and TP)
    gradients         Gradient / Sharded Grad
    optimizer_states  Optstate (AdamW exp_avg + exp_avg_sq + one 4-byte `step` per parameter tensor)
    activations       Activation (forward outputs, AC recomputation) + Inputs (token ids)
    kv_cache          KV Cache (StaticCache key/value tensors, inference)
    comm_buffers      FSDP's All Gather / Reduce Scatter buffers, its Unsharded Param (the gathered
                      full-size weights of the layers being computed; under ZeRO-2 every layer's, kept
                      from forward to backward) and Unsharded Grad (full-size grads waiting for the
                      reduce-scatter); pipeline receive buffers (M per direction); DDP's gradient
                      buckets (a second copy of the gradients). All of it is storage that FSDP, the
                      pipeline or DDP own for communication.
    temporaries       Temp (tensors made in backward: activation gradients, DDP buckets, ...)
    other             Buffer (rotary inv_freq) and anything unclassified
`SimResult.raw` keeps the tracker's own category names.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, asdict

from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

from .build import SimulationUnsupported

__all__ = ["SimResult", "SimulationUnsupported", "simulate_rank", "fake_process_group",
           "transformers_patches"]


@dataclass
class SimResult:
    """What the referee measured for one rank."""

    rank: int
    world_size: int
    peak_bytes: int
    """Peak "Total" of the measured (second) iteration, tensor bytes on the rank."""
    breakdown: dict[str, int]
    """Sharder categories at the peak moment; they sum to peak_bytes."""
    raw: dict[str, int]
    """The tracker's own categories at the peak moment."""
    layers: tuple[int, int]
    """[start, end) decoder layers this rank holds."""
    peak_phase: str | None = None
    """forward | backward | optimizer (inference: prefill | decode)."""
    peak_module: str | None = None
    """Innermost module active at the peak (None: outside any module, e.g. in the loss)."""
    warmup_peak_bytes: int = 0
    """Peak of the warm-up iteration (over-counts under TP; kept for diagnosis)."""
    fake: bool = True
    torch_version: str = ""
    transformers_version: str = ""
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data


# --------------------------------------------------------------------------------------------------
# process-wide contexts
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int):
    """The default process group as rank `rank` of `world_size`, over the fake backend (no communication)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("simulate_rank needs its own process group, but one is already initialized")
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def transformers_patches():
    """transformers 5.x reads position ids in its packed-sequence check, which fake tensors cannot
    answer; a real run over unpacked batches finds "not packed", so say that."""
    import torch
    import transformers.masking_utils as mu

    original = mu.find_packed_sequence_indices
    mu.find_packed_sequence_indices = lambda position_ids: None
    # MoE experts: torch's CPU grouped_mm takes bf16 only; for other dtypes use transformers' own
    # fallback op (same output allocation: one (tokens, out) tensor per grouped matmul)
    try:
        import transformers.integrations.moe as moe
    except ImportError:  # pragma: no cover - older transformers
        moe = None
    original_moe = getattr(moe, "_can_use_grouped_mm", None)
    if original_moe is not None:
        def can_use(input, weight, offs, _original=original_moe):
            if weight.dtype != torch.bfloat16:
                return False
            return _original(input, weight, offs)

        moe._can_use_grouped_mm = can_use
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = original
        if original_moe is not None:
            moe._can_use_grouped_mm = original_moe


@contextlib.contextmanager
def dtensor_patches():
    """Under the simulation's fake mode DTensor's sharding propagation runs its full-size metadata ops
    in that same mode (a real run uses a private one), so the tracker would count them — once per op
    schema on the cached path (DESIGN §4's first-step over-count), every time for loss_parallel's
    handlers. Run that propagation untracked, as a real-tensor run does."""
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    from .sim_tracker import untracked

    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def quiet(self, op_schema):
        with untracked():
            return original(self, op_schema)

    ShardingPropagator._propagate_tensor_meta_non_cached = quiet
    clear_dtensor_caches()
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original
        clear_dtensor_caches()


def clear_dtensor_caches() -> None:
    """DTensor caches sharding decisions keyed by op schemas that compare meshes by layout, so a
    second simulation in one process would reuse specs pointing at the previous (destroyed) process
    groups. Clear them around every simulation."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
    ShardingPropagator._propagate_tensor_meta_cached.cache_clear()
    for name in ("_gen_transform_infos",):
        fn = getattr(_redistribute, name, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    if hasattr(_redistribute, "clear_redistribute_planner_cache"):
        _redistribute.clear_redistribute_planner_cache()


def tensor_mode(fake: bool):
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        return FakeTensorMode(allow_non_fake_inputs=True)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def check_supported(model: ModelSpec, workload: Workload, parallel: ParallelConfig) -> None:
    """Raise SimulationUnsupported (one line) for what the referee cannot reproduce."""
    if parallel.framework != "torch":
        raise SimulationUnsupported("the referee simulates PyTorch (FSDP2/TP/PP); DeepSpeed runs are measured "
                                    "by `sharder run --framework deepspeed`")
    if workload.quant != "none" or workload.mode == "qlora":
        raise SimulationUnsupported(f"--quant {workload.quant}: quantized weights are not simulated "
                                    f"(bitsandbytes kernels have no fake-tensor support)")
    if workload.ac == "selective":
        raise SimulationUnsupported("--ac selective is not simulated; use --ac none or full")
    if parallel.offload != "none":
        raise SimulationUnsupported("--offload: CPU offload cannot be told apart from none on a CPU simulation")
    if parallel.ep > 1:
        raise SimulationUnsupported("--ep: expert parallelism is not simulated")
    if workload.kv_dtype != "auto" and workload.mode == "inference" and workload.kv_bytes != workload.compute_bytes:
        raise SimulationUnsupported(f"--kv-dtype {workload.kv_dtype}: a quantized KV cache is not simulated")
    if workload.adapters and parallel.tp > 1:
        raise SimulationUnsupported("LoRA with --tp > 1 is not simulated")
    if parallel.pp > 1 and workload.training:
        if parallel.zero in (0, 1) and parallel.dp > 1:
            raise SimulationUnsupported("--pp with DDP/ZeRO-1 data parallel is not simulated; use --zero 2 or 3")
        if parallel.schedule == "1f1b" and workload.micro_batches < parallel.pp:
            raise SimulationUnsupported(f"1F1B needs --micro-batches >= --pp ({parallel.pp})")


def simulate_rank(model: ModelSpec, workload: Workload, parallel: ParallelConfig, rank: int, *,
                  layers: int | None = None, fake: bool = True) -> SimResult:
    """Simulate global rank `rank` of the job and return its measured peak and breakdown.

    `layers`: simulate with that many decoder layers (`model.with_layers`); the caller may also pass
    an already shrunk spec. `fake=False` runs the same thing on real CPU tensors (slow; for checks).
    """
    import torch
    import transformers

    if layers is not None and layers != model.num_layers:
        model = model.with_layers(layers)
    if not 0 <= rank < parallel.world_size:
        raise SimulationUnsupported(f"rank {rank} is outside the job's {parallel.world_size} ranks")
    check_supported(model, workload, parallel)
    start = time.perf_counter()
    stage = parallel.coords(rank)[0]
    layer_range = parallel.stage_layers(model.num_layers)[stage] if parallel.pp > 1 else (0, model.num_layers)

    with fake_process_group(rank, parallel.world_size), transformers_patches(), dtensor_patches():
        if workload.mode == "inference":
            from .sim_infer import run_inference as runner
        elif parallel.pp > 1:
            from .sim_pipeline import run_pipeline as runner
        else:
            from .sim_train import run_training as runner
        outcome = runner(model, workload, parallel, rank, fake=fake)

    tracker = outcome.tracker
    from .sim_tracker import to_sharder_categories

    raw = tracker.raw_snapshot("peak")
    return SimResult(
        rank=rank, world_size=parallel.world_size, peak_bytes=tracker.peak_bytes(),
        breakdown=to_sharder_categories(raw), raw=raw, layers=tuple(layer_range),
        peak_phase=outcome.peak_phase or tracker.peak_phase, peak_module=tracker.peak_module,
        warmup_peak_bytes=outcome.warmup_peak_bytes, fake=fake,
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        wall_s=round(time.perf_counter() - start, 3), notes=list(outcome.notes))


@dataclass
class Outcome:
    """What a runner hands back: the tracker after the measured iteration, and notes."""

    tracker: object
    warmup_peak_bytes: int = 0
    peak_phase: str | None = None
    notes: list[str] = field(default_factory=list)
