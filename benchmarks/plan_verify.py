"""Does every plan the solver picks hold up in PyTorch? Solve, shrink the chosen plan's depth (each stage's
layer count scaled down in proportion, at least one per stage), then simulate one rank per pipeline stage
with the referee (cluster/simulate.py) and compare with the cost model's prediction for the same shrunk plan.

    python benchmarks/plan_verify.py            # writes benchmarks/results/plan_verify.md and .json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, model, pool, workload fields, solve-option fields)
CASES = [
    ("70B inference, 3xA100-80 (seed)", "llama-70b", "3xA100-80", dict(mode="inference", seq=4096), {}),
    ("70B inference, mixed 4", "llama-70b", "2xA100-80+2xRTX4090", dict(mode="inference", seq=4096), {}),
    ("7B full fine-tune, 4xA100-80", "llama-2-7b", "4xA100-80",
     dict(mode="train", precision="bf16-mixed", seq=2048), dict(global_batch=8)),
    ("7B full fine-tune, mixed 4", "llama-2-7b", "2xA100-80+2xRTX4090",
     dict(mode="train", precision="bf16-mixed", seq=2048), dict(global_batch=8)),
    ("13B LoRA, 4xRTX4090", "llama-2-13b", "4xRTX4090", dict(mode="lora", precision="bf16-true", seq=2048),
     dict(global_batch=4)),
    ("Mistral-7B fine-tune, 8xA100-40", "mistral-7b", "8xA100-40",
     dict(mode="train", precision="bf16-mixed", seq=2048), dict(global_batch=8)),
]
MAX_LAYERS_PER_STAGE = 2
TOLERANCE_PCT = 3.0


def shrink(plan, max_per_stage: int = MAX_LAYERS_PER_STAGE):
    """(model, parallel) with each stage's layers scaled down in proportion, at least one per stage."""
    par = plan.parallel
    stages = [e - s for s, e in par.stage_layers(plan.model.num_layers)]
    factor = max_per_stage / max(stages)
    small = tuple(max(1, round(n * factor)) for n in stages)
    model = plan.model.with_layers(sum(small))
    return model, (replace(par, split=small) if par.pp > 1 else par), small


def verify_plan(plan) -> list[dict]:
    from sharder.cost_model import estimate
    from sharder.cluster.simulate import SimulationUnsupported, simulate_rank

    model, par, _ = shrink(plan)
    predicted = estimate(model, plan.workload, par, plan.cluster, plan.headroom)
    rows = []
    for stage in range(par.pp):
        rank = stage * par.dp * par.tp
        t0 = time.perf_counter()
        try:
            sim = simulate_rank(model, plan.workload, par, rank)
        except SimulationUnsupported as exc:
            rows.append(dict(rank=rank, stage=stage, unsupported=str(exc)))
            continue
        pred = predicted[rank].peak_tensor_bytes
        rows.append(dict(rank=rank, stage=stage, layers=list(predicted[rank].layers), predicted_bytes=pred,
                         simulated_bytes=sim.peak_bytes, error_pct=100 * (pred - sim.peak_bytes) / sim.peak_bytes,
                         sim_s=round(time.perf_counter() - t0, 2)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from sharder.model_loader import load_model
    from sharder.pool_spec import parse_gpus
    from sharder.search_space import SolveOptions
    from sharder.solver import solve
    from sharder.workload import Workload

    t_start = time.time()
    results = []
    for name, model_name, pool, wl, opt in CASES:
        model = load_model(model_name)
        result = solve(model, Workload(**wl), parse_gpus(pool), SolveOptions(**opt))
        if not result.plans:
            results.append(dict(case=name, pool=pool, plan=None, ranks=[]))
            print(f"{name}: no plan", flush=True)
            continue
        best = result.best
        split = "/".join(str(e - s) for s, e in best.parallel.stage_layers(model.num_layers))
        rows = verify_plan(best)
        worst = max((abs(r["error_pct"]) for r in rows if "error_pct" in r), default=float("nan"))
        print(f"{name}: {best.summary()} split {split}: worst |error| {worst:.3f}%", flush=True)
        results.append(dict(case=name, pool=pool, plan=best.summary(), split=split, fits=best.fits,
                            shrunk_split=list(shrink(best)[2]), ranks=rows))
    errors = [abs(r["error_pct"]) for c in results for r in c["ranks"] if "error_pct" in r]
    unsupported = [(c["case"], r["unsupported"]) for c in results for r in c["ranks"] if "unsupported" in r]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(command="python benchmarks/plan_verify.py", wall_s=round(time.time() - t_start, 1),
                generated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), cores=os.cpu_count())
    (out / "plan_verify.json").write_text(json.dumps(dict(meta=meta, cases=results), indent=2))
    lines = ["# Solver plans checked by the referee (shrunk depth)\n",
             f"Command: `{meta['command']}`, {meta['generated']}, {meta['wall_s']} s on {meta['cores']} cores.\n",
             "Each case: `solve` picks the best plan; every stage's layer count is scaled down in proportion "
             f"(at most {MAX_LAYERS_PER_STAGE}, at least 1 per stage; width, batch, sequence and degrees unchanged); "
             "the cost model's prediction for that shrunk plan is compared with the referee (fake tensors, "
             "PyTorch's own FSDP2/TP/pipelining) on the first rank of every stage. error = (predicted - "
             "simulated) / simulated.\n",
             f"**{sum(e <= TOLERANCE_PCT for e in errors)} of {len(errors)} ranks within {TOLERANCE_PCT}%**, "
             f"max |error| {max(errors, default=0):.3f}%.\n",
             "| case | pool | plan | split (shrunk) | rank | predicted MiB | simulated MiB | error |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for c in results:
        for r in c["ranks"]:
            if "unsupported" in r:
                lines.append(f"| {c['case']} | {c['pool']} | {c['plan']} | {c['split']} | {r['rank']} | - | - | "
                             f"not simulated: {r['unsupported']} |")
                continue
            lines.append(f"| {c['case']} | {c['pool']} | {c['plan']} | {c['split']} ({'/'.join(map(str, c['shrunk_split']))}) "
                         f"| {r['rank']} | {r['predicted_bytes'] / 2**20:,.2f} | {r['simulated_bytes'] / 2**20:,.2f} "
                         f"| {r['error_pct']:+.3f}% |")
    if unsupported:
        lines.append("\nNot simulated: what the referee does not run yet (" + "; ".join(sorted({u for _, u in unsupported}))
                     + "); those plans rest on the cost model's rules, each checked by the referee where it runs "
                     "(benchmarks/results/accuracy.md).")
    (out / "plan_verify.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'plan_verify.md'}")
    return 0 if all(e <= TOLERANCE_PCT for e in errors) else 1


if __name__ == "__main__":
    raise SystemExit(main())
