"""The seed examples of the planner, each with its workload pinned."""

import json

from sharder.cli import main
from sharder.cost_model import estimate
from sharder.model_loader import load_model
from sharder.parallel import ParallelConfig
from sharder.pool_spec import parse_gpus
from sharder.solver import SolveOptions, solve
from sharder.workload import Workload

INFER_70B = Workload(mode="inference", batch=1, seq=4096, precision="bf16-true")


def test_70b_bf16_inference_does_not_fit_one_a100():
    [r] = estimate(load_model("llama-70b"), INFER_70B, ParallelConfig(), parse_gpus("A100-80"))
    assert not r.fits
    assert r.breakdown["parameters"] == 137_953_296_384


def test_70b_bf16_inference_fits_three_a100_with_pp3_balanced():
    m = load_model("llama-70b")
    result = solve(m, INFER_70B, parse_gpus("3xA100-80"), SolveOptions())
    best = result.best
    assert best is not None and best.parallel.pp == 3 and best.parallel.tp == 1
    assert sum(r.breakdown["parameters"] for r in best.ranks) == 137_953_296_384
    # one decoder layer's memory: its bf16 weights and its share of the KV cache
    layer_bytes = m.layer_params() * 2 + 4096 * 2 * m.kv_size * 2
    peaks = [r.peak_allocated_bytes for r in best.ranks]
    assert max(peaks) - min(peaks) <= layer_bytes
    # buffers, KV cache and the prefill working set are reported apart from the parameters
    assert all(r.breakdown["kv_cache"] > 0 and r.breakdown["activations"] > 0 and r.breakdown["other"] > 0
               for r in best.ranks)


def test_full_finetune_needs_several_times_inference():
    m = load_model("llama-2-7b")
    pool = parse_gpus("A100-80")
    infer = estimate(m, Workload(mode="inference", batch=1, seq=2048), ParallelConfig(), pool)[0]
    tune = estimate(m, Workload(mode="finetune", batch=1, seq=2048, precision="bf16-mixed"), ParallelConfig(), pool)[0]
    assert tune.peak_allocated_bytes > 4 * infer.peak_allocated_bytes


def test_lora_r16_fits_one_rtx4090():
    w = Workload(mode="lora", batch=1, seq=2048, lora_rank=16, ac="full", precision="bf16-true")
    [r] = estimate(load_model("llama-2-7b"), w, ParallelConfig(), parse_gpus("RTX4090"))
    assert r.fits
    assert r.breakdown["optimizer_states"] < 100 * 2 ** 20  # AdamW on the adapters only


def test_qlora_nf4_fits_16gb():
    w = Workload(mode="qlora", batch=1, seq=2048, lora_rank=16, ac="full", precision="bf16-true")
    [r] = estimate(load_model("llama-2-7b"), w, ParallelConfig(), parse_gpus("V100-16"))
    assert r.fits and r.breakdown["parameters"] < 4.5 * 2 ** 30


def test_quick_start_command(capsys):
    assert main(["plan", "--model", "llama-70b", "--gpus", "4xA100-80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "sharder.plan/1" and len(out["ranks"]) == 4
    assert all(r["fits"] for r in out["ranks"]) and out["alternatives"]
    for r in out["ranks"]:
        assert set(r["breakdown"]) == {"parameters", "gradients", "optimizer_states", "activations", "kv_cache",
                                       "comm_buffers", "temporaries", "other"}
        assert r["peak_reserved_bytes"] >= r["peak_allocated_bytes"] >= r["peak_tensor_bytes"]
