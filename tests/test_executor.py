"""The Ray executor (sharder.cluster.executor): real multi-rank gloo runs of a tiny Llama in Ray actors,
measured against the plan's prediction and against the fake-tensor referee; faults; clean-up.

One local Ray for the module (2 logical A100-80 GPUs + 8 logical CPUs on this machine); `run_plan`
attaches to it. Each strategy runs once (cached) and is checked twice:
* measured == referee (`simulate_rank`, fake tensors): the executor counts the referee's way, so they
  must agree (to the byte today; the check allows 0.5 % on the quietest step, 5 % on the peak over
  steps, see test_strategy_measured_matches_referee);
* measured vs predicted within TOLERANCE (3 %, run_plan's default): the cost model's accuracy. Where the
  cost model misses today the test is xfail (not strict) with the miss written in the reason.
"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from sharder.cost_model import estimate  # noqa: E402
from sharder.errors import SharderInputError  # noqa: E402
from sharder.model_loader import load_model  # noqa: E402
from sharder.parallel import ParallelConfig  # noqa: E402
from sharder.plan_file import Plan  # noqa: E402
from sharder.pool_spec import parse_gpus  # noqa: E402
from sharder.workload import Workload  # noqa: E402

TOLERANCE = 0.03
REFEREE_TOLERANCE = 0.005
LATE_RELEASE_TOLERANCE = 0.05
STEPS = 2

TRAIN = Workload(mode="train", batch=2, seq=32, precision="32-true")
TRAIN_MB2 = Workload(mode="train", batch=2, seq=32, micro_batches=2, precision="32-true")

# name -> (parallel, workload, pool). tp2 runs on logical A100-80s (GPU bundles, no CUDA: CPU tensors,
# compared with the tensor part of the prediction).
STRATEGIES = {
    "fsdp2": (ParallelConfig(dp=2, zero=3), TRAIN, "2xcpu"),
    "tp2": (ParallelConfig(tp=2), TRAIN, "2xA100-80"),
    "dp2xtp2": (ParallelConfig(dp=2, tp=2, zero=3), TRAIN, "4xcpu"),
    "pp2-gpipe": (ParallelConfig(pp=2, schedule="gpipe"), TRAIN_MB2, "2xcpu"),
}

# Cost-model misses measured on this machine (torch 2.13.0+cpu, transformers 5.24), tiny-llama,
# batch 2 x seq 32, fp32, with the cost model as it stood when this was written (it is being worked on;
# an XPASS means it caught up): error_pct = 100 * (measured - predicted) / predicted.
PREDICTION_MISSES: dict[str, str] = {}  # every strategy within 3 % (benchmarks/results/executor.md)

# Where a real gloo run and the fake-tensor referee differ (a referee gap, not an executor bug).
REFEREE_MISSES = {
    "pp2-gpipe": "over real gloo each stage also holds the in-flight p2p send of one micro-batch until the "
                 "schedule waits on it (stage 0: its output activation, stage 1: its input gradient; 8,192 B "
                 "each here: 1,080,680 vs 1,072,488 B and 1,212,920 vs 1,204,728 B); under the fake process "
                 "group a send completes at once, so the referee does not see it",
}


def make_plan(parallel: ParallelConfig, workload: Workload, gpus: str) -> dict:
    model = load_model("tiny-llama")
    cluster = parse_gpus(gpus)
    return Plan(model=model, workload=workload, parallel=parallel, cluster=cluster,
                ranks=estimate(model, workload, parallel, cluster)).to_dict()


def leftovers() -> tuple[list[str], list[str]]:
    """(alive actor ids, placement groups not removed) of the connected Ray."""
    from ray.util import placement_group_table

    from sharder.cluster.executor import live_actor_states

    deadline = time.monotonic() + 10
    while True:
        actors = [a for a, state in live_actor_states().items() if state != "DEAD"]
        groups = [g for g, info in placement_group_table().items() if info["state"] != "REMOVED"]
        if (not actors and not groups) or time.monotonic() > deadline:
            return actors, groups
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pool():
    from sharder.cluster.pool import local_ray

    with local_ray(parse_gpus("2xA100-80"), num_cpus=8) as nodes:
        yield nodes


_RUNS: dict[str, tuple[dict, dict, float]] = {}


def run_strategy(name: str) -> tuple[dict, dict, float]:
    """(plan, result, wall seconds), run once per module."""
    from sharder.cluster.executor import run_plan

    if name not in _RUNS:
        plan = make_plan(*STRATEGIES[name])
        t0 = time.perf_counter()
        result = run_plan(plan, steps=STEPS, timeout_s=300, tolerance=TOLERANCE)
        _RUNS[name] = (plan, result, time.perf_counter() - t0)
    return _RUNS[name]


def referee_peak(name: str, rank: int) -> int:
    from sharder.cluster.simulate import simulate_rank

    parallel, workload, _ = STRATEGIES[name]
    return simulate_rank(load_model("tiny-llama"), workload, parallel, rank).peak_bytes


# ------------------------------------------------------------------ strategies


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_runs(pool, name):
    plan, result, _ = run_strategy(name)
    ranks = result["ranks"]
    assert [r["status"] for r in ranks] == ["ok"] * len(plan["ranks"]), [r["error"] for r in ranks]
    assert result["launch_overhead_s"] and result["launch_overhead_s"] > 0
    assert result["ray"] == "attached"
    for row in ranks:
        assert row["measured_peak_allocated_bytes"] > 0
        assert row["step_time_s"] > 0 and row["tokens_per_s"] > 0
        assert row["last_loss"] is None or 0 < row["last_loss"] < 20  # finite: rotary rebuilt
        assert row["measured_layers"] == row["layers"]
        assert row["compared_with"] == "peak_tensor_bytes"
        assert row["measured_rss_bytes"] is None or row["measured_rss_bytes"] > row["measured_peak_allocated_bytes"]
    assert ranks[-1]["last_loss"] is not None  # the last rank holds the head (and the loss)
    assert not any(leftovers())


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=REFEREE_MISSES[n], strict=False)) if n in REFEREE_MISSES
    else n for n in STRATEGIES])
def test_strategy_measured_matches_referee(pool, name):
    """One rank of each pipeline stage against simulate_rank (fake tensors, same tracker).

    The quietest measured step must match (REFEREE_TOLERANCE); the peak over steps may sit a little
    higher (LATE_RELEASE_TOLERANCE): over real gloo one step's peak now and then sits higher (seen once
    in ~40 FSDP2 steps: +49,664 B, +2.7 %, on one rank; probably a collective's buffers released late
    by the gloo thread)."""
    _, result, _ = run_strategy(name)
    assert all(r["status"] == "ok" for r in result["ranks"])
    parallel = STRATEGIES[name][0]
    for row in {parallel.coords(r["rank"])[0]: r for r in result["ranks"]}.values():
        expected = referee_peak(name, row["rank"])
        quietest, peak = min(row["measured_step_peaks_bytes"]), row["measured_peak_allocated_bytes"]
        assert abs(quietest - expected) <= REFEREE_TOLERANCE * expected, (row["rank"], quietest, expected)
        assert expected <= peak <= (1 + LATE_RELEASE_TOLERANCE) * expected, (row["rank"], peak, expected)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=PREDICTION_MISSES[n], strict=False)) if n in PREDICTION_MISSES
    else n for n in STRATEGIES])
def test_strategy_prediction_within_tolerance(pool, name):
    plan, result, _ = run_strategy(name)
    errors = {r["rank"]: r["error_pct"] for r in result["ranks"]}
    assert all(r["status"] == "ok" for r in result["ranks"])
    assert all(abs(e) <= 100 * TOLERANCE for e in errors.values()), errors
    assert result["ok"]


def test_gpu_ranks_get_logical_gpus(pool):
    _, result, _ = run_strategy("tp2")
    assert all(r["gpu"] == "A100-80" and r["device"] == "cpu" for r in result["ranks"])
    assert len({r["ray_node_id"] for r in result["ranks"]}) == 1


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("kind,status,timeout_s", [("raise", "error", 300), ("kill", "lost", 300),
                                                    ("hang", "timeout", 20)])
def test_fault_is_reported_and_cleaned_up(pool, kind, status, timeout_s):
    from sharder.cluster.executor import run_plan

    plan = make_plan(*STRATEGIES["fsdp2"])
    result = run_plan(plan, steps=1, timeout_s=timeout_s, inject_fault={"rank": 1, "kind": kind})
    by_rank = {r["rank"]: r for r in result["ranks"]}
    assert not result["ok"]
    assert result["failed_rank"] == 1, result["error"]
    assert by_rank[1]["status"] == status and by_rank[1]["error"]
    assert by_rank[0]["status"] != "ok" and by_rank[0]["error"]
    if kind == "raise":
        assert "injected fault on rank 1" in by_rank[1]["error"]
        assert by_rank[0]["status"] == "stopped"
    actors, groups = leftovers()
    assert actors == [] and groups == []


def test_pool_too_small_fails_before_anything_starts(pool):
    from sharder.cluster.executor import live_actor_states, run_plan

    before = set(live_actor_states())
    plan = make_plan(ParallelConfig(dp=4, zero=3), TRAIN, "4xA100-80")
    with pytest.raises(SharderInputError, match=r"cannot hold the plan: plan node 0 needs 4xA100-80") as exc:
        run_plan(plan)
    assert "\n" not in str(exc.value)
    assert set(live_actor_states()) == before
    assert leftovers() == ([], [])


def test_master_port_in_use_is_one_line(pool):
    from sharder.cluster.executor import run_plan

    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SharderInputError, match=f"port {port} .* is in use"):
            run_plan(make_plan(*STRATEGIES["fsdp2"]), master_port=port)
    assert leftovers() == ([], [])


def test_plan_every_rank_refuses_is_input_error(pool):
    from sharder.cluster.executor import run_plan

    plan = make_plan(*STRATEGIES["fsdp2"])
    plan["model"]["hf_config"] = {}
    with pytest.raises(SharderInputError, match="has no hf_config"):
        run_plan(plan, steps=1, timeout_s=120)
    assert leftovers() == ([], [])


def test_bad_fault_kind_is_input_error():
    from sharder.cluster.executor import run_plan

    with pytest.raises(SharderInputError, match="inject_fault kind"):
        run_plan(make_plan(*STRATEGIES["fsdp2"]), inject_fault={"rank": 0, "kind": "explode"})


# ------------------------------------------------------------------ the `sharder run` command


def test_cli_run_prints_per_rank_json_and_exit_code(pool, capsys):
    import json

    from sharder.cli import main

    rc = main(["run", "--model", "tiny-llama", "--gpus", "2xA100-80", "--tp", "2", "--mode", "train",
               "--batch", "2", "--seq", "32", "--precision", "32-true", "--steps", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in out["ranks"]] == ["ok", "ok"], out["error"]
    assert rc == (0 if out["ok"] else 1)
    assert all(r["measured_peak_allocated_bytes"] > 0 and r["error_pct"] is not None for r in out["ranks"])
    assert leftovers() == ([], [])


def test_cli_run_refuses_a_plan_that_does_not_fit(capsys):
    from sharder.cli import main

    rc = main(["run", "--model", "llama-70b", "--gpus", "1xA100-80", "--mode", "train"])
    err = capsys.readouterr()
    assert rc == 1
    assert "does not fit" in err.out + err.err and "Traceback" not in err.out + err.err


# ------------------------------------------------------------------ without Ray


def test_run_rank_in_process_world_size_one():
    """A GPU machine without Ray calls run_rank directly; one rank over gloo in this process."""
    from sharder.cluster.rank_worker import run_rank

    plan = make_plan(ParallelConfig(), TRAIN, "1xcpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run_rank(plan, 0, 1, "127.0.0.1", port, steps=1, device="cpu")
    predicted = plan["ranks"][0]["peak_tensor_bytes"]
    assert out["measured_peak_allocated_bytes"] == referee_peak_plain(ParallelConfig(), TRAIN, 0)
    assert abs(out["measured_peak_allocated_bytes"] - predicted) <= TOLERANCE * predicted
    assert out["step_time_s"] > 0 and out["layers"] == [0, 2]


def test_run_rank_one_rank_on_fake_process_group():
    from sharder.cluster.rank_worker import run_rank

    parallel = ParallelConfig(dp=2, tp=2, zero=3)
    plan = make_plan(parallel, TRAIN, "4xcpu")
    out = run_rank(plan, 3, 4, steps=1, device="cpu", fake_pg=True)
    assert out["fake_pg"] and out["rank"] == 3
    assert out["measured_peak_allocated_bytes"] == referee_peak_plain(parallel, TRAIN, 3)


def referee_peak_plain(parallel, workload, rank) -> int:
    from sharder.cluster.simulate import simulate_rank

    return simulate_rank(load_model("tiny-llama"), workload, parallel, rank).peak_bytes


# ------------------------------------------------------------------ DeepSpeed
# DeepSpeed 0.19.8 ZeRO-1/2 at its defaults (cluster/rank_worker.py `_deepspeed`): tiny-llama, 2 ranks over
# gloo on CPU, one measured step. Its reduce bucket (5e8 elements in the model dtype, made at each
# backward's first gradient hook) is most of every peak, so beside the whole peak the part outside the
# bucket is compared too. `bf16` casts the model to bf16 (fp32 masters and AdamW states).

TRAIN_BF16 = Workload(mode="train", batch=2, seq=32, precision="bf16-mixed")
DEEPSPEED = {
    "zero2": (ParallelConfig(framework="deepspeed", dp=2, zero=2), TRAIN, "2xcpu"),
    "zero1": (ParallelConfig(framework="deepspeed", dp=2, zero=1), TRAIN, "2xcpu"),
    "zero2-bf16": (ParallelConfig(framework="deepspeed", dp=2, zero=2), TRAIN_BF16, "2xcpu"),
    "zero1-bf16": (ParallelConfig(framework="deepspeed", dp=2, zero=1), TRAIN_BF16, "2xcpu"),
}

# Measured on this machine (both ranks alike): the cost model counts the bucket from DeepSpeed's first
# gradient hook to the end of the backward, with DeepSpeed's own reduction and optimizer step; every case
# lands 8 B under the measurement (benchmarks/results/executor.md). A case that misses goes here with its numbers.
DEEPSPEED_MISSES: dict[str, str] = {}  # all four within tolerance since the bucket is counted from the first hook


def run_deepspeed(name: str) -> tuple[dict, dict]:
    from sharder.cluster.executor import run_plan

    key = f"deepspeed-{name}"
    if key not in _RUNS:
        plan = make_plan(*DEEPSPEED[name])
        _RUNS[key] = (plan, run_plan(plan, steps=1, timeout_s=600), 0.0)
    return _RUNS[key][:2]


def deepspeed_bucket(name: str) -> int:
    from sharder.strategies import deepspeed_zero

    return deepspeed_zero.bucket_bytes(4 if DEEPSPEED[name][1].precision == "32-true" else 2)


def deepspeed_case(name: str, misses: dict):
    marks = [pytest.mark.xfail(strict=False, reason=misses[name])] if name in misses else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.deepspeed
@pytest.mark.parametrize("name", list(DEEPSPEED))
def test_deepspeed_runs(pool, name):
    """The first DeepSpeed run compiles its CPU communication extension (~2 min); later runs ~20 s."""
    _, result = run_deepspeed(name)
    assert [r["status"] for r in result["ranks"]] == ["ok", "ok"], result["error"]
    assert all(r["measured_peak_allocated_bytes"] > 0 for r in result["ranks"])
    assert leftovers() == ([], [])


@pytest.mark.deepspeed
@pytest.mark.parametrize("name", list(DEEPSPEED))
def test_deepspeed_prediction_within_tolerance(pool, name):
    """The whole peak, bucket included (a bucket capped at the parameter count missed by 99.9 %)."""
    _, result = run_deepspeed(name)
    assert all(r["status"] == "ok" for r in result["ranks"])
    errors = [r["error_pct"] for r in result["ranks"]]
    assert all(abs(e) <= 100 * TOLERANCE for e in errors), errors


@pytest.mark.deepspeed
@pytest.mark.parametrize("name", [deepspeed_case(n, DEEPSPEED_MISSES) for n in DEEPSPEED])
def test_deepspeed_prediction_outside_bucket_within_tolerance(pool, name):
    plan, result = run_deepspeed(name)
    bucket = deepspeed_bucket(name)
    assert all(r["status"] == "ok" for r in result["ranks"])
    for r, pred in zip(result["ranks"], plan["ranks"]):
        predicted, measured = pred["peak_tensor_bytes"] - bucket, r["measured_peak_allocated_bytes"] - bucket
        assert abs(measured - predicted) <= TOLERANCE * predicted, (r["rank"], predicted, measured)


@pytest.mark.deepspeed
@pytest.mark.parametrize("name", list(DEEPSPEED))
def test_deepspeed_flat_parameters_exact(pool, name):
    """Every parameter is a view of DeepSpeed's one flat model-dtype group, replicated on every rank."""
    plan, result = run_deepspeed(name)
    for r, pred in zip(result["ranks"], plan["ranks"]):
        assert r["measured_breakdown"]["parameters"] == pred["breakdown"]["parameters"]


# tiny-llama's trainable parameters in model.parameters() order (embedding, 2 x 9 per layer, norm, head)
TINY_LLAMA_NUMELS = [16384] + [4096, 2048, 2048, 4096, 8192, 8192, 8192, 64, 64] * 2 + [64, 16384]


def test_deepspeed_zero12_allocations_as_measured():
    """strategies/deepspeed_zero against the allocations seen in the runs above (2 ranks, tracked at
    DeepSpeed's own calls): 106,816 parameters, no alignment padding, partitions of 53,408."""
    from sharder.strategies import deepspeed_zero as ds

    n = sum(TINY_LLAMA_NUMELS)
    assert (ds.flat_numel(n, 2), ds.partition_numel(n, 2)) == (106_816, 53_408)
    # grads_in_partition: rank 0 holds layer 1's q_proj whole, rank 1 starts 32 elements into it
    assert [ds.gradient_partition_numel(TINY_LLAMA_NUMELS, 2, r) for r in (0, 1)] == [57_472, 53_440]
    for model_bytes in (4, 2):
        states = ds.zero12_state_bytes(TINY_LLAMA_NUMELS, 2, 0, model_bytes)
        # flat group; fp32 master + exp_avg + exp_avg_sq + AdamW step + DeepSpeed's grad norm
        assert states["parameters"] == 106_816 * model_bytes
        assert states["optimizer_states"] == 3 * 213_632 + 8
        assert states["gradients"] == 57_472 * model_bytes
        # measured: bucket 2e9 / 1e9 B; its reduction +427,264 / +213,632 B; the step +640,896 B (AdamW)
        assert ds.bucket_bytes(model_bytes) == 500_000_000 * model_bytes
        assert ds.reduction_bytes(n, model_bytes) == n * model_bytes
        assert sum(ds.step_moment(TINY_LLAMA_NUMELS, 2, 0, model_bytes).values()) == 640_896


def test_deepspeed_zero12_alignment_padding():
    """nccl_start_alignment_factor (2) x world: 3 ranks pad 106,816 to 106,818; the last rank's
    averaged gradients end in 2 zeros."""
    from sharder.strategies import deepspeed_zero as ds

    n = sum(TINY_LLAMA_NUMELS)
    assert (ds.flat_numel(n, 3), ds.partition_numel(n, 3)) == (106_818, 35_606)
    assert [ds.gradient_pad_numel(TINY_LLAMA_NUMELS, 3, r) for r in range(3)] == [0, 0, 2]
