"""Solver: search parallel degrees, strategies and layer splits for a pool; rank feasible plans by tokens/s.

Works on plain data (ModelSpec, Workload, ClusterSpec) through the cost model and step-time model alone.
Two passes: every candidate is screened on its representative ranks (each pipeline stage's first
data-parallel, first tensor-parallel rank), then the best are estimated on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sharder import cost_model
from sharder.breakdown import CATEGORIES
from sharder.device_overhead import allocated_and_reserved
from sharder.errors import SharderInputError
from sharder.hardware import ClusterSpec
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.plan_file import Plan
from sharder.step_time import step_time
from sharder.workload import Workload
from sharder.strategies import pipeline as pipeline_strategy


@dataclass(kw_only=True)
class SolveOptions:
    global_batch: int | None = None
    """Sequences per optimizer step for the whole job (training); None: the smallest that fits the degrees."""
    headroom: float = 0.05
    top: int = 5
    framework: str = "torch"
    pinned: dict = field(default_factory=dict)
    """ParallelConfig fields the user fixed on the command line (tp, pp, zero, ...)."""
    pinned_workload: dict = field(default_factory=dict)
    """Workload fields the user fixed (ac, micro_batches)."""


@dataclass(kw_only=True)
class SolveResult:
    plans: list[Plan]
    """Feasible plans, best first (at most `top`)."""
    considered: int
    closest: Plan | None = None
    """When nothing fits: the candidate with the smallest overshoot."""

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_configs(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions):
    """Yield (workload, parallel config) pairs worth estimating."""
    n = cluster.num_devices
    pin = opts.pinned
    for tp in divisors(n):
        if tp > cluster.gpus_per_node or (tp > 1 and (model.num_heads % tp or model.num_kv_heads % tp
                                                         or model.intermediate_size % tp
                                                         or model.fused_qkv or model.fused_gate_up)):
            continue
        if "tp" in pin and tp != pin["tp"]:
            continue
        for pp in divisors(n // tp):
            if pp > model.num_layers or ("pp" in pin and pp != pin["pp"]):
                continue
            dp = n // (tp * pp)
            if "dp" in pin and dp != pin["dp"]:
                continue
            yield from _strategy_variants(model, w, tp, pp, dp, opts)


def _strategy_variants(model, w, tp, pp, dp, opts):
    pin, pinw = opts.pinned, opts.pinned_workload
    if not w.training:
        # inference: --batch is the job's concurrent sequences; data-parallel replicas split them
        if w.batch % dp:
            return
        cfg = dict(framework="torch", tp=tp, pp=pp, dp=dp, zero=pin.get("zero", 0),
                   tp_layout=pin.get("tp_layout", "megatron"), schedule="gpipe")
        try:
            yield replace(w, batch=w.batch // dp), _make(cfg, pin)
        except SharderInputError:
            pass
        return
    global_batch = opts.global_batch or dp * max(pp, 1) * w.batch
    if global_batch % dp:
        return
    local = global_batch // dp
    zeros = [0, 1, 2, 3] if dp > 1 else [0]
    if opts.framework == "deepspeed":
        zeros = [1, 2, 3] if dp > 1 else [1, 2, 3]
        if tp > 1 or pp > 1:
            return
    acs = [pinw["ac"]] if "ac" in pinw else ["none", "full"]
    if pp > 1:
        mbs = sorted({m for m in (pp, 2 * pp, local) if m >= pp and local % m == 0})
    else:
        mbs = sorted({1, local}) if local > 1 else [1]
    if "micro_batches" in pinw:
        mbs = [pinw["micro_batches"]] if local % pinw["micro_batches"] == 0 else []
    offloads = ["none"]
    if opts.framework == "deepspeed":
        offloads = ["none", "optimizer"]
    for zero in zeros:
        if "zero" in pin and zero != pin["zero"]:
            continue
        offs = offloads + (["all"] if (zero == 3 and opts.framework == "torch") else [])
        if "offload" in pin:
            offs = [pin["offload"]]
        for offload in offs:
            for ac in acs:
                for m in mbs:
                    try:
                        work = replace(w, batch=local, micro_batches=m, ac=ac)
                        cfg = dict(framework=opts.framework, tp=tp, pp=pp, dp=dp, zero=zero, offload=offload,
                                   sp=tp > 1, tp_layout=pin.get("tp_layout", "megatron"),
                                   schedule=pin.get("schedule", "1f1b"))
                        yield work, _make(cfg, pin)
                    except SharderInputError:
                        continue


def _make(cfg: dict, pin: dict) -> ParallelConfig:
    merged = dict(cfg)
    for key in ("sp", "dp_replicate", "ep"):
        if key in pin:
            merged[key] = pin[key]
    return ParallelConfig(**merged)


def _screen(model, w, par, cluster, headroom) -> tuple[bool, float]:
    """Feasibility and worst capacity ratio from each stage's representative rank (cheap)."""
    stages = par.stage_layers(model.num_layers)
    devs = cluster.devices
    worst = 0.0
    for s, rng in enumerate(stages):
        rank = s * par.dp * par.tp
        bd, _, _, _ = cost_model.rank_memory(model, w, par, s, 0, 0, rng)
        dev = devs[rank]
        _, reserved = allocated_and_reserved(sum(bd.values()), dev.gpu, par.world_size, bd)
        worst = max(worst, reserved / (dev.capacity_bytes * (1 - headroom)))
    return worst <= 1.0, worst


def balanced_split(model: ModelSpec, w: Workload, par: ParallelConfig, cluster: ClusterSpec,
                   headroom: float) -> tuple[int, ...] | None:
    """Contiguous layer counts per stage minimizing the worst stage's time (training) or memory ratio
    (inference), by dynamic programming over (stage, last layer). Stage memory is linear in its layer
    count; it is sampled at two counts per stage and checked exactly afterwards."""
    L, P = model.num_layers, par.pp
    devs = cluster.devices
    lines = []
    for s in range(P):
        rank = s * par.dp * par.tp
        gpu = devs[rank]
        one = _stage_bytes(model, w, par, s, 1)
        two = _stage_bytes(model, w, par, s, 2)
        cap = gpu.capacity_bytes * (1 - headroom)
        speed = gpu.gpu.fp32_flops if w.precision == "32-true" else gpu.gpu.bf16_flops
        lines.append((one - (two - one), two - one, cap, speed))
    edge_layers = model.embedding_params() / max(1, model.layer_params())

    def cost(s, count):
        base, per, cap, speed = lines[s]
        mem = (base + per * count) / cap
        edge = (edge_layers if s == P - 1 else 0) + (0.02 * edge_layers if s == 0 else 0)
        t = (count + edge) / speed
        if mem > 1:
            return (float("inf"), mem)
        return (mem, t) if not w.training else (t, mem)

    INF = (float("inf"), float("inf"))
    best = [[INF] * (L + 1) for _ in range(P)]
    back = [[0] * (L + 1) for _ in range(P)]
    for e in range(1, L - P + 2):
        best[0][e] = cost(0, e)
    for s in range(1, P):
        for e in range(s + 1, L - (P - 1 - s) + 1):
            for b in range(s, e):
                prev = best[s - 1][b]
                if prev[0] == float("inf"):
                    continue
                here = cost(s, e - b)
                cand = max(prev, here)
                if cand < best[s][e]:
                    best[s][e], back[s][e] = cand, b
    if best[P - 1][L][0] == float("inf"):
        return None
    split, e = [], L
    for s in range(P - 1, -1, -1):
        b = back[s][e] if s else 0
        split.append(e - b)
        e = b
    return tuple(reversed(split))


def _stage_bytes(model, w, par, s, count) -> int:
    start = 0 if s == 0 else 1
    bd, _, _, _ = cost_model.rank_memory(model, w, par, s, 0, 0, (start, start + count))
    return sum(bd.values())


def solve(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> SolveResult:
    screened = []
    considered = 0
    closest = None
    for work, par in candidate_configs(model, w, cluster, opts):
        considered += 1
        try:
            cost_model.validate(model, work, par, cluster)
        except SharderInputError:
            continue
        if par.pp > 1 and (not cluster.homogeneous or not work.training) and "split" not in opts.pinned:
            split = balanced_split(model, work, par, cluster, opts.headroom)
            if split is not None:
                par = replace(par, split=split)
        ok, worst = _screen(model, work, par, cluster, opts.headroom)
        if not ok:
            if closest is None or worst < closest[0]:
                closest = (worst, work, par)
            continue
        seconds, tps, parts = step_time(model, work, par, cluster)
        screened.append((-tps, worst, work, par, seconds, tps, parts))
    screened.sort(key=lambda x: (x[0], x[1]))
    plans = []
    for _, worst, work, par, seconds, tps, parts in screened[: max(opts.top * 3, opts.top)]:
        ranks = cost_model.estimate(model, work, par, cluster, opts.headroom)
        if not all(r.fits for r in ranks):
            continue
        plans.append(Plan(model=model, workload=work, parallel=par, cluster=cluster, ranks=ranks,
                          headroom=opts.headroom, step_time_s=seconds, tokens_per_s=tps,
                          step_time_parts_s=parts,
                          global_batch=work.batch * par.dp if work.training else None))
        if len(plans) >= opts.top:
            break
    near = None
    if not plans and closest is not None:
        _, work, par = closest
        ranks = cost_model.estimate(model, work, par, cluster, opts.headroom)
        near = Plan(model=model, workload=work, parallel=par, cluster=cluster, ranks=ranks,
                    headroom=opts.headroom)
    return SolveResult(plans=plans, considered=considered, closest=near)


def fewest_gpus(model: ModelSpec, w: Workload, gpu_spec_for, opts: SolveOptions, limit: int = 4096) -> int | None:
    """Smallest count n (1, 2, 3, ... then powers of two) for which `gpu_spec_for(n)` has a feasible plan."""
    counts = list(range(1, 9)) + [2 ** k for k in range(4, 13) if 2 ** k <= limit]
    quick = replace(opts, top=1)
    for n in counts:
        if solve(model, w, gpu_spec_for(n), quick).plans:
            return n
    return None


def helpful_knobs(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> list[str]:
    """Which single change makes the job fit on this pool, tried in order of how little it changes."""
    tries = []
    if w.training and w.ac == "none":
        tries.append(("activation checkpointing (--ac full)", replace(w, ac="full"), opts))
    if w.mode in ("train", "finetune"):
        tries.append(("LoRA (--mode lora)", replace(w, mode="lora"), opts))
        tries.append(("QLoRA (--mode qlora)", replace(w, mode="qlora", quant="nf4"), opts))
    if w.mode == "inference" and w.quant == "none":
        tries.append(("8-bit weights (--quant int8)", replace(w, quant="int8"), opts))
        tries.append(("4-bit weights (--quant nf4)", replace(w, quant="nf4"), opts))
    if w.seq > 512:
        tries.append((f"a shorter sequence (--seq {w.seq // 2})", replace(w, seq=w.seq // 2), opts))
    if w.training:
        tries.append(("CPU offload (--offload all with --zero 3)", w, replace(opts, pinned={**opts.pinned, "offload": "all"})))
    out = []
    for label, work, o in tries:
        try:
            if solve(model, work, cluster, replace(o, top=1)).plans:
                out.append(label)
        except SharderInputError:
            continue
    return out


__all__ = ["SolveOptions", "SolveResult", "solve", "balanced_split", "fewest_gpus", "helpful_knobs", "CATEGORIES"]
