"""The solver's search space: every (workload, parallel config) worth trying on a pool, with pins.

TP degree (inside a node, dividing heads, KV heads and the FFN), PP degree, data-parallel degree,
ZeRO stage / FSDP / HSDP, offload, activation checkpointing, micro-batch count, schedule and, for MoE,
the expert degree; inference: TP, PP and replicas. Each [Constraint] says what a candidate must meet.
Training candidates all run one global batch (`--global-batch`, default `--batch` × GPUs: every
data-parallel degree of the pool divides it, and each pipeline gets at least one sequence per stage),
so their tokens/s compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from sharder import cost_model
from sharder.errors import SharderInputError
from sharder.hardware import ClusterSpec
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

AC_ORDER = ("none", "selective", "full")
"""Activation checkpointing from fastest to leanest."""


@dataclass(kw_only=True)
class SolveOptions:
    global_batch: int | None = None
    """Sequences per optimizer step for the whole job (training); None: --batch × GPUs."""
    headroom: float = 0.05
    top: int = 5
    framework: str = "torch"
    pinned: dict = field(default_factory=dict)
    """ParallelConfig fields the user fixed on the command line (tp, pp, zero, ..., split)."""
    pinned_workload: dict = field(default_factory=dict)
    """Workload fields the user fixed (ac, micro_batches)."""
    max_pp: int | None = None
    """Largest pipeline degree to consider (None: the layer count)."""


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


# ----------------------------------------------------------------------------------- candidate space
def default_global_batch(w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> int:
    """--global-batch, else --batch × GPUs."""
    return opts.global_batch or w.batch * cluster.num_devices


def candidate_space(model: ModelSpec, w: Workload, cluster: ClusterSpec,
                    opts: SolveOptions) -> list[tuple[Workload, ParallelConfig]]:
    """Every (workload, parallel config) the solver considers, splits left to the solver (None) unless
    pinned. Each passes `cost_model.validate`."""
    n = cluster.num_devices
    pin = opts.pinned
    out = []
    for tp in divisors(n):
        if "tp" in pin and tp != pin["tp"]:
            continue
        # [Constraint] TP stays inside a node and divides heads, KV heads and the FFN size
        if tp > cluster.gpus_per_node or (tp > 1 and (model.num_heads % tp or model.num_kv_heads % tp
                                                         or model.intermediate_size % tp
                                                         or model.fused_qkv or model.fused_gate_up)):
            continue
        for pp in divisors(n // tp):
            # [Constraint] every stage holds at least one decoder layer
            if pp > model.num_layers or ("pp" in pin and pp != pin["pp"]):
                continue
            if opts.max_pp is not None and pp > opts.max_pp:
                continue
            if "split" in pin and len(pin["split"]) != pp:
                continue
            dp = n // (tp * pp)
            if "dp" in pin and dp != pin["dp"]:
                continue
            for ep in _expert_degrees(model, dp * tp, pin):
                for work, cfg in _strategy_variants(model, w, tp, pp, dp, ep, cluster, opts):
                    try:
                        par = _make(cfg, pin)
                        cost_model.validate(model, work, par, None)  # pool checks done above
                    except SharderInputError:
                        continue
                    out.append((work, par))
    return out


def _expert_degrees(model: ModelSpec, ranks_per_stage: int, pin: dict) -> list[int]:
    if "ep" in pin:
        return [pin["ep"]]
    if not model.is_moe:
        return [1]
    # [Constraint] EP divides the experts and the ranks of a stage
    return [e for e in divisors(model.num_experts) if ranks_per_stage % e == 0]


def _strategy_variants(model, w, tp, pp, dp, ep, cluster, opts):
    pin, pinw = opts.pinned, opts.pinned_workload
    base = dict(framework=opts.framework, tp=tp, pp=pp, dp=dp, ep=ep, tp_layout=pin.get("tp_layout", "megatron"),
                sp=pin.get("sp", tp > 1))
    if not w.training:
        # inference: --batch is the job's concurrent sequences; replicas split them
        if w.batch % dp:
            return
        yield replace(w, batch=w.batch // dp, micro_batches=1), dict(
            base, zero=pin.get("zero", 0), offload=pin.get("offload", "none"),
            dp_replicate=pin.get("dp_replicate", 1), schedule=pin.get("schedule", "gpipe"))
        return
    global_batch = default_global_batch(w, cluster, opts)
    # [Constraint] the global batch splits evenly over the data-parallel replicas
    if global_batch % dp:
        return
    local = global_batch // dp
    if opts.framework == "deepspeed":
        if tp > 1 or pp > 1:
            return
        zeros = [1, 2, 3]
    else:
        zeros = [0, 1, 2, 3] if dp > 1 else [0]
    if "zero" in pin:
        zeros = [pin["zero"]]
    acs = [pinw["ac"]] if "ac" in pinw else list(AC_ORDER)
    schedules = [pin["schedule"]] if "schedule" in pin else (["1f1b", "gpipe"] if pp > 1 else ["1f1b"])
    for zero in zeros:
        for rep in _replicate_degrees(dp, tp, zero, cluster, pin):
            for offload in _offloads(opts.framework, zero, pin):
                for schedule in schedules:
                    for m in _micro_batch_counts(local, pp, schedule, pinw, "schedule" in pin):
                        for ac in acs:
                            try:
                                work = replace(w, batch=local, micro_batches=m, ac=ac)
                            except SharderInputError:
                                continue
                            yield work, dict(base, zero=zero, dp_replicate=rep, offload=offload,
                                             schedule=schedule)


def _replicate_degrees(dp: int, tp: int, zero: int, cluster: ClusterSpec, pin: dict) -> list[int]:
    """HSDP options: full sharding, or shard inside a node and replicate across nodes."""
    if "dp_replicate" in pin:
        return [pin["dp_replicate"]]
    out = [1]
    node_shard = max(1, cluster.gpus_per_node // tp)
    if zero >= 2 and 1 < node_shard < dp and dp % node_shard == 0:
        out.append(dp // node_shard)
    return out


def _offloads(framework: str, zero: int, pin: dict) -> list[str]:
    if "offload" in pin:
        return [pin["offload"]]
    if framework == "deepspeed":
        return ["none", "optimizer"] + (["params"] if zero == 3 else [])
    return ["none", "all"] if zero >= 2 else ["none"]


def _micro_batch_counts(local: int, pp: int, schedule: str, pinw: dict, schedule_pinned: bool) -> list[int]:
    if "micro_batches" in pinw:
        m = pinw["micro_batches"]
        return [m] if local % m == 0 else []
    counts = divisors(local)
    if pp == 1:
        return counts
    if schedule == "1f1b":  # [Constraint] 1F1B needs at least as many micro-batches as stages
        return [m for m in counts if m >= pp]
    # GPipe keeps every micro-batch in flight: with M >= P it ties 1F1B in time and loses in memory
    return counts if schedule_pinned else [m for m in counts if m < pp]


def _make(cfg: dict, pin: dict) -> ParallelConfig:
    merged = dict(cfg)
    if "split" in pin:
        merged["split"] = tuple(pin["split"])
    return ParallelConfig(**merged)
