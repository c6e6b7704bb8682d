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
        self.points: dict[int, dict[int, float]] = {}  # stage -> layer count -> ratio (`_predict`)
        self.slopes: dict[int, float] = {}  # stage -> ratio per layer measured there (`_predict`)

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
        by_class: dict[tuple, int] = {}  # stages of one class (GPU types, capacities, hosts) share it
        for s in range(par.pp):
            lo = by_class.get(self.caps[s][0])
            if lo is None:
                lo, hi = 0, most
                while lo < hi:  # most n whose floor fits every GPU type of the stage
                    mid = (lo + hi + 1) // 2
                    if self._floor_fits(s, mid * per_layer):
                        lo = mid
                    else:
                        hi = mid - 1
                by_class[self.caps[s][0]] = lo
            out.append(lo)
        return out

    def _floor_fits(self, s: int, tensor: int) -> bool:
        for gpu, capacity, _, _ in self.caps[s][1]:
            if allocated_and_reserved(tensor, gpu, self.par.world_size)[1] > capacity * (1 - self.headroom):
                return False
        return True

    def holds(self, s: int, n: int) -> bool:
        """Whether stage s holds n layers (alternating sliding-window models: at the better parity)."""
        return _fits(self, s, n)

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
        if not self.phased:
            got = self.points.get(s)
            if got is None:
                got = self.points[s] = {}
            got[n] = r
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
    visits splits at least as fast; otherwise each stage's layer cap is searched first (memory grows,
    nearly linearly, with a stage's layer count: probes go where the measured points put the limit,
    `_predict`), stopping as soon as the caps cannot hold the model. The edge stages are asked first
    whether they hold one layer at all.
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
    quick = threshold_split(P, L, t, most, M, x, A, E)
    if quick is None:
        return None
    # [Constraint] every stage holds a layer: the last stage (head, logits, loss) and the first
    # (embedding, most micro-batches in flight) are the likeliest to overflow with one alone
    if not (mem.holds(P - 1, 1) and mem.holds(0, 1)):
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
    caps = caps_search(mem, L, lo, hi, first=sorted(over, key=lambda s: counts[s]), predict=True)
    if caps is None:
        return None
    upper = threshold_split(P, L, t, caps, M, x, A, E)
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
    States whose lower bound exceeds `f_ub` (a feasible split's step time, or None) are dropped.

    The bound on a state's best completion (`_suffix_bounds`): the least Σ stage times and the least
    bottleneck the remaining stages can reach under their caps. It is a true lower bound, grows with
    Σt, max t and max x, and never drops from a state to its extensions, so the states it drops are
    exactly those no split within `f_ub` passes through, and no kept state was dominated by a dropped
    one: the fronts (and their order) are those of an unbounded DP less states that cannot finish.
    A memory ratio is asked for only where a kept state needs it."""
    inf = f_ub if f_ub is not None else float("inf")
    # [Constraint] a stage holding n layers makes the step at least Σ(least stage times) + (M-1)·t(s, n)
    caps = list(caps)
    if f_ub is not None and M > 1:
        least_sum = sum(t(s, 1) for s in range(P)) + min(A) * (L - P)
        for s in range(P):
            while caps[s] > 1 and least_sum + (M - 1) * t(s, caps[s]) > f_ub:
                caps[s] -= 1
    least_sum_after, least_max_after = _suffix_bounds(P, L, t, A, caps)
    M1 = M - 1
    fronts: list[dict[int, list]] = [dict() for _ in range(P)]
    prev: dict[int, list] = {0: [(0, 0, 0, 0.0, 0, 0)]}
    for s in range(P):
        here = fronts[s]
        hi_e = L - (P - 1 - s)
        sum_after, max_after = least_sum_after[s + 1], least_max_after[s + 1]
        for b in sorted(prev):
            front = prev[b]
            low_n = (L - b) if s == P - 1 else 1
            for n in range(low_n, min(caps[s], hi_e - b) + 1):
                e = b + n
                ts, xs = t(s, n), x(s, n)
                after_sum, after_max = sum_after[L - e], max_after[L - e]
                m = None
                target = None
                for i, (sum_t, max_t, max_x, max_m, _, _) in enumerate(front):
                    st = sum_t + ts
                    mt = max_t if max_t > ts else ts
                    mx = max_x if max_x > xs else xs
                    # [Constraint] drop states that cannot beat a known feasible split
                    if st + after_sum + M1 * (mt if mt > after_max else after_max) + mx > inf:
                        continue
                    if m is None:
                        m = mem.ratio(s, b, n) if mem is not None else 0.0
                        if m > 1.0:  # [Constraint] the stage fits its GPUs; more layers would not
                            break
                    if target is None:
                        target = here.get(e)
                        if target is None:
                            target = here[e] = []
                    _insert(target, (st, mt, mx, max_m if max_m > m else m, b, i))
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


def _suffix_bounds(P, L, t, A, caps):
    """For the stages j.. P-1 holding r more layers (each at least one, at most caps[s]): the least
    Σ stage times and the least bottleneck stage time, in whole quanta (inf where r layers cannot be
    placed). Stage times are A·n + E with A >= 0, so the least sum fills the cheapest layers first and
    the least bottleneck follows min over n of max(t(j, n), bottleneck(j + 1, r - n))."""
    inf = float("inf")
    least_sum = [[inf] * (L + 1) for _ in range(P + 1)]
    least_max = [[inf] * (L + 1) for _ in range(P + 1)]
    least_sum[P][0] = 0
    least_max[P][0] = 0
    room = 0
    for j in range(P - 1, -1, -1):
        k = P - j
        if caps[j] < 1:  # this stage (so every suffix from here on) holds nothing: rows stay inf
            break
        room += caps[j]
        top = min(L, room)
        # least sum: one layer on each stage, then the cheapest per-layer costs
        base = sum(t(s, 1) for s in range(j, P))
        extra = []
        for s in sorted(range(j, P), key=lambda s: A[s]):
            take = min(caps[s] - 1, L - k - len(extra))
            if take > 0:
                extra.extend([A[s]] * take)
        row = least_sum[j]
        total = base
        if k <= top:
            row[k] = total
        for r in range(k + 1, top + 1):
            total += extra[r - k - 1]
            row[r] = total
        # least bottleneck
        nxt, row = least_max[j + 1], least_max[j]
        cap = caps[j]
        for r in range(k, top + 1):
            lo = max(1, r - (room - cap))  # the later stages hold at most their caps
            hi = min(cap, r - (k - 1))
            if lo > hi:
                continue
            # t(j, n) grows with n, nxt[r - n] shrinks: the best n is where they cross
            a, z = lo, hi
            while a < z:
                mid = (a + z) // 2
                if t(j, mid) >= nxt[r - mid]:
                    z = mid
                else:
                    a = mid + 1
            tj, tn = t(j, a), nxt[r - a]
            best = tj if tj > tn else tn
            if a > lo:
                below = nxt[r - a + 1]
                tb = t(j, a - 1)
                cand = tb if tb > below else below
                if cand < best:
                    best = cand
            row[r] = best
    return least_sum, least_max


def _objective(entry, M: int) -> int:
    return entry[0] + (M - 1) * entry[1] + entry[2]


def _insert(front: list, entry: tuple) -> None:
    """Keep `front` the non-dominated set of (Σt, max t, max x, max memory). The front is an antichain,
    so nothing in it both dominates `entry` and is dominated by it: one pass decides."""
    a, b, c, d = entry[0], entry[1], entry[2], entry[3]
    drop = False
    for o in front:
        if o[0] <= a and o[1] <= b and o[2] <= c and o[3] <= d:
            return
        if not drop and a <= o[0] and b <= o[1] and c <= o[2] and d <= o[3]:
            drop = True
    if drop:
        front[:] = [o for o in front if not (a <= o[0] and b <= o[1] and c <= o[2] and d <= o[3])]
    front.append(entry)


def caps_search(mem: StageMemory, L: int, lo: list[int], hi: list[int], first=(),
                enough: bool = False, predict: bool = False) -> list[int] | None:
    """Each stage's layer cap, or None as soon as the caps cannot hold the model. Between what is
    known to fit (lo) and known not to (hi, exclusive), search the stages in turn (`first` first, in
    its order), stopping once the upper ends cannot hold L layers; `enough`: also stop, with lower
    ends that are not caps, once those can hold L layers (all stages at least one). `predict`: probe
    where the measured points (or another stage's slope) put the crossing (`_predict`, and under
    `enough` one directed probe per stage first) instead of `_guess`; the caps, and whether they hold
    the model, are the same (memory grows with the layer count), only the probes differ, so the lower
    ends returned under `enough` may differ."""
    guess = _predict if predict else _guess
    P = len(lo)
    lo, hi = list(lo), list(hi)
    order = list(first) + [s for s in range(P) if s not in first]
    if enough and predict and not mem.phased and sum(hi) - P >= L:
        _directed_probes(mem, L, lo, hi, order)
    if sum(hi) - P < L:  # [Constraint] every stage holds at most hi - 1
        return None
    for s in order:
        if enough and min(lo) >= 1 and sum(lo) >= L:
            return lo
        probes = 0
        while hi[s] - lo[s] > 1:
            probes += 1
            n = guess(mem, s, lo[s], hi[s]) if probes <= 3 else (lo[s] + hi[s]) // 2
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


def _directed_probes(mem: StageMemory, L: int, lo: list[int], hi: list[int], order: list[int]) -> None:
    """Before settling caps one stage at a time: when only whether the caps hold L layers is asked,
    one probe per unsettled stage on the side the predicted caps point to (at the predicted cap when
    they hold the model, just above it when they do not), stopping once lo or hi decides. Narrows lo
    and hi in place; what they decide is unchanged (memory grows with the layer count)."""
    P = len(lo)
    pred = [_predict(mem, s, lo[s], hi[s]) if hi[s] - lo[s] > 1 else lo[s] for s in range(P)]
    holds = sum(pred) >= L
    for s in order:
        if hi[s] - lo[s] <= 1:
            continue
        n = _predict(mem, s, lo[s], hi[s])
        if not holds and n + 1 < hi[s]:
            n += 1
        if _fits(mem, s, n):
            lo[s] = n
        else:
            hi[s] = n
        if (min(lo) >= 1 and sum(lo) >= L) or sum(hi) - P < L:
            return


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


def _predict(mem: StageMemory, s: int, lo: int, hi: int) -> int:
    """A probe strictly between lo and hi where stage s's memory should cross its limit: the line
    through the two measured layer counts of this stage nearest the crossing (memory is nearly linear
    in the layer count), or through one with the slope of the nearest stage measured twice (stages
    differ mostly in their intercept: in-flight micro-batches, edges), or, for a stage not measured
    yet, the nearest measured stage's line; else `_guess`."""
    line = _line(mem, s) if not mem.phased else None
    if line is None and not mem.phased:
        near = min(mem.points, key=lambda k: (abs(k - s), k), default=None)
        line = _line(mem, near) if near is not None else None
    if line is None:
        return _guess(mem, s, lo, hi)
    base, r_base, slope = line
    if slope <= 0:
        return (lo + hi) // 2
    n = base + math.floor((1.0 - r_base) / slope)
    return min(hi - 1, max(lo + 1, n))


def _line(mem: StageMemory, s: int):
    """(layer count, ratio, ratio per layer) of stage s near its crossing, or None."""
    pts = mem.points.get(s)
    if not pts:
        return None
    fit = sorted(n for n, r in pts.items() if r <= 1.0)
    over = sorted(n for n, r in pts.items() if r > 1.0)
    two = (fit[-1], over[0]) if fit and over else tuple(fit[-2:]) if len(fit) >= 2 else tuple(over[:2])
    if len(two) == 2:
        a, b = two
        slope = (pts[b] - pts[a]) / (b - a)
        if slope > 0:
            mem.slopes[s] = slope
        base = a if pts[a] <= 1.0 else b
        return base, pts[base], slope
    near = min(mem.slopes, key=lambda k: (abs(k - s), k), default=None)
    if near is None:
        return None
    base = (fit or over)[0]
    return base, pts[base], mem.slopes[near]


def _ratio_best(mem: StageMemory, s: int, n: int) -> float:
    return min(mem.ratio(s, b, n) for b in ((0, 1) if mem.phased else (0,)))


def _known(mem: StageMemory, s: int, n: int) -> bool:
    return all((mem.key(s, b, n), mem.caps[s][0]) in mem.cache for b in ((0, 1) if mem.phased else (0,)))


def _fits(mem: StageMemory, s: int, n: int) -> bool:
    """Whether stage s holds n layers (alternating sliding-window models: at the better parity)."""
    return _ratio_best(mem, s, n) <= 1.0


def threshold_split(P, L, t, caps, M, x, A=None, E=None):
    """A good split fast: the smallest bottleneck stage time T for which the stages' caps (memory,
    and the most layers finishing within T) hold L layers; cheapest layers filled first. With `A`
    and `E` (t(s, n) = A[s]·n + E[s] in whole quanta) the rooms are counted in closed form."""
    if A is not None and min(A) >= 0:
        return _threshold_linear(P, L, t, caps, M, x, A, E)
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
    return _fill_rooms(P, L, t, x, M, room(values[lo]))


def _fill_rooms(P, L, t, x, M, r):
    """One layer per stage, the rest handed out cheapest layer first up to each stage's room `r[s]`;
    returns (counts, step time) of that split."""
    counts = [1] * P
    left = L - P
    for s in sorted(range(P), key=lambda s: t(s, 2) - t(s, 1)):  # cheapest layer first
        take = min(left, r[s] - 1)
        counts[s] += take
        left -= take
    times = [t(s, counts[s]) for s in range(P)]
    extras = [x(s, counts[s]) for s in range(P)]
    return counts, sum(times) + (M - 1) * max(times) + max(extras)


def _threshold_linear(P, L, t, caps, M, x, A, E):
    """`threshold_split` for linear integer stage times: the room of stage s within T is
    min(cap, (T - E)/A) layers, and the smallest T that holds L layers is found by bisecting the
    integers (room only grows at stage times t(s, n), so that T is one of them: the same split)."""
    def room(T):
        out = []
        for s in range(P):
            c = caps[s]
            if c < 1 or T < E[s] + A[s]:
                out.append(0)
            elif A[s] == 0:
                out.append(c)
            else:
                n = (T - E[s]) // A[s]
                out.append(c if n > c else n)
        return out

    def enough(r):
        return min(r) >= 1 and sum(r) >= L

    usable = [s for s in range(P) if caps[s] >= 1]
    if not usable:
        return None
    lo = min(t(s, 1) for s in usable)
    hi = max(t(s, caps[s]) for s in usable)
    if not enough(room(hi)):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(room(mid)):
            hi = mid
        else:
            lo = mid + 1
    return _fill_rooms(P, L, t, x, M, room(lo))


def compositions(total: int, parts: int):
    """Every way to write `total` as `parts` positive whole numbers, in order."""
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first,) + rest
