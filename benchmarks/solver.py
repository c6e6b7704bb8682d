"""Solver benchmark: planning speed (whole process) and plan quality, written side by side.

    python benchmarks/solver.py              # everything, results in benchmarks/results/solver.{md,json}
    python benchmarks/solver.py --runs 7     # timing runs per command (median reported; default 5)
    python benchmarks/solver.py --skip-speed # quality only

Speed: each command is a fresh subprocess, timed from start to exit (Python start-up, imports,
search, report); the median of --runs runs. The reference is accelerate's balanced device map for the
same model, as a user makes it (benchmarks/accelerate_maps.py --balanced-only: import transformers
and accelerate, build the model on the meta device, get_balanced_memory + infer_auto_device_map with
max_memory of 4 × 80 GiB) — a weights-only layer placement, not a parallel plan.

Quality:
* exhaustive: on small pools the solver's best plan against `sharder.solver.exhaustive`, which times
  every candidate of the search space with EVERY contiguous layer split (pp <= 4) and checks memory
  with `cost_model.estimate` on every rank; equal = same step time (in picoseconds) and the same
  worst-rank memory ratio. Both under the same cost and step-time models (so this checks the search,
  not the models).
* mixed pools: at fixed degrees (TP 1, PP = GPUs), the solver's layer split against accelerate's
  balanced and sequential device maps turned into layer counts per stage, each timed by the
  step-time model and checked by the cost model. Stages accelerate leaves empty are dropped (their
  GPUs idle); layers it sends to disk make the map unusable on the GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from sharder.cost_model import estimate  # noqa: E402
from sharder.hardware import GiB  # noqa: E402
from sharder.model_loader import load_model  # noqa: E402
from sharder.parallel import ParallelConfig  # noqa: E402
from sharder.pool_spec import parse_gpus  # noqa: E402
from sharder.solver import SolveOptions, _Search, best_split, exhaustive, solve, worst_ratio  # noqa: E402
from sharder.step_time import StepModel  # noqa: E402
from sharder.workload import Workload  # noqa: E402

COMMAND = "python benchmarks/solver.py"
SHARDER = [str(Path(sys.executable).parent / "sharder")]
if not Path(SHARDER[0]).exists():
    SHARDER = [sys.executable, "-m", "sharder.cli"]

SPEED = [  # (name, argv after `sharder`, target seconds)
    ("llama-70b inference on 4xA100-80", ["plan", "--model", "llama-70b", "--gpus", "4xA100-80"], 0.5),
    ("llama-3.1-405b training on 128x8xH100 (1,024 GPUs)",
     ["plan", "--model", "llama-3.1-405b", "--gpus", "128x8xH100", "--mode", "train", "--global-batch", "1024",
      "--seq", "4096"], 2.0),
    ("llama-3.1-405b training on 64x8xH100+64x8xA100-80 (1,024 mixed GPUs)",
     ["plan", "--model", "llama-3.1-405b", "--gpus", "64x8xH100+64x8xA100-80", "--mode", "train",
      "--global-batch", "1024", "--seq", "4096"], 2.0),
    ("--min: fewest A100-80 for llama-70b training", ["plan", "--model", "llama-70b", "--gpus", "A100-80",
                                                      "--mode", "train", "--min"], None),
    ("no fit: llama-3.1-405b training on 8xH100 (exit 1, fewest GPUs and knobs)",
     ["plan", "--model", "llama-3.1-405b", "--gpus", "8xH100", "--mode", "train"], None),
]
ACCELERATE = ("accelerate balanced device map, llama-70b on 4 × 80 GiB",
              [sys.executable, str(HERE / "accelerate_maps.py"),
               json.dumps([{"model": "llama-70b", "max_memory_gib": [80, 80, 80, 80]}]), "--balanced-only"])

TRAIN = dict(precision="bf16-mixed", seq=2048)
EXHAUSTIVE = [  # (name, model, workload kwargs, pool, global batch)
    ("70B inference, 2 GPUs", "llama-70b", dict(), "2xA100-80", None),
    ("70B inference, 3 GPUs (seed)", "llama-70b", dict(), "3xA100-80", None),
    ("70B inference, 4 GPUs", "llama-70b", dict(), "4xA100-80", None),
    ("70B inference, mixed 4", "llama-70b", dict(), "2xA100-80+2xRTX4090", None),
    ("70B decode 256 tokens, batch 4, mixed 4", "llama-70b", dict(batch=4, seq=1024, max_new_tokens=256),
     "2xA100-80+2xRTX4090", None),
    ("Mistral-7B decode, batch 8, mixed 4", "mistral-7b", dict(batch=8, seq=2048, max_new_tokens=256),
     "A100-80+A100-40+L4+RTX4090", None),
    ("7B full fine-tune, 4 GPUs", "llama-2-7b", dict(mode="finetune", **TRAIN), "4xA100-80", 16),
    ("7B full fine-tune, mixed 4", "llama-2-7b", dict(mode="finetune", **TRAIN), "2xA100-80+2xRTX4090", 16),
    ("13B LoRA, 4 RTX4090", "llama-2-13b", dict(mode="lora", seq=2048), "4xRTX4090", 16),
    ("8B full fine-tune, 8 GPUs", "llama-3-8b", dict(mode="finetune", **TRAIN), "8xA100-40", 16),
    ("13B full fine-tune, mixed 8 (H100 + A100)", "llama-2-13b", dict(mode="finetune", **TRAIN),
     "4xH100+4xA100-80", 32),
    ("Mixtral-8x7B LoRA (MoE), 8 GPUs", "mixtral-8x7b", dict(mode="lora", seq=2048), "8xA100-80", 16),
]
MIXED = [  # (name, model, workload kwargs, pool); degrees TP 1, PP = GPUs, DP 1
    ("70B inference (prefill 4096)", "llama-70b", dict(), "2xA100-80+2xRTX4090"),
    ("70B decode 256 tokens", "llama-70b", dict(seq=1024, max_new_tokens=256), "2xA100-80+2xRTX4090"),
    ("7B full fine-tune, M=32, full AC", "llama-2-7b",
     dict(mode="finetune", batch=32, micro_batches=32, ac="full", **TRAIN), "2xA100-80+2xRTX4090"),
    ("13B full fine-tune, M=32, full AC", "llama-2-13b",
     dict(mode="finetune", batch=32, micro_batches=32, ac="full", **TRAIN), "4xH100+4xA100-80"),
    ("8B LoRA, M=16", "llama-3-8b", dict(mode="lora", batch=16, micro_batches=16, seq=2048),
     "A100-80+A100-40+RTX4090+RTX3090"),
    ("13B LoRA, M=16, full AC", "llama-2-13b", dict(mode="lora", batch=16, micro_batches=16, ac="full", seq=4096),
     "2xA100-40+2xL4"),
]


# ------------------------------------------------------------------------------------------- speed
def time_command(argv: list[str], runs: int) -> dict:
    times, codes = [], set()
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        codes.add(proc.returncode)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs,
            "times_s": [round(t, 3) for t in times], "exit_codes": sorted(codes)}


def speed(runs: int) -> dict:
    rows = []
    for name, argv, target in SPEED:
        r = time_command(SHARDER + argv, runs)
        r.update(name=name, command="sharder " + " ".join(argv), target_s=target,
                 met=None if target is None else r["median_s"] <= target)
        rows.append(r)
        print(f"  {name}: {r['median_s']:.2f} s", flush=True)
    name, argv = ACCELERATE
    acc = time_command(argv, runs)
    acc.update(name=name, command="python benchmarks/accelerate_maps.py '<llama-70b, 4 × 80 GiB>' --balanced-only")
    print(f"  {name}: {acc['median_s']:.2f} s", flush=True)
    ratio = acc["median_s"] / rows[0]["median_s"]
    return {"rows": rows, "accelerate": acc, "ratio_vs_accelerate": ratio, "ratio_target": 15.0,
            "ratio_met": ratio >= 15.0}


# ----------------------------------------------------------------------------------------- quality
def plan_key(plan) -> tuple[int, float]:
    counts = [e - s for s, e in plan.parallel.stage_layers(plan.model.num_layers)]
    return StepModel(plan.model, plan.workload, plan.parallel, plan.cluster).quanta(counts), \
        worst_ratio(plan.ranks, plan.headroom)


def describe(work, par) -> str:
    split = "/".join(str(n) for n in par.split) if par.split else "-"
    extra = f" M={work.micro_batches} ac={work.ac}" if work.training else ""
    return f"{par.summary(work.precision)} split {split}{extra}"


def exhaustive_cases() -> list[dict]:
    rows = []
    for name, model_name, kw, pool, gb in EXHAUSTIVE:
        model, w, cluster = load_model(model_name), Workload(**kw), parse_gpus(pool)
        opts = SolveOptions(top=1, global_batch=gb, max_pp=4)
        t0 = time.perf_counter()
        result = solve(model, w, cluster, opts)
        t_solve = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = exhaustive(model, w, cluster, opts, max_pp=4)
        t_ref = time.perf_counter() - t0
        best = result.best
        row = {"name": name, "model": model_name, "pool": pool, "workload": kw, "global_batch": gb,
               "solver_s": t_solve, "exhaustive_s": t_ref, "evaluated": result.evaluated,
               "considered": result.considered}
        if best is None or ref is None:
            row.update(equal=best is None and ref is None, solver=None if best is None else describe(
                best.workload, best.parallel), exhaustive=None if ref is None else describe(ref[2], ref[3]))
        else:
            q, r = plan_key(best)
            row.update(equal=(q == ref[0] and abs(r - ref[1]) < 1e-12), solver=describe(best.workload, best.parallel),
                       exhaustive=describe(ref[2], ref[3]), solver_step_s=q * 1e-12, exhaustive_step_s=ref[0] * 1e-12,
                       solver_worst_ratio=r, exhaustive_worst_ratio=ref[1])
        if cluster.num_devices > 4:  # the solver unrestricted, for context
            full = solve(model, w, cluster, replace(opts, max_pp=None)).best
            row["solver_any_pp"] = describe(full.workload, full.parallel) if full else None
        rows.append(row)
        print(f"  {name}: {'equal' if row['equal'] else 'DIFFERENT'} ({t_solve * 1e3:.0f} ms vs {t_ref:.1f} s)",
              flush=True)
    return rows


def mixed_cases() -> list[dict]:
    requests = [{"model": m, "max_memory_gib": [round(d.capacity_bytes / GiB, 2) for d in parse_gpus(pool).devices]}
                for _, m, _, pool in MIXED]
    proc = subprocess.run([sys.executable, str(HERE / "accelerate_maps.py"), json.dumps(requests)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    maps = json.loads(proc.stdout)
    rows = []
    for (name, model_name, kw, pool), acc in zip(MIXED, maps):
        model, w, cluster = load_model(model_name), Workload(**kw), parse_gpus(pool)
        P = cluster.num_devices
        par = ParallelConfig(pp=P, schedule="1f1b" if w.training else "gpipe")
        search = _Search(model, w, cluster, SolveOptions())
        found = best_split(search.step_model(w, par), search.memory(w, par), model.num_layers)
        row = {"name": name, "model": model_name, "pool": pool, "workload": kw, "degrees": f"TP=1 PP={P} DP=1"}
        row["sharder"] = evaluate(model, w, par, cluster, list(found[0])) if found else {"counts": None, "fits": False}
        for kind in ("balanced", "sequential"):
            row[f"accelerate_{kind}"] = evaluate(model, w, par, cluster, acc[kind], acc[f"{kind}_offloaded_layers"])
        ours = row["sharder"]
        for kind in ("balanced", "sequential"):
            theirs = row[f"accelerate_{kind}"]
            row[f"speedup_vs_{kind}"] = (theirs["step_s"] / ours["step_s"]
                                         if ours.get("step_s") and theirs.get("step_s") else None)
        best = solve(model, w, cluster, SolveOptions(top=1, global_batch=w.batch if w.training else None)).best
        row["solver_best_any_degrees"] = None if best is None else {
            "plan": describe(best.workload, best.parallel), "tokens_per_s": best.tokens_per_s}
        rows.append(row)
        print(f"  {name}: ours {ours.get('counts')} vs balanced {acc['balanced']} / sequential {acc['sequential']}",
              flush=True)
    return rows


def evaluate(model, w, par, cluster, counts, offloaded: int = 0) -> dict:
    """Step time and memory of a layer split; empty stages dropped (their GPUs idle)."""
    out = {"counts": list(counts), "offloaded_layers": offloaded}
    if offloaded or sum(counts) != model.num_layers:
        out.update(fits=False, note=f"{offloaded} layers placed on disk/cpu, not on the GPUs")
        return out
    used = [s for s, n in enumerate(counts) if n > 0]
    devices = cluster.devices
    sub = cluster if len(used) == len(counts) else parse_gpus("+".join(devices[s].gpu.name for s in used))
    work = w
    if w.training and w.micro_batches < len(used):
        work = replace(w, micro_batches=len(used))
    p = replace(par, pp=len(used), split=tuple(counts[s] for s in used))
    sm = StepModel(model, work, p, sub)
    seconds, tps, _ = sm.total(list(p.split))
    ranks = estimate(model, work, p, sub)
    out.update(stage_s=[sm.stage_time(s, n) for s, n in enumerate(p.split)], step_s=seconds, tokens_per_s=tps,
               fits=all(r.fits for r in ranks), worst_ratio=worst_ratio(ranks, 0.05),
               idle_gpus=len(counts) - len(used))
    out["bottleneck_s"] = max(out["stage_s"])
    return out


# ------------------------------------------------------------------------------------------ report
def write(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "solver.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Solver benchmark: planning speed and plan quality", "",
             f"Command: `{COMMAND}` — generated {results['generated']} in {results['wall_s']:.0f} s on "
             f"{results['machine']}. All numbers below come from this one run.", ""]
    sp = results.get("speed")
    if sp:
        lines += ["## Speed (whole process, median of runs)", "",
                  "| case | command | median s | min–max s | target | met | exit |", "|---|---|---:|---:|---:|---|---|"]
        for r in sp["rows"]:
            lines.append(f"| {r['name']} | `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} | "
                         f"{'-' if r['target_s'] is None else '≤ %.1f s' % r['target_s']} | "
                         f"{'-' if r['met'] is None else ('yes' if r['met'] else '**no**')} | {r['exit_codes']} |")
        a = sp["accelerate"]
        lines.append(f"| {a['name']} | `{a['command']}` | {a['median_s']:.2f} | {a['min_s']:.2f}–{a['max_s']:.2f} | - | - "
                     f"| {a['exit_codes']} |")
        lines += ["", f"**sharder plan (llama-70b, 4xA100-80) vs accelerate's balanced map: "
                      f"{sp['ratio_vs_accelerate']:.1f}× faster** (target ≥ 15×: "
                      f"{'met' if sp['ratio_met'] else 'NOT met'}). accelerate places weights only; sharder "
                      f"searches degrees, strategies and splits with activations, KV cache and step time.", ""]
    ex = results["exhaustive"]
    n_eq = sum(r["equal"] for r in ex)
    lines += ["## Quality: solver vs exhaustive search (same models, pp ≤ 4, every contiguous split)", "",
              f"**{n_eq} of {len(ex)} cases equal** (same step time to the picosecond and the same worst-rank "
              f"memory ratio).", "",
              "| case | pool | solver plan | exhaustive plan | equal | step s | solver ms | exhaustive s | evaluated / considered |",
              "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in ex:
        lines.append(f"| {r['name']} | {r['pool']} | {r['solver']} | {r['exhaustive']} | "
                     f"{'yes' if r['equal'] else '**no**'} | {r.get('solver_step_s', 0):.4f} | {r['solver_s'] * 1e3:.0f} | "
                     f"{r['exhaustive_s']:.1f} | {r['evaluated']} / {r['considered']} |")
    extra = [r for r in ex if r.get("solver_any_pp")]
    if extra:
        lines += ["", "Pools over 4 GPUs, the solver without the pp ≤ 4 limit: " + "; ".join(
            f"{r['name']}: {r['solver_any_pp']}" for r in extra) + "."]
    mx = results["mixed"]
    lines += ["", "## Quality: mixed pools, sharder's split vs accelerate's device maps (same degrees)", "",
              "Step time by the step-time model (training: one optimizer step; inference: one request); "
              "bottleneck = the slowest stage per micro-batch; fits = every rank within its GPU (cost model, "
              "5% headroom). Speed-up = accelerate's step time / sharder's (≥ 1.25 is the target).", "",
              "| case | pool | split | layers per stage | fits | bottleneck s | step s | speed-up |",
              "|---|---|---|---|---|---:|---:|---:|"]
    for r in mx:
        for kind, label in (("sharder", "sharder DP"), ("accelerate_balanced", "accelerate balanced"),
                            ("accelerate_sequential", "accelerate sequential")):
            e = r[kind]
            su = "" if kind == "sharder" else r[f"speedup_vs_{kind.split('_')[1]}"]
            lines.append(f"| {r['name']} | {r['pool']} | {label} | {e.get('counts')}"
                         f"{' (+%d off GPU)' % e['offloaded_layers'] if e.get('offloaded_layers') else ''}"
                         f"{' (%d GPU idle)' % e['idle_gpus'] if e.get('idle_gpus') else ''} | "
                         f"{'yes' if e.get('fits') else '**no**'} | "
                         f"{'%.4f' % e['bottleneck_s'] if e.get('bottleneck_s') else '-'} | "
                         f"{'%.4f' % e['step_s'] if e.get('step_s') else '-'} | "
                         f"{'' if su == '' else ('-' if su is None else '%.2f×' % su)} |")
    lines += ["", "Best plan on each mixed pool with the degrees free (same global batch): " + "; ".join(
        f"{r['name']}: {r['solver_best_any_degrees']['plan']} ({r['solver_best_any_degrees']['tokens_per_s']:,.0f} tok/s)"
        for r in mx if r["solver_best_any_degrees"]) + ".", ""]
    lines += ["## Notes", "", *results["notes"], ""]
    (out_dir / "solver.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = {"command": COMMAND, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    if not args.skip_speed:
        print("speed:", flush=True)
        results["speed"] = speed(args.runs)
    print("exhaustive:", flush=True)
    results["exhaustive"] = exhaustive_cases()
    print("mixed pools:", flush=True)
    results["mixed"] = mixed_cases()
    results["wall_s"] = time.perf_counter() - t0
    results["notes"] = [
        "- The machine is shared and noisy (2 cores); medians over several runs, min–max shown.",
        "- Exhaustive search and the solver share the candidate space (`sharder.solver.candidate_space`), "
        "the cost model and the step-time model; the check is that branch-and-bound, the bounds and the "
        "split DP lose nothing.",
        "- Inference runs the stages one after another for a request (no pipelining across requests), so "
        "the step is the sum of stage times; mixed-pool inference therefore loads the faster GPUs first.",
        "- Step times are modelled, not measured (see `sharder/step_time.py` for every assumption).",
    ]
    write(results, Path(args.out))
    print(f"wrote {args.out}/solver.md and solver.json in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
