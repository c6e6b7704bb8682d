"""Solver: search parallel degrees, strategies and layer splits for a pool; rank feasible plans by tokens/s.

Works on plain data (ModelSpec, Workload, ClusterSpec) through the cost model and the step-time model.

Search, best first (branch and bound):
1. `candidate_space` lists every (workload, parallel config) worth trying: TP degree (inside a node,
   dividing heads, KV heads and the FFN), PP degree, data-parallel degree, ZeRO stage / FSDP / HSDP,
   offload, activation checkpointing, micro-batch count, schedule and, for MoE, the expert degree;
   inference: TP, PP and replicas. Pinned flags fix their field. Training plans all run the same
   global batch (`--global-batch`, default `--batch` × GPUs), so their tokens/s compare.
2. Each candidate gets a lower bound on its step time (`StepModel.lower_bound`: its best possible
   layer split, memory ignored) and candidates are taken in order of that bound.
3. A candidate is solved exactly: its layer split by dynamic programming over contiguous layer
   ranges (`best_split`), its per-stage memory from the cost model (cached per stage class and layer
   count), then every rank with `cost_model.estimate`. It stops once the next bound is worse than the
   `top`-th plan found, so the answer equals an exhaustive search under the same models. Every rank
   of a plan is checked only when a decision needs it (`_Found`): the decisions, hence the plans,
   are those of checking each on arrival.
Ranking: tokens/s (step time in whole picoseconds), ties broken by the worst rank's memory use.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, replace

from sharder import cost_model
from sharder.breakdown import CATEGORIES
from sharder.errors import SharderInputError
from sharder.hardware import ClusterSpec
from sharder.layer_split import (StageMemory, best_split, caps_search, compositions, stage_caps,
                                 threshold_split)
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.plan_file import Plan
from sharder.search_space import AC_ORDER, SolveOptions, candidate_space, default_global_batch, divisors
from sharder.step_time import StepModel, pool_layout
from sharder.workload import Workload


@dataclass(kw_only=True)
class SolveResult:
    plans: list[Plan]
    """Feasible plans, best first (at most `top`)."""
    considered: int
    """Candidates in the search space (degrees × strategies; layer splits not counted)."""
    closest: Plan | None = None
    """When nothing fits: the candidate with the smallest overshoot."""
    evaluated: int = 0
    """Candidates solved exactly (the rest were pruned by their bound)."""

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None


# --------------------------------------------------------------------------------------------- solve
class _Search:
    """One solve: caches shared by its candidates (devices, layouts, stage capacities, estimates)."""

    def __init__(self, model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions):
        self.model, self.w, self.cluster, self.opts = model, w, cluster, opts
        self.devices = cluster.devices
        self.layouts: dict[tuple, object] = {}
        self.caps: dict[tuple, list] = {}
        self.memories: dict[tuple, StageMemory] = {}
        self.fits_cache: dict[tuple, bool] = {}
        self.step_models: dict[tuple, StepModel] = {}  # a StepModel is pure: one per candidate

    def degrees(self, par: ParallelConfig) -> tuple:
        return (par.tp, par.pp, par.dp, par.dp_replicate, par.ep)

    def step_model(self, work: Workload, par: ParallelConfig) -> StepModel:
        sm = self.step_models.get((work, par))
        if sm is None:
            key = self.degrees(par)
            layout = self.layouts.get(key)
            if layout is None:
                layout = self.layouts[key] = pool_layout(self.cluster, par, self.devices)
            sm = self.step_models[(work, par)] = StepModel(self.model, work, par, self.cluster, layout)
        return sm

    def memory(self, work: Workload, par: ParallelConfig) -> StageMemory:
        par = replace(par, split=None)
        mem = self.memories.get((work, par))
        if mem is None:
            key = self.degrees(par)[:3]
            caps = self.caps.get(key)
            if caps is None:
                caps = self.caps[key] = stage_caps(self.cluster, par, self.devices)
            mem = self.memories[(work, par)] = StageMemory(self.model, work, par, caps, self.opts.headroom)
        return mem

    def may_fit(self, work: Workload, par: ParallelConfig) -> bool:
        """Whether some split fits the candidate's representative ranks (cached)."""
        key = (work, par)
        if key not in self.fits_cache:
            if par.pp == 1 or par.split is not None:
                fits = _lean_split(self, work, par) is not None
            else:
                fits = self._some_split_fits(work, par)
            self.fits_cache[key] = fits
        return self.fits_cache[key]

    def _some_split_fits(self, work: Workload, par: ParallelConfig) -> bool:
        """Whether the stages' caps can hold the model (memory grows with a stage's layer count, so
        that is whether some split fits): the edge stages must hold one layer; then a few stages are
        measured at the quick split (smallest bottleneck time) and the caps are searched with probes
        placed by those lines, stopping as soon as they can hold the model or cannot. Alternating
        sliding-window models measure every stage at the quick split first."""
        sm = self.step_model(work, par)
        mem = self.memory(work, par)
        L, P = self.model.num_layers, par.pp
        A = [sm.layer_quanta(s) for s in range(P)]
        E = [sm.edge_quanta(s) for s in range(P)]
        most = mem.floor_caps(L - P + 1)
        quick = threshold_split(P, L, lambda s, n: A[s] * n + E[s], most, 1, lambda s, n: 0, A, E)
        if quick is None:
            return False
        # [Constraint] every stage holds a layer: the last stage (head, logits, loss) and the first
        # (embedding, most micro-batches in flight) are the likeliest to overflow with one alone
        if not (mem.holds(P - 1, 1) and mem.holds(0, 1)):
            return False
        counts = quick[0]
        if mem.phased:
            starts = [sum(counts[:s]) for s in range(P)]
            over = [s for s in range(P) if mem.ratio(s, starts[s], counts[s]) > 1.0]
            if not over:
                return True
            lo = [0 if s in over else counts[s] for s in range(P)]
            hi = [counts[s] if s in over else most[s] + 1 for s in range(P)]
            first = sorted(over, key=lambda s: counts[s])  # the fewest layers overflowing first
            return caps_search(mem, L, lo, hi, first=first, enough=True, predict=True) is not None
        lo, hi = [0] * P, [m + 1 for m in most]
        lo[0] = lo[P - 1] = 1
        for s in sorted({0, P // 2, P - 1}):  # lines to predict the others' caps from
            if counts[s] > 1:
                if mem.holds(s, counts[s]):
                    lo[s] = counts[s]
                else:
                    hi[s] = counts[s]
        return caps_search(mem, L, lo, hi, enough=True, predict=True) is not None

    def solve_candidate(self, work: Workload, par: ParallelConfig, sm: StepModel):
        """(par with its split, step quanta) or None when it does not fit its representative ranks."""
        if self.fits_cache.get((work, par)) is False:
            return None  # checked already (as a twin): no split fits
        L = self.model.num_layers
        mem = self.memory(work, par)
        if par.split is not None or par.pp == 1:
            counts = [e - s for s, e in par.stage_layers(L)]
            if any(n > c for n, c in zip(counts, mem.floor_caps(L))):
                return None  # [Constraint] the stored parameters alone overflow
            ratio, b = 0.0, 0
            for s, n in enumerate(counts):
                ratio = max(ratio, mem.ratio(s, b, n))
                b += n
            if ratio > 1.0:
                return None
            return par, sm.quanta(counts)
        found = best_split(sm, mem, L)
        if found is None:
            return None
        return replace(par, split=found[0]), found[1]

    def verify(self, work: Workload, par: ParallelConfig):
        """Every rank from the cost model; (ranks, worst ratio) or None when a rank or host overflows."""
        ranks = cost_model.estimate(self.model, work, par, self.cluster, self.opts.headroom)
        if not all(r.fits for r in ranks):
            return None
        host: dict[int, int] = {}
        for r in ranks:
            host[r.node] = host.get(r.node, 0) + r.host_bytes
        for node, used in host.items():
            if used > self.cluster.nodes[node].host_memory_bytes * (1 - self.opts.headroom):
                return None
        return ranks, worst_ratio(ranks, self.opts.headroom)

    def plan(self, work, par, ranks, sm: StepModel | None = None) -> Plan:
        sm = sm or self.step_model(work, par)
        seconds, tps, parts = sm.total([e - s for s, e in par.stage_layers(self.model.num_layers)])
        return Plan(model=self.model, workload=work, parallel=par, cluster=self.cluster, ranks=ranks,
                    headroom=self.opts.headroom, step_time_s=seconds, tokens_per_s=tps, step_time_parts_s=parts,
                    global_batch=work.batch * par.dp if work.training else None)


def worst_ratio(ranks, headroom: float) -> float:
    return max(r.peak_reserved_bytes / (r.capacity_bytes * (1 - headroom)) for r in ranks)


def solve(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> SolveResult:
    search = _Search(model, w, cluster, opts)
    space = candidate_space(model, w, cluster, opts)
    if not space and (opts.pinned or opts.pinned_workload):
        raise SharderInputError(_no_candidate_message(model, cluster, opts))
    L = model.num_layers
    top = max(1, opts.top)
    # Candidates differing only in checkpointing or offload are slower the more they recompute or
    # offload, so one bound (the fastest variant's) orders the whole family until each is popped.
    families: dict[tuple, list[int]] = {}
    for i, (work, par) in enumerate(space):
        families.setdefault(_family(work, par), []).append(i)
    heap: list[tuple] = []
    for members in families.values():
        members.sort(key=lambda i: _speed_rank(*space[i]))
        sm = search.step_model(*space[members[0]])
        bound = sm.lower_bound(L)
        heap.append((bound, members[0], sm))
        heap.extend((bound, i, None) for i in members[1:])
    heapq.heapify(heap)
    leaner = _leaner_twins(space, families)
    refined: set[int] = set()
    found = _Found(search, top)
    evaluated = 0
    while heap:
        bound, i, sm = heapq.heappop(heap)
        # [Constraint] stop once no remaining candidate can enter the top list
        if found.beyond(bound):
            break
        work, par = space[i]
        if sm is None:  # a family member: its own bound first
            sm = search.step_model(work, par)
            own = sm.lower_bound(L)
            if own > bound:
                heapq.heappush(heap, (own, i, sm))
                continue
        if i not in refined:  # then the bound under the layer caps the stored states allow
            refined.add(i)
            own = sm.lower_bound(L, search.memory(work, par).floor_caps(L - par.pp + 1))
            if own is None:
                continue  # [Constraint] the stored parameters alone overflow
            if own > bound:
                heapq.heappush(heap, (own, i, sm))
                continue
        # [Constraint] full checkpointing keeps the least of any mode: when no split fits the family's
        # full-checkpointing twin (same offload), none fits this candidate either (checked once per twin)
        lean = leaner.get(i)
        if lean is not None and not search.may_fit(*space[lean]):
            continue
        evaluated += 1
        solved = search.solve_candidate(work, par, sm)
        if solved is None:
            continue
        par, quanta = solved
        found.add(quanta, i, work, par, sm)
    plans = [search.plan(work, par, ranks, sm) for _, _, _, work, par, ranks, sm in found.best()]
    closest = None if plans else _closest(search, space)
    return SolveResult(plans=plans, considered=len(space), closest=closest, evaluated=evaluated)


class _Found:
    """The plans found so far, with every rank checked (`verify`) only when a decision needs it.

    A solved candidate joins unchecked. The search asks one question of the list: whether a bound is
    beyond the `top`-th plan's step time (`beyond`), checking every plan as it was found: counting
    unchecked plans as passing gives a time no later than that, so a "no" holds whatever the checks
    say, and only a "yes" checks the fastest unchecked plans first. A plan slower than the `top`-th
    when it was found could not have entered the list then, nor later (that time only falls), so
    keeping it changes nothing. Hence the same decisions and the same plans as checking each plan on
    arrival, while plans pushed out of the top before a decision needed them are never checked."""

    def __init__(self, search: _Search, top: int):
        self.search, self.top = search, top
        # [quanta, worst ratio, index, work, par, ranks, step model], fastest first (then by index);
        # ranks (and ratio) None: unchecked
        self.entries: list[list] = []

    def _threshold(self) -> int | None:
        return self.entries[self.top - 1][0] if len(self.entries) >= self.top else None

    def _settle(self, upto: int | None = None) -> None:
        """Check plans, fastest first, until the `top` fastest are checked and pass; with `upto`, also
        every plan as fast as that."""
        k = 0
        while k < len(self.entries):
            e = self.entries[k]
            if k >= self.top and (upto is None or e[0] > upto):
                return
            if e[5] is not None:
                k += 1
                continue
            checked = self.search.verify(e[3], e[4])
            if checked is None:  # a rank or a host overflows: as if it had never been found
                del self.entries[k]
            else:
                e[5], e[1] = checked
                k += 1

    def beyond(self, bound: int) -> bool:
        """Whether no plan this slow can enter the top list (exactly as if every plan were checked)."""
        t = self._threshold()
        if t is None or bound <= t:
            return False
        self._settle()
        t = self._threshold()
        return t is not None and bound > t

    def add(self, quanta: int, i: int, work, par, sm) -> None:
        bisect.insort(self.entries, [quanta, None, i, work, par, None, sm], key=lambda e: (e[0], e[2]))

    def best(self) -> list[tuple]:
        self._settle()
        t = self._threshold()
        if t is not None:
            self._settle(upto=t)  # ties with the top-th plan are ordered by their worst rank
        done = sorted((tuple(e) for e in self.entries if e[5] is not None and (t is None or e[0] <= t)),
                      key=lambda f: f[:3])
        return done[:self.top]


def _no_candidate_message(model: ModelSpec, cluster: ClusterSpec, opts: SolveOptions) -> str:
    pins = {**opts.pinned, **opts.pinned_workload}
    flags = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                     for k, v in pins.items())
    return (f"no parallel plan matches {flags} on {cluster.num_devices} devices: pp × dp × tp must equal "
            f"{cluster.num_devices}, TP must stay inside a node (at most {cluster.gpus_per_node}) and divide "
            f"{model.num_heads} heads, {model.num_kv_heads} KV heads and the FFN, PP at most {model.num_layers} "
            f"layers, 1F1B needs micro-batches >= PP"
            + ("; --framework deepspeed plans ZeRO data parallel only (TP = PP = 1)" if opts.framework == "deepspeed"
               else "") + "; drop or change a pinned flag")


def _leaner_twins(space, families) -> dict[int, int]:
    """Candidate index -> its twin with full activation checkpointing (same offload), when it has one."""
    out = {}
    for members in families.values():
        full = {space[i][1].offload: i for i in members if space[i][0].ac == "full"}
        for i in members:
            twin = full.get(space[i][1].offload)
            if twin is not None and twin != i:
                out[i] = twin
    return out


def _family(work: Workload, par: ParallelConfig) -> tuple:
    return (par.tp, par.pp, par.dp, par.ep, par.zero, par.dp_replicate, par.schedule, par.framework,
            par.tp_layout, par.sp, work.micro_batches, work.batch)


def _speed_rank(work: Workload, par: ParallelConfig) -> tuple:
    """Within a family: no checkpointing and no offload is fastest."""
    return (par.offload != "none", AC_ORDER.index(work.ac) if work.ac in AC_ORDER else 0)


# ------------------------------------------------------------------------------- feasibility (fast)
def _lean_first(space):
    """Candidates ordered leanest first: the most sharding, checkpointing and micro-batches, offload."""
    def key(item):
        work, par = item
        return (-par.zero, -AC_ORDER.index(work.ac) if work.training else 0, -work.micro_batches,
                par.offload == "none", par.schedule != "1f1b", par.dp_replicate)
    return sorted(space, key=key)


def _lean_per_degrees(space):
    """The leanest candidate (with and without offload) of each degree combination."""
    seen: dict[tuple, list] = {}
    for work, par in _lean_first(space):
        key = (par.tp, par.pp, par.dp, par.ep, par.offload != "none")
        if key not in seen:
            seen[key] = (work, par)
    return list(seen.values())


def _lean_split(search: _Search, work, par):
    """par with a split that fits its stages' caps (filled in proportion to them), or None."""
    L = search.model.num_layers
    mem = search.memory(work, par)
    if par.pp == 1 or par.split is not None:
        counts = [e - s for s, e in par.stage_layers(L)]
        if any(n > c for n, c in zip(counts, mem.floor_caps(L))):
            return None
        b = 0
        for s, n in enumerate(counts):
            if mem.ratio(s, b, n) > 1.0:
                return None
            b += n
        return par
    floor = mem.floor_caps(L - par.pp + 1)
    caps = caps_search(mem, L, [0] * par.pp, [c + 1 for c in floor], enough=True)
    if caps is None:
        return None
    return replace(par, split=_fill(caps, L, caps))


def _fill(weights: list[float], L: int, caps: list[int]) -> tuple[int, ...]:
    """L layers over stages in proportion to `weights`, at least one each, at most caps (sum >= L)."""
    total = sum(weights)
    counts = [min(c, max(1, int(L * w / total))) for w, c in zip(weights, caps)]
    s = 0
    while sum(counts) < L:
        if counts[s % len(counts)] < caps[s % len(counts)]:
            counts[s % len(counts)] += 1
        s += 1
    while sum(counts) > L:
        counts[max(range(len(counts)), key=lambda k: counts[k])] -= 1
    return tuple(counts)


def feasible(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> bool:
    """Whether any candidate fits (leanest strategy of each degree combination first)."""
    search = _Search(model, w, cluster, opts)
    for work, par in _lean_per_degrees(candidate_space(model, w, cluster, opts)):
        par = _lean_split(search, work, par)  # screened on representative ranks first
        if par is not None and search.verify(work, par) is not None:
            return True
    return False


def _closest(search: _Search, space) -> Plan | None:
    """The lean candidate whose representative ranks overshoot least (layers in proportion to the
    stages' capacity), estimated on every rank."""
    best = None
    L = search.model.num_layers
    for work, par in _lean_per_degrees(space):
        mem = search.memory(work, par)
        if par.pp > 1 and par.split is None:
            weights = [min(cap for _, cap, _, _ in mem.caps[s][1]) for s in range(par.pp)]
            par = replace(par, split=_fill(weights, L, [L] * par.pp))
        r = 0.0
        for s, (start, end) in enumerate(par.stage_layers(L)):
            r = max(r, mem.ratio(s, start, end - start))
        # offload plans that overflow the host are shown only when nothing else comes closer
        key = (par.offload != "none" and r > 1.0, r)
        if best is None or key < best[0]:
            best = (key, work, par)
    if best is None:
        return None
    _, work, par = best
    ranks = cost_model.estimate(search.model, work, par, search.cluster, search.opts.headroom)
    return Plan(model=search.model, workload=work, parallel=par, cluster=search.cluster, ranks=ranks,
                headroom=search.opts.headroom)


def fewest_gpus(model: ModelSpec, w: Workload, gpu_spec_for, opts: SolveOptions, limit: int = 4096) -> int | None:
    """Smallest count n (1..8, then powers of two) for which `gpu_spec_for(n)` has a feasible plan."""
    counts = list(range(1, 9)) + [2 ** k for k in range(4, 13) if 2 ** k <= limit]
    for n in counts:
        if feasible(model, w, gpu_spec_for(n), opts):
            return n
    return None


def largest_batch(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions,
                  limit: int = 1 << 16) -> int:
    """Inference: the most concurrent sequences (--batch) at this context for which some plan fits
    the pool, 0 when not even one does (memory grows with the batch: doubling, then bisection)."""
    if w.training:
        raise SharderInputError("the largest batch is searched for --mode inference; training plans "
                                "already choose micro-batches for --global-batch")

    def fits(batch: int) -> bool:
        return feasible(model, replace(w, batch=batch, micro_batches=1), cluster, opts)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def helpful_knobs(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions) -> list[str]:
    """Which single change makes the job fit on this pool, tried in order of how little it changes."""
    tries = []
    if w.training and opts.pinned_workload.get("ac", "full") != "full":
        tries.append(("activation checkpointing (--ac full)", w,
                      replace(opts, pinned_workload={**opts.pinned_workload, "ac": "full"})))
    if w.mode in ("train", "finetune"):
        if w.precision == "bf16-mixed":  # a LoRA base is usually loaded in bf16: adapters only keep fp32
            tries.append(("LoRA (--mode lora --precision bf16-true)", replace(w, mode="lora", precision="bf16-true"),
                          opts))
        else:
            tries.append(("LoRA (--mode lora)", replace(w, mode="lora"), opts))
        tries.append(("QLoRA (--mode qlora)", replace(w, mode="qlora", quant="nf4"), opts))
    if w.mode == "inference" and w.quant == "none":
        tries.append(("8-bit weights (--quant int8)", replace(w, quant="int8"), opts))
        tries.append(("4-bit weights (--quant nf4)", replace(w, quant="nf4"), opts))
    if w.seq > 512:
        tries.append((f"a shorter sequence (--seq {w.seq // 2})", replace(w, seq=w.seq // 2), opts))
    if w.training and opts.pinned.get("offload", "none") == "none":
        pinned = {k: v for k, v in opts.pinned.items() if k not in ("offload", "zero")}
        tries.append(("CPU offload (--offload all with --zero 3)", w,
                      replace(opts, pinned={**pinned, "offload": "all", "zero": 3})))
    out = []
    for label, work, o in tries:
        try:
            if feasible(model, work, cluster, o):
                out.append(label)
        except SharderInputError:
            continue
    return out


def exhaustive(model: ModelSpec, w: Workload, cluster: ClusterSpec, opts: SolveOptions,
               max_pp: int = 4) -> tuple[int, float, Workload, ParallelConfig] | None:
    """The referee of `solve`: every candidate of `candidate_space` with pp <= max_pp and EVERY
    contiguous layer split, each timed by the step-time model; feasibility by `cost_model.estimate` on
    every rank, checked in order of step time until the fastest feasible one (and its ties) is known.
    Returns (step quanta, worst ratio, workload, parallel config) of the best, or None. Slow: for tests
    and benchmarks on small models."""
    search = _Search(model, w, cluster, opts)
    L = model.num_layers
    timed = []
    for work, par in candidate_space(model, w, cluster, opts):
        if par.pp > max_pp:
            continue
        sm = search.step_model(work, par)
        splits = [tuple(e - s for s, e in par.stage_layers(L))] if (par.pp == 1 or par.split) else \
            compositions(L, par.pp)
        for counts in splits:
            timed.append((sm.quanta(counts), len(timed), work, par, counts))
    timed.sort(key=lambda x: (x[0], x[1]))
    best = None
    for quanta, _, work, par, counts in timed:
        if best is not None and quanta > best[0]:
            break
        if par.pp > 1:
            par = replace(par, split=counts)
        checked = search.verify(work, par)
        if checked is not None and (best is None or checked[1] < best[1]):
            best = (quanta, checked[1], work, par)
    return best


__all__ = ["SolveOptions", "SolveResult", "solve", "best_split", "candidate_space", "exhaustive", "feasible",
           "fewest_gpus", "helpful_knobs", "largest_batch", "worst_ratio", "default_global_batch", "divisors",
           "CATEGORIES"]
