"""The solver: equal to exhaustive search on small pools, proportional splits on mixed pools, pins,
--min and the infeasible answer. Each test runs in milliseconds."""

import itertools

import pytest

from sharder.errors import SharderInputError
from sharder.model_loader import load_model
from sharder.pool_spec import parse_gpus
from sharder.solver import (SolveOptions, _Search, best_split, candidate_space, exhaustive, fewest_gpus, feasible,
                            helpful_knobs, largest_batch, solve, worst_ratio)
from sharder.step_time import StepModel
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

TRAIN = dict(mode="train", seq=2048, precision="bf16-mixed")


def _key(plan):
    """(step quanta, worst memory ratio): what the solver ranks by."""
    counts = [e - s for s, e in plan.parallel.stage_layers(plan.model.num_layers)]
    sm = StepModel(plan.model, plan.workload, plan.parallel, plan.cluster)
    return sm.quanta(counts), worst_ratio(plan.ranks, plan.headroom)


@pytest.mark.parametrize("name,layers,work,pool", [
    ("tiny-llama", 6, dict(), "2xA100-80"),
    ("tiny-llama", 8, TRAIN, "4xA100-80"),
    ("llama-2-7b", 12, TRAIN, "2xA100-80+2xRTX4090"),
    ("llama-2-7b", 16, dict(), "2xA100-40+2xRTX4090"),
    ("llama-2-7b", 8, dict(TRAIN, batch=2), "A100-80+A100-40+RTX4090+RTX3090"),
    ("tiny-gemma2", 6, dict(seq=4096, max_new_tokens=64), "3xL4"),
])
def test_equals_exhaustive_search(name, layers, work, pool):
    model = load_model(name).with_layers(layers)
    w, cluster = Workload(**work), parse_gpus(pool)
    best = solve(model, w, cluster, SolveOptions(top=1)).best
    ref = exhaustive(model, w, cluster, SolveOptions())
    assert best is not None and ref is not None
    quanta, ratio = _key(best)
    assert quanta == ref[0] and ratio == pytest.approx(ref[1], abs=1e-12)


def test_split_dp_equals_every_contiguous_split():
    """best_split against all compositions, on a mixed pool where memory binds."""
    model = load_model("llama-2-7b").with_layers(10)
    cluster = parse_gpus("A100-80+RTX4090+A100-40")
    w = Workload(mode="finetune", batch=6, micro_batches=6, seq=2048, precision="bf16-mixed")
    par = ParallelConfig(pp=3)
    search = _Search(model, w, cluster, SolveOptions())
    sm, mem = search.step_model(w, par), search.memory(w, par)
    counts, quanta, _ = best_split(sm, mem, 10)
    starts = (0, counts[0], counts[0] + counts[1])
    ratio = max(mem.ratio(s, starts[s], n) for s, n in enumerate(counts))
    brute = []
    for a, b in itertools.product(range(1, 9), repeat=2):
        split = (a, b, 10 - a - b)
        if split[2] < 1:
            continue
        starts = (0, a, a + b)
        r = max(mem.ratio(s, starts[s], n) for s, n in enumerate(split))
        if r <= 1.0:
            brute.append((sm.quanta(split), r, split))
    assert (quanta, ratio) == min(brute)[:2]
    assert sm.quanta(counts) == quanta


def test_mixed_pool_split_follows_speed():
    """LoRA on an H100 and an A100 (memory to spare): layers in proportion to bf16 speed (989 : 312)."""
    model = load_model("llama-2-7b")
    w = Workload(mode="lora", seq=2048)
    opts = SolveOptions(top=1, global_batch=32, pinned={"tp": 1, "pp": 2, "zero": 0}, pinned_workload={"ac": "full"})
    best = solve(model, w, parse_gpus("H100+A100-80"), opts).best
    fast, slow = best.parallel.split
    assert abs(fast - 32 * 989 / (989 + 312)) <= 1.5 and fast + slow == 32


def test_mixed_pool_split_follows_memory_when_speeds_tie():
    """Inference prefill on two A100s of different memory: equal time per layer, so the memory
    tie-break gives the 80 GB card about twice the layers of the 40 GB card."""
    model = load_model("llama-2-13b")
    best = solve(model, Workload(), parse_gpus("A100-80+A100-40"), SolveOptions(top=1, pinned={"tp": 1})).best
    big, small = best.parallel.split
    assert big + small == 40 and 1.6 <= big / small <= 2.6
    ratios = [r.peak_reserved_bytes / r.capacity_bytes for r in best.ranks]
    assert abs(ratios[0] - ratios[1]) < 0.06


def test_seed_70b_on_three_a100_is_balanced_pp3():
    m = load_model("llama-70b")
    best = solve(m, Workload(), parse_gpus("3xA100-80"), SolveOptions()).best
    assert best.parallel.pp == 3 and sorted(best.parallel.split) == [26, 27, 27]


def test_pinned_flags_are_respected():
    model = load_model("llama-2-7b").with_layers(8)
    pins = {"tp": 2, "pp": 2, "zero": 0, "schedule": "gpipe", "split": (5, 3)}
    opts = SolveOptions(top=3, pinned=pins, pinned_workload={"ac": "full", "micro_batches": 2}, global_batch=8)
    result = solve(model, Workload(**TRAIN), parse_gpus("8xA100-80"), opts)
    assert result.plans
    for p in result.plans:
        assert (p.parallel.tp, p.parallel.pp, p.parallel.zero, p.parallel.schedule) == (2, 2, 0, "gpipe")
        assert p.parallel.split == (5, 3) and p.workload.ac == "full" and p.workload.micro_batches == 2
        assert p.global_batch == 8


def test_plans_compare_at_one_global_batch_and_rank_by_speed():
    model = load_model("llama-2-7b").with_layers(8)
    result = solve(model, Workload(**TRAIN), parse_gpus("8xA100-80"), SolveOptions(top=5))
    assert {p.global_batch for p in result.plans} == {8}
    speeds = [p.tokens_per_s for p in result.plans]
    assert speeds == sorted(speeds, reverse=True)


def test_pins_no_candidate_matches_is_bad_input():
    with pytest.raises(SharderInputError, match="--tp 3"):
        solve(load_model("llama-70b"), Workload(), parse_gpus("4xA100-80"), SolveOptions(pinned={"tp": 3}))


def test_infeasible_gives_empty_plans_and_closest():
    result = solve(load_model("llama-70b"), Workload(**TRAIN), parse_gpus("2xA100-80"), SolveOptions())
    assert result.plans == [] and result.best is None
    assert result.closest is not None and not result.closest.fits
    assert result.considered > 0


def test_fewest_gpus():
    m = load_model("llama-70b")
    opts = SolveOptions()
    assert fewest_gpus(m, Workload(), lambda n: parse_gpus(f"{n}xA100-80"), opts) == 2
    assert fewest_gpus(load_model("llama-2-13b"), Workload(), lambda n: parse_gpus(f"{n}xA100-40"), opts) == 1
    assert not feasible(m, Workload(), parse_gpus("A100-80"), opts)


def test_helpful_knobs_name_what_fits():
    knobs = helpful_knobs(load_model("llama-70b"), Workload(), parse_gpus("A100-80"), SolveOptions())
    assert knobs[:2] == ["8-bit weights (--quant int8)", "4-bit weights (--quant nf4)"]
    knobs = helpful_knobs(load_model("llama-2-7b"), Workload(**TRAIN), parse_gpus("RTX4090"), SolveOptions())
    assert any(k.startswith("LoRA (--mode lora") for k in knobs), knobs
    assert "activation checkpointing (--ac full)" not in knobs


def test_candidate_space_constraints():
    model = load_model("llama-70b")
    space = candidate_space(model, Workload(**TRAIN), parse_gpus("2x8xH100"), SolveOptions())
    assert space
    for w, par in space:
        assert par.world_size == 16 and par.tp <= 8 and model.num_kv_heads % par.tp == 0
        assert w.batch * par.dp == 16  # one global batch: --batch × GPUs
        if par.pp > 1 and par.schedule == "1f1b":
            assert w.micro_batches >= par.pp
        if par.offload != "none":
            assert par.zero >= 2


def test_moe_searches_expert_degree():
    model = load_model("tiny-mixtral")
    eps = {par.ep for _, par in candidate_space(model, Workload(**TRAIN), parse_gpus("4xA100-80"), SolveOptions())}
    assert eps == {1, 2, 4}


def test_largest_batch_is_the_edge_of_fitting():
    m, pool = load_model("llama-70b"), parse_gpus("2xA100-80")
    w = Workload(seq=2048, max_new_tokens=2048)
    most = largest_batch(m, w, pool, SolveOptions())
    assert most >= 1
    assert solve(m, Workload(seq=2048, max_new_tokens=2048, batch=most), pool, SolveOptions(top=1)).plans
    assert not solve(m, Workload(seq=2048, max_new_tokens=2048, batch=most + 1), pool, SolveOptions(top=1)).plans
    assert largest_batch(m, w, parse_gpus("A100-80"), SolveOptions()) == 0


# ------------------------------------------------------------------- the solver's fast paths (exact)
def _small_instances(seed: int, count: int):
    import random

    rng = random.Random(seed)
    for _ in range(count):
        P = rng.randint(2, 5)
        L = rng.randint(P, 14)
        A = [rng.choice([1, 2, 3]) for _ in range(P)]  # few values: many ties in time
        E = [rng.choice([0, 1, 4]) for _ in range(P)]
        xs = {(s, n): rng.choice([0, 0, 1, 2]) for s in range(P) for n in range(1, L + 1)}
        caps = [rng.randint(1, L) for _ in range(P)]
        caps[0] += max(0, L - sum(caps))
        base = [rng.choice([0.2, 0.3]) for _ in range(P)]
        slope = [rng.choice([0.05, 0.1]) for _ in range(P)]
        yield P, L, A, E, xs, caps, rng.randint(1, 6), base, slope


class _LinearMemory:
    """Memory ratio base + slope·n (rounded, so splits tie in memory too)."""

    phased = False

    def __init__(self, base, slope):
        self.base, self.slope = base, slope

    def ratio(self, s, b, n):
        return round(self.base[s] + self.slope[s] * n, 2)


def test_pareto_dp_is_the_fastest_split_then_the_leanest():
    """The DP's bounds drop only states that cannot finish within f_ub: against every composition."""
    from sharder.layer_split import _pareto_dp, compositions

    for P, L, A, E, xs, caps, M, base, slope in _small_instances(7, 120):
        def t(s, n):
            return A[s] * n + E[s]

        def x(s, n):
            return xs[(s, n)]

        mem = _LinearMemory(base, slope)
        every = []
        for counts in compositions(L, P):
            if any(n > c for n, c in zip(counts, caps)):
                continue
            times = [t(s, n) for s, n in enumerate(counts)]
            quanta = sum(times) + (M - 1) * max(times) + max(x(s, n) for s, n in enumerate(counts))
            ratio = max(mem.ratio(s, 0, n) for s, n in enumerate(counts))
            if ratio <= 1.0:
                every.append((quanta, ratio))
        for f_ub in (None, min(every)[0] if every else None):
            got = _pareto_dp(P, L, t, x, M, A, caps, f_ub, mem)
            if not every:
                assert got is None
                continue
            counts, quanta, ratio = got
            assert (quanta, ratio) == min(every)
            assert sum(counts) == L and all(1 <= n <= c for n, c in zip(counts, caps))


def test_threshold_split_closed_form_equals_the_generic_search():
    from sharder.layer_split import threshold_split

    for P, L, A, E, xs, caps, M, _, _ in _small_instances(11, 300):
        caps = [c if (s + L) % 5 else 0 for s, c in enumerate(caps)]  # some stages hold nothing

        def t(s, n):
            return A[s] * n + E[s]

        def x(s, n):
            return xs[(s, n)]

        assert threshold_split(P, L, t, caps, M, x, A, E) == threshold_split(P, L, t, caps, M, x)


def test_plans_are_checked_lazily_but_chosen_as_if_checked_on_arrival():
    """`_Found` checks a plan's ranks only when a stop decision needs it: same decisions, same plans."""
    import random

    from sharder.solver import _Found

    class Search:
        def __init__(self, fails):
            self.fails, self.checked = fails, []

        def verify(self, work, par):
            self.checked.append(par)
            return None if par in self.fails else (f"ranks {par}", (par * 37 % 11) / 10)

    rng = random.Random(3)
    saved = 0
    for _ in range(300):
        top = rng.randint(1, 4)
        events = [(rng.choice(["bound", "plan"]), rng.randint(0, 30)) for _ in range(rng.randint(1, 25))]
        fails = {i for i in range(len(events)) if rng.random() < 0.3}
        # eager reference: the solver as it was, checking every plan that may enter on arrival
        eager, eager_answers, eager_checks = [], [], 0
        for i, (kind, q) in enumerate(events):
            beyond = len(eager) >= top and q > eager[top - 1][0]
            if kind == "bound":
                eager_answers.append(beyond)
            elif not beyond:
                eager_checks += 1
                if i not in fails:
                    eager.append((q, (i * 37 % 11) / 10, i, None, i, f"ranks {i}", None))
                    eager.sort(key=lambda f: f[:3])
                    del eager[top:]
        search = Search(fails)
        found = _Found(search, top)
        answers = []
        for i, (kind, q) in enumerate(events):
            if kind == "bound":
                answers.append(found.beyond(q))
            else:
                found.add(q, i, None, i, None)
        assert answers == eager_answers
        assert found.best() == eager
        assert len(search.checked) == len(set(search.checked))
        saved += eager_checks - len(search.checked)
    assert saved > 0
