"""Executor benchmark: real multi-rank runs on Ray, measured per-rank peak vs the plan's prediction
(and vs the fake-tensor referee), plus launch overhead.

    python benchmarks/executor.py                  # the cases below, each on its own local Ray
    python benchmarks/executor.py --case fsdp2     # one case (repeatable)
    python benchmarks/executor.py --deepspeed      # also DeepSpeed ZeRO-2 (first run compiles ~2 min)
    python benchmarks/executor.py --steps 3 --out DIR

Every case builds a plan for the tiny Llama (hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 128,
vocab 256) with `sharder.cost_model.estimate`, then `sharder.cluster.executor.run_plan(plan)` starts a
local Ray declaring the plan's pool, one actor per rank (gloo), and shuts it down. Measured: the rank's
peak tensor bytes over steps 1..N (PyTorch's MemTracker / FSDPMemTracker, the referee's accounting);
predicted: the plan's `peak_tensor_bytes` (= peak_allocated_bytes on cpu ranks). Referee:
`simulate_rank` (fake tensors, fake process group) for the same rank. error_pct =
100 × (measured − predicted) / predicted. Launch overhead: from `run_plan` being called (Ray not yet
started) to the last rank starting its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.03


def cases():
    from sharder.parallel import ParallelConfig
    from sharder.workload import Workload

    train = Workload(mode="train", batch=2, seq=32, precision="32-true")
    mb2 = Workload(mode="train", batch=2, seq=32, micro_batches=2, precision="32-true")
    infer = Workload(mode="inference", batch=2, seq=32, max_new_tokens=8, precision="32-true")
    return {
        "fsdp2": ("FSDP2 (ZeRO-3), dp 2", ParallelConfig(dp=2, zero=3), train, "2xcpu"),
        "tp2": ("tensor parallel 2 (megatron layout), logical A100-80s", ParallelConfig(tp=2), train, "2xA100-80"),
        "dp2xtp2": ("FSDP2 dp 2 x TP 2 (2-D mesh)", ParallelConfig(dp=2, tp=2, zero=3), train, "4xcpu"),
        "pp2-gpipe": ("pipeline 2 stages, GPipe, 2 micro-batches", ParallelConfig(pp=2, schedule="gpipe"), mb2,
                      "2xcpu"),
        "pp2-1f1b": ("pipeline 2 stages, 1F1B, 2 micro-batches", ParallelConfig(pp=2, schedule="1f1b"), mb2,
                     "2xcpu"),
        "infer-tp2": ("inference TP 2, StaticCache prefill 32 + 8 new tokens", ParallelConfig(tp=2), infer, "2xcpu"),
    }


DEEPSPEED = ("deepspeed-zero2", "DeepSpeed ZeRO-2, dp 2 (DS_ACCELERATOR=cpu)")


def make_plan(parallel, workload, gpus: str) -> dict:
    from sharder.cost_model import estimate
    from sharder.model_loader import load_model
    from sharder.plan_file import Plan
    from sharder.pool_spec import parse_gpus

    model, cluster = load_model("tiny-llama"), parse_gpus(gpus)
    return Plan(model=model, workload=workload, parallel=parallel, cluster=cluster,
                ranks=estimate(model, workload, parallel, cluster)).to_dict()


def referee(parallel, workload, rank: int) -> int | None:
    """simulate_rank's peak, in a subprocess (the fake process group is process-global)."""
    code = ("import json,sys; from sharder.cluster.simulate import simulate_rank; "
            "from sharder.model_loader import load_model; from sharder.parallel import ParallelConfig; "
            "from sharder.workload import Workload; a=json.loads(sys.argv[1]); "
            "print(simulate_rank(load_model('tiny-llama'), Workload.from_dict(a['w']), "
            "ParallelConfig.from_dict(a['p']), a['r']).peak_bytes)")
    arg = json.dumps({"w": workload.to_dict(), "p": parallel.to_dict(), "r": rank})
    try:
        out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=600)
        return int(out.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def run_case(name: str, label: str, parallel, workload, gpus: str, steps: int) -> dict:
    from sharder.cluster.executor import run_plan

    plan = make_plan(parallel, workload, gpus)
    t0 = time.perf_counter()
    result = run_plan(plan, steps=steps, timeout_s=900, tolerance=TOLERANCE)
    wall = time.perf_counter() - t0
    rows = []
    ref_cache: dict[tuple, int | None] = {}
    for row in result["ranks"]:
        key = parallel.coords(row["rank"])[0]
        if parallel.framework == "torch" and key not in ref_cache:
            ref_cache[key] = referee(parallel, workload, row["rank"])
        ref = ref_cache.get(key)
        measured = row["measured_peak_allocated_bytes"]
        rows.append({
            "rank": row["rank"], "gpu": row["gpu"], "layers": row["layers"], "status": row["status"],
            "error": row["error"], "predicted_bytes": row["peak_tensor_bytes"],
            "predicted_allocated_bytes": row["peak_allocated_bytes"], "measured_bytes": measured,
            "measured_step_peaks_bytes": row.get("measured_step_peaks_bytes"),
            "referee_bytes": ref, "error_pct": row["error_pct"],
            "measured_vs_referee_pct": (round(100 * (measured - ref) / ref, 3) if measured and ref else None),
            "measured_rss_bytes": row["measured_rss_bytes"], "step_time_s": row["step_time_s"],
            "tracked_step_times_s": row.get("tracked_step_times_s"), "tokens_per_s": row["tokens_per_s"],
            "measured_breakdown": row.get("measured_breakdown"), "predicted_breakdown": row.get("breakdown"),
            "measured_peak_phase": row.get("measured_peak_phase"), "predicted_peak_phase": row.get("peak_phase"),
            "last_loss": row.get("last_loss"), "import_s": row.get("import_s")})
    return {"case": name, "label": label, "pool": gpus, "summary": plan["summary"],
            "workload": plan["workload"], "ok": result["ok"], "error": result["error"],
            "launch_overhead_s": result["launch_overhead_s"], "phases_s": result["phases_s"],
            "run_plan_wall_s": round(wall, 3), "ranks": rows}


def run_deepspeed(steps: int) -> dict:
    from sharder.parallel import ParallelConfig
    from sharder.workload import Workload

    return run_case(DEEPSPEED[0], DEEPSPEED[1], ParallelConfig(framework="deepspeed", dp=2, zero=2),
                    Workload(mode="train", batch=2, seq=32, precision="32-true"), "2xcpu", steps)


def fmt(n) -> str:
    return "—" if n is None else f"{n:,}"


def pct(x) -> str:
    return "—" if x is None else f"{x:+.2f}%"


def write(results: list[dict], out: Path, command: str, wall: float, steps: int) -> None:
    import torch
    import transformers

    import ray

    out.mkdir(parents=True, exist_ok=True)
    meta = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "wall_s": round(wall, 1), "steps": steps, "tolerance": TOLERANCE, "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__, "git": _git()}
    (out / "executor.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=2) + "\n")
    errs = [abs(r["error_pct"]) for c in results for r in c["ranks"] if r["error_pct"] is not None]
    refs = [abs(r["measured_vs_referee_pct"]) for c in results for r in c["ranks"]
            if r["measured_vs_referee_pct"] is not None]
    lines = [
        "# Executor: measured per-rank peak on Ray vs prediction",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Generated {meta['generated']} in {meta['wall_s']} s on {meta['cores']} cores (no GPU), torch "
        f"{meta['torch']}, transformers {meta['transformers']}, ray {meta['ray']}; code: {meta['git']}. "
        f"The cost model and the referee are being worked on; these numbers belong to that state.",
        "",
        "Tiny Llama (hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 128, vocab 256), fp32 (`32-true`), "
        f"batch 2 × seq 32 per replica. Each case: `run_plan(plan, steps={steps})` on its own local Ray "
        "(started and shut down by run_plan), one actor per rank, gloo. **Measured**: peak tensor bytes over "
        "steps 1..N after a warm-up step 0 (MemTracker / FSDPMemTracker, the referee's accounting, input ids "
        "included). **Predicted**: the plan's `peak_tensor_bytes` (on cpu ranks = `peak_allocated_bytes`; on "
        "the logical A100-80 ranks the allocated figure also holds CUDA device constants, not comparable on a "
        "CPU). **Referee**: `simulate_rank` (fake tensors) for the same rank. error = (measured − predicted) / "
        f"predicted; tolerance {TOLERANCE:.0%}. Step time: median of N untracked steps after the tracked ones "
        "(the tracker slows a tiny model's step several-fold). RSS: the process's peak resident set over the "
        "measured steps (VmHWM; mostly the torch libraries).",
        "",
        "## Summary",
        "",
        f"- ranks measured: {len(errs)}; |error| vs prediction: median {_median(errs):.2f}%, max "
        f"{max(errs, default=0):.2f}%, within {TOLERANCE:.0%}: {sum(e <= 100 * TOLERANCE for e in errs)}/{len(errs)}",
        f"- measured vs referee: median {_median(refs):.3f}%, max {max(refs, default=0):.3f}% "
        f"({sum(e == 0 for e in refs)}/{len(refs)} to the byte)",
        "",
        "| case | plan | ok | launch overhead s (ray start / placement / actors ready) | run_plan wall s |",
        "|---|---|---|---|---|",
    ]
    for c in results:
        ph = c["phases_s"]
        lines.append(f"| {c['case']} | {c['summary']} | {c['ok']} | {c['launch_overhead_s']} "
                     f"({ph.get('ray_start_s')} / {ph.get('placement_s')} / {ph.get('actors_ready_s')}) | "
                     f"{c['run_plan_wall_s']} |")
    lines += ["", "## Per rank", "",
              "| case | rank | device | layers | status | predicted B | measured B | error | referee B | "
              "measured vs referee | RSS MiB | step s | tokens/s | peak phase (meas / pred) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results:
        for r in c["ranks"]:
            rss = f"{r['measured_rss_bytes'] / 2 ** 20:.0f}" if r["measured_rss_bytes"] else "—"
            step = f"{r['step_time_s']:.4f}" if r["step_time_s"] else "—"
            tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "—"
            lines.append(
                f"| {c['case']} | {r['rank']} | {r['gpu']} | {r['layers']} | {r['status']} | "
                f"{fmt(r['predicted_bytes'])} | {fmt(r['measured_bytes'])} | {pct(r['error_pct'])} | "
                f"{fmt(r['referee_bytes'])} | {pct(r['measured_vs_referee_pct'])} | {rss} | {step} | {tps} | "
                f"{r['measured_peak_phase']} / {r['predicted_peak_phase']} |")
    lines += ["", "## Where measured and predicted differ (categories at each side's peak)", ""]
    for c in results:
        for r in c["ranks"]:
            if r["error_pct"] is None or abs(r["error_pct"]) <= 0.5 or not r["measured_breakdown"]:
                continue
            diffs = {k: r["measured_breakdown"].get(k, 0) - (r["predicted_breakdown"] or {}).get(k, 0)
                     for k in r["measured_breakdown"]}
            shown = ", ".join(f"{k} {v:+,}" for k, v in diffs.items() if v)
            lines.append(f"- {c['case']} rank {r['rank']} ({pct(r['error_pct'])}): measured − predicted = {shown}")
    lines += ["", "## Known causes", "",
              "- Measured vs referee: the executor counts with the referee's own trackers, so a difference is a "
              "real-vs-fake difference. GPipe over real gloo: each stage also holds the in-flight p2p send of one "
              "micro-batch (stage 0 its output activation, stage 1 its input gradient) until the schedule waits "
              "on it; under the fake process group a send completes at once. 1F1B waits earlier and matches.",
              "- Step to step: a rank's peak is the same every step, except that now and then (once in ~40 "
              "FSDP2 steps while measuring this) one step's peak sits a few % higher over real gloo; probably a "
              "collective's buffers released late, by the gloo thread. The per-step peaks are in "
              "executor.json (`measured_step_peaks_bytes`).",
              "- DeepSpeed ZeRO-2 (DeepSpeed's defaults): the first backward allocates the gradient reduce bucket "
              "at the full `reduce_bucket_size` (5e8 elements, 2,000,000,000 B in fp32), whatever the model size "
              "(the pages are never touched on CPU, so RSS does not show it; `max_memory_allocated` on a GPU "
              "would). The cost model counts it from the first gradient hook to the end of the backward. No referee for DeepSpeed.",
              "- Prediction misses of the torch strategies are the cost model's; the category differences above "
              "say where (categories are each side's snapshot at its own peak moment)."]
    failed = [c for c in results if c["error"]]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {c['case']}: {c['error']}" for c in failed]
    (out / "executor.md").write_text("\n".join(lines) + "\n")


def _median(xs):
    import statistics

    return statistics.median(xs) if xs else 0.0


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sharder", "strategies", "cluster"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"git {head}" + (" plus uncommitted changes" if dirty else "")
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    parser.add_argument("--deepspeed", action="store_true", help="also run DeepSpeed ZeRO-2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    command = "python benchmarks/executor.py" + "".join(f" --case {c}" for c in args.case or []) + \
        (" --deepspeed" if args.deepspeed else "") + (f" --steps {args.steps}" if args.steps != 2 else "")
    table = cases()
    names = args.case or list(table)
    unknown = [n for n in names if n not in table and n != DEEPSPEED[0]]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(table) + [DEEPSPEED[0]]}")
    t0 = time.perf_counter()
    results = []
    for name in names:
        if name == DEEPSPEED[0]:
            continue
        label, parallel, workload, gpus = table[name]
        print(f"{name}: {label} ...", flush=True)
        results.append(run_case(name, label, parallel, workload, gpus, args.steps))
        print(f"  errors {[r['error_pct'] for r in results[-1]['ranks']]}, launch {results[-1]['launch_overhead_s']} s",
              flush=True)
    if args.deepspeed or DEEPSPEED[0] in names:
        print(f"{DEEPSPEED[0]} ...", flush=True)
        results.append(run_deepspeed(args.steps))
    write(results, Path(args.out), command, time.perf_counter() - t0, args.steps)
    print(f"wrote {args.out}/executor.md and executor.json in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
