"""Layer splits: which contiguous decoder layers each pipeline stage holds, for a given candidate.

`StageMemory` asks the cost model for a stage's representative rank (dp 0, tp 0) and caches the answer
by what it depends on; `best_split` finds the split with the shortest step (ties: the least memory) by
dynamic programming over contiguous layer ranges, or by timing every split when there are few.
"""

from __future__ import annotations

import math
from dataclasses import replace

from sharder import cost_model
from sharder.device_overhead import allocated_and_reserved
from sharder.hardware import ClusterSpec
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.rank_tensors import layer_local_tensors, stored_bytes
from sharder.step_time import StepModel, quantize
from sharder.workload import Workload
from sharder.strategies import pipeline as pipeline_strategy

ENUMERATE_SPLITS = 512
"""Up to this many contiguous splits, the layer split is found by timing each (else by DP)."""


class StageMemory:
    """Worst memory ratio (reserved / usable × (1 − headroom)) of a stage's representative rank
    (dp 0, tp 0), for any layer range. Cached by what the cost model's answer depends on: first/last
    stage, micro-batches in flight, layer count (and the range's parity for alternating sliding-window
    models, whose KV cache depends on which layers a stage holds)."""

    def __init__(self, model: ModelSpec, w: Workload, par: ParallelConfig, stage_caps, headroom: float):
        self.model, self.w, self.par = model, w, replace(par, split=None)
        self.caps = stage_caps
        self.headroom = headroom
        self.cache: dict[tuple, float] = {}
        self.tensors: dict[tuple, tuple] = {}  # the cost model's answer does not depend on the GPU
        swl = model.sliding_window_layers
        self.phased = bool(model.sliding_window and 0 < swl < model.num_layers and not w.training)
        self.calls = 0
        self.floors: dict[int, list[int]] = {}

    def floor_caps(self, most: int) -> list[int]:
        """Per stage, an upper bound on the layers it can hold, from the bytes every moment of a
        training step keeps (each layer's stored parameters and its optimizer states; edges, gradients
        and activations left out), without calling the cost model. `most` where no bound applies."""
        got = self.floors.get(most)
        if got is None:
            got = self.floors[most] = self._floor_caps(most)
        return got

    def _floor_caps(self, most: int) -> list[int]:
        w, par = self.w, self.par
        if not w.training or par.framework != "torch" or par.offload != "none":
            return [most] * par.pp
        fsdp = par.zero >= 2
        shard = par.dp_shard if fsdp else 1
        states = (2 if w.optimizer == "adamw" else 1) * w.param_bytes
        per_layer = 0
        for t in layer_local_tensors(self.model, w, par, 0):
            n = t.numel // shard
            per_layer += stored_bytes(t, n, w)
            if t.trainable and par.zero != 1:  # ZeRO-1's partition may leave rank 0 little
                per_layer += states * n
        out = []
        for s in range(par.pp):
            lo, hi = 0, most
            while lo < hi:  # most n whose floor fits every GPU type of the stage
                mid = (lo + hi + 1) // 2
                if self._floor_fits(s, mid * per_layer):
                    lo = mid
                else:
                    hi = mid - 1
            out.append(lo)
        return out

    def _floor_fits(self, s: int, tensor: int) -> bool:
        for gpu, capacity, _, _ in self.caps[s][1]:
            if allocated_and_reserved(tensor, gpu, self.par.world_size)[1] > capacity * (1 - self.headroom):
                return False
        return True

    def key(self, s: int, b: int, n: int) -> tuple:
        par = self.par
        inflight = (pipeline_strategy.in_flight_micro_batches(par.schedule, self.w.micro_batches, par.pp, s)
                    if self.w.training and par.pp > 1 else 1)
        return (s == 0, s == par.pp - 1, inflight, n, b % 2 if self.phased else 0)

    def ratio(self, s: int, b: int, n: int) -> float:
        k = self.key(s, b, n)
        kc = (k, self.caps[s][0])
        r = self.cache.get(kc)
        if r is None:
            got = self.tensors.get(k)
            if got is None:
                self.calls += 1
                bd, _, host, _ = cost_model.rank_memory(self.model, self.w, self.par, s, 0, 0, (b, b + n))
                got = self.tensors[k] = (bd, sum(bd.values()), host)
            bd, tensor, host = got
            r = 0.0
            world = self.par.world_size
            for gpu, capacity, host_limit, ranks_per_node in self.caps[s][1]:
                _, reserved = allocated_and_reserved(tensor, gpu, world, bd)
                r = max(r, reserved / (capacity * (1 - self.headroom)))
                if host:  # [Constraint] offloaded states fit the host memory of the node
                    r = max(r, host * ranks_per_node / (host_limit * (1 - self.headroom)))
            self.cache[kc] = r
        return r


def stage_caps(cluster: ClusterSpec, par: ParallelConfig, devices) -> list[tuple]:
    """Per stage: (class key, ((gpu, capacity, node host memory, ranks of the stage on that node), ...))
    for each GPU type in the stage."""
    per = par.tp * par.dp
    nodes = cluster.nodes
    out = []
    for s in range(par.pp):
        kinds: dict[str, list] = {}
        on_node: dict[int, int] = {}
        for r in range(s * per, (s + 1) * per):
            d = devices[r]
            on_node[d.node] = on_node.get(d.node, 0) + 1
            k = kinds.get(d.gpu.name)
            if k is None or d.capacity_bytes < k[1]:
                kinds[d.gpu.name] = [d.gpu, d.capacity_bytes, d.node]
        host = min(nodes[n].host_memory_bytes for n in on_node)
        entries = tuple((g, cap, host, max(on_node.values())) for g, cap, _ in kinds.values())
        out.append((tuple(sorted((g.name, cap, h, k) for g, cap, h, k in entries)), entries))
    return out


# ---------------------------------------------------------------------------------------- layer split
def best_split(sm: StepModel, mem: StageMemory,
               num_layers: int) -> tuple[tuple[int, ...], int, float | None] | None:
    """The layer counts per stage with the shortest step, ties broken by the worst memory ratio:
    (counts, step time in quanta, worst ratio or None when no tie needed it), or None when no split
    fits.

    Dynamic programming over contiguous layer ranges (`_pareto_dp`): state (stage s, layers [0, e)
    placed), each keeping the Pareto front of (Σ stage times, max stage time, max per-step extra, max
    memory ratio) over the splits that reach it, so the step time Σt + (M − 1)·max t + max x is
    optimised exactly. To call the cost model rarely, a quick split comes first (the smallest
    bottleneck time, `threshold_split`): when it fits, its step time bounds the DP, which then only
    visits splits at least as fast; otherwise each stage's layer cap is bisected first (memory grows
    with a stage's layer count), stopping as soon as the caps cannot hold the model.
    """
    P, L, M = len(sm.stages), num_layers, sm.micro_batches
    A = [sm.layer_quanta(s) for s in range(P)]  # stage time per micro-batch: A·n + E, whole quanta
    E = [sm.edge_quanta(s) for s in range(P)]
    x_cache: dict[tuple[int, int], int] = {}

    def t(s, n):
        return A[s] * n + E[s]

    def x(s, n):
        v = x_cache.get((s, n))
        if v is None:
            v = x_cache[(s, n)] = quantize(sm.step_extra(s, n))
        return v

    most = mem.floor_caps(L - P + 1)
    if min(most) < 1 or sum(most) < L:  # [Constraint] the stored parameters alone overflow
        return None
    quick = threshold_split(P, L, t, most, M, x)
    if quick is None:
        return None
    counts, f_fast = quick
    starts = [sum(counts[:s]) for s in range(P)]
    over = [s for s in range(P) if mem.ratio(s, starts[s], counts[s]) > 1.0]
    few = math.comb(L - 1, P - 1) <= ENUMERATE_SPLITS
    if not over and not mem.phased:
        if few:
            return _enumerate_splits(P, L, t, x, M, most, f_fast, mem, known=tuple(counts))
        return _pareto_dp(P, L, t, x, M, A, most, f_fast, mem)
    lo = [0 if s in over else counts[s] for s in range(P)]
    hi = [counts[s] if s in over else most[s] + 1 for s in range(P)]
    caps = caps_search(mem, L, lo, hi, first=over)
    if caps is None:
        return None
    upper = threshold_split(P, L, t, caps, M, x)
    if upper is None:
        return None
    if mem.phased:  # alternating sliding-window models: caps are optimistic, memory is checked
        return (_enumerate_splits(P, L, t, x, M, caps, None, mem) if few
                else _pareto_dp(P, L, t, x, M, A, caps, None, mem))
    # the caps are exact here: every split within them fits, so memory only breaks ties in time
    if few:
        return _enumerate_splits(P, L, t, x, M, caps, upper[1], mem, exact=True)
    fastest = _pareto_dp(P, L, t, x, M, A, caps, upper[1], None)
    return _pareto_dp(P, L, t, x, M, A, caps, fastest[1], mem)


def _enumerate_splits(P, L, t, x, M, caps, f_ub, mem, exact: bool = False, known: tuple = ()):
    """Few splits (two stages, or a shallow model): time every one within the caps and no slower than
    `f_ub` (a feasible split's step time, or None), then check memory in order of step time, stopping
    after the fastest that fits and its ties. A stage that overflows with n layers overflows with
    more, so those are skipped without asking the cost model. `exact`: every split within the caps
    fits; `known`: a split known to fit. A fastest split without ties is then returned unmeasured
    (ratio None)."""
    timed = []
    for counts in compositions(L, P):
        if any(n > c for n, c in zip(counts, caps)):
            continue
        times = [t(s, n) for s, n in enumerate(counts)]
        extras = [x(s, n) for s, n in enumerate(counts)]
        quanta = sum(times) + (M - 1) * max(times) + max(extras)
        if f_ub is None or quanta <= f_ub:
            timed.append((quanta, counts))
    timed.sort()
    if timed and (len(timed) == 1 or timed[1][0] > timed[0][0]) and (exact or timed[0][1] == known):
        return timed[0][1], timed[0][0], None
    fails = [L + 1] * P  # per stage, the fewest layers known to overflow (range-independent models)
    best = None
    for quanta, counts in timed:
        if best is not None and quanta > best[1]:
            break
        worst, b = 0.0, 0
        for s, n in enumerate(counts):
            if n >= fails[s] and not mem.phased:
                worst = 2.0
                break
            r = mem.ratio(s, b, n)
            if r > 1.0:
                fails[s] = min(fails[s], n)
            worst = max(worst, r)
            if worst > 1.0:
                break
            b += n
        if worst <= 1.0 and (best is None or worst < best[2]):
            best = (counts, quanta, worst)
    return best


def _pareto_dp(P, L, t, x, M, A, caps, f_ub, mem):
    """Exact DP over contiguous splits; `mem` None: time alone. Returns (counts, quanta, ratio) or None.
    States whose lower bound exceeds `f_ub` (a feasible split's step time, or None) are dropped."""
    inf = f_ub if f_ub is not None else float("inf")
    tail_min = [0] * (P + 1)
    for s in range(P - 1, -1, -1):
        tail_min[s] = tail_min[s + 1] + t(s, 1)
    min_a = [min(A[s:]) for s in range(P)] + [0]
    # [Constraint] a stage holding n layers makes the step at least Σ(least stage times) + (M-1)·t(s, n)
    caps = list(caps)
    if f_ub is not None and M > 1:
        least_sum = tail_min[0] + min(A) * (L - P)
        for s in range(P):
            while caps[s] > 1 and least_sum + (M - 1) * t(s, caps[s]) > f_ub:
                caps[s] -= 1
    fronts: list[dict[int, list]] = [dict() for _ in range(P)]
    prev: dict[int, list] = {0: [(0, 0, 0, 0.0, 0, 0)]}
    for s in range(P):
        here = fronts[s]
        hi_e = L - (P - 1 - s)
        rest_base, rest_a, rest_n = tail_min[s + 1], min_a[s + 1], L - (P - 1 - s)
        for b in sorted(prev):
            front = prev[b]
            low_n = (L - b) if s == P - 1 else 1
            for n in range(low_n, min(caps[s], hi_e - b) + 1):
                e = b + n
                ts, xs = t(s, n), x(s, n)
                rest = rest_base + rest_a * (rest_n - e)
                m = None
                for i, (sum_t, max_t, max_x, max_m, _, _) in enumerate(front):
                    st, mt, mx = sum_t + ts, max(max_t, ts), max(max_x, xs)
                    # [Constraint] drop states that cannot beat a known feasible split
                    if st + rest + (M - 1) * mt + mx > inf:
                        continue
                    if m is None:
                        m = mem.ratio(s, b, n) if mem is not None else 0.0
                        if m > 1.0:  # [Constraint] the stage fits its GPUs; more layers would not
                            break
                    entry = (st, mt, mx, max(max_m, m), b, i)
                    _insert(here.setdefault(e, []), entry)
                if m is not None and m > 1.0:
                    break
        prev = here
    final = fronts[P - 1].get(L)
    if not final:
        return None
    best_i = min(range(len(final)), key=lambda i: (_objective(final[i], M), final[i][3]))
    counts, e, i, s = [], L, best_i, P - 1
    while s >= 0:
        entry = fronts[s][e][i]
        counts.append(e - entry[4])
        e, i, s = entry[4], entry[5], s - 1
    return tuple(reversed(counts)), _objective(final[best_i], M), final[best_i][3]


def _objective(entry, M: int) -> int:
    return entry[0] + (M - 1) * entry[1] + entry[2]


def _insert(front: list, entry: tuple) -> None:
    """Keep `front` the non-dominated set of (Σt, max t, max x, max memory)."""
    a, b, c, d = entry[:4]
    for o in front:
        if o[0] <= a and o[1] <= b and o[2] <= c and o[3] <= d:
            return
    front[:] = [o for o in front if not (a <= o[0] and b <= o[1] and c <= o[2] and d <= o[3])]
    front.append(entry)


def caps_search(mem: StageMemory, L: int, lo: list[int], hi: list[int], first=(),
                enough: bool = False) -> list[int] | None:
    """Each stage's layer cap, or None as soon as the caps cannot hold the model. Between what is
    known to fit (lo) and known not to (hi, exclusive), search the stages in turn (`first` first),
    stopping once the upper ends cannot hold L layers; `enough`: also stop, with lower ends that are
    not caps, once those can hold L layers (all stages at least one)."""
    P = len(lo)
    lo, hi = list(lo), list(hi)
    if sum(hi) - P < L:  # [Constraint] every stage holds at most hi - 1
        return None
    for s in sorted(range(P), key=lambda s: s not in first):
        if enough and min(lo) >= 1 and sum(lo) >= L:
            return lo
        probes = 0
        while hi[s] - lo[s] > 1:
            probes += 1
            n = _guess(mem, s, lo[s], hi[s]) if probes <= 3 else (lo[s] + hi[s]) // 2
            if _fits(mem, s, n):
                lo[s] = n
                if enough and min(lo) >= 1 and sum(lo) >= L:
                    return lo
            else:
                hi[s] = n
                if sum(hi) - P < L:
                    return None
        if lo[s] < 1:
            return None
    return lo


def _guess(mem: StageMemory, s: int, lo: int, hi: int) -> int:
    """Where stage s's memory crosses its limit, by the secant through two layer counts already
    measured (memory is nearly linear in the layer count): a probe strictly between lo and hi.
    The answer stays exact either way; a good guess only saves cost-model calls."""
    if lo < 1:
        return 1
    r_lo = _ratio_best(mem, s, lo)
    other = hi if hi <= mem.model.num_layers and _known(mem, s, hi) else lo + 1
    if other >= hi:
        return (lo + hi) // 2
    r_other = _ratio_best(mem, s, other)
    slope = (r_other - r_lo) / (other - lo)
    if slope <= 0:
        return (lo + hi) // 2
    n = lo + int((1.0 - r_lo) / slope)
    return min(hi - 1, max(lo + 1, n))


def _ratio_best(mem: StageMemory, s: int, n: int) -> float:
    return min(mem.ratio(s, b, n) for b in ((0, 1) if mem.phased else (0,)))


def _known(mem: StageMemory, s: int, n: int) -> bool:
    return all((mem.key(s, b, n), mem.caps[s][0]) in mem.cache for b in ((0, 1) if mem.phased else (0,)))


def _fits(mem: StageMemory, s: int, n: int) -> bool:
    """Whether stage s holds n layers (alternating sliding-window models: at the better parity)."""
    return _ratio_best(mem, s, n) <= 1.0


def threshold_split(P, L, t, caps, M, x):
    """A good split fast: the smallest bottleneck stage time T for which the stages' caps (memory,
    and the most layers finishing within T) hold L layers; cheapest layers filled first."""
    values = sorted({t(s, n) for s in range(P) for n in range(1, caps[s] + 1)})

    def room(T):
        out = []
        for s in range(P):
            lo, hi = 0, caps[s]
            while lo < hi:  # most n with t(s, n) <= T
                mid = (lo + hi + 1) // 2
                if t(s, mid) <= T:
                    lo = mid
                else:
                    hi = mid - 1
            out.append(lo)
        return out

    def enough(r):
        return min(r) >= 1 and sum(r) >= L

    lo, hi = 0, len(values) - 1
    if not values or not enough(room(values[hi])):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(room(values[mid])):
            hi = mid
        else:
            lo = mid + 1
    r = room(values[lo])
    counts = [1] * P
    left = L - P
    for s in sorted(range(P), key=lambda s: t(s, 2) - t(s, 1)):  # cheapest layer first
        take = min(left, r[s] - 1)
        counts[s] += take
        left -= take
    times = [t(s, counts[s]) for s in range(P)]
    extras = [x(s, counts[s]) for s in range(P)]
    return counts, sum(times) + (M - 1) * max(times) + max(extras)


def compositions(total: int, parts: int):
    """Every way to write `total` as `parts` positive whole numbers, in order."""
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first,) + rest
