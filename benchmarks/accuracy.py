"""Accuracy of the cost model against the referee: predicted vs simulated peak tensor bytes, per rank and category.

    python benchmarks/accuracy.py                 # the whole matrix (benchmarks/accuracy_cases.py)
    python benchmarks/accuracy.py --fast          # the small subset (tiny models)
    python benchmarks/accuracy.py --case NAME     # one case (repeatable)
    python benchmarks/accuracy.py --jobs 2        # cases in 2 parallel subprocesses
    python benchmarks/accuracy.py --out DIR       # where accuracy.md / accuracy.json go (default benchmarks/results)
    python benchmarks/accuracy.py --case X --merge  # rerun X and merge it into an existing accuracy.json

Predicted: `sharder.cost_model.estimate(...)[rank].peak_tensor_bytes` (cpu pool, so no device constants).
Simulated: `sharder.cluster.simulate.simulate_rank(...)`.peak_bytes — PyTorch's own FSDP2 / DTensor TP /
pipelining on fake tensors over the fake process group (DESIGN.md §3). Error = (predicted − simulated) /
simulated. Every case runs in its own subprocess: the fake process group is process-global.

Side by side, where they apply, the figures of two tools a user might reach for instead:
  * accelerate: what `accelerate estimate-memory` prints (accelerate.commands.estimate.gather_data on the
    meta model accelerate itself would build: transformers' AutoModel in fp32), row float32 for 32-true and
    float16 for bf16: "Total Size" for inference, "Training using Adam" (the largest of its model /
    gradients / optimizer / step figures: 4× the fp32 size in float32, 2× the fp32 size = 4× the fp16 size
    in float16) for full training. It describes a whole model on one device: covered are ranks that hold
    the whole model (tp 1, pp 1, zero 0: single rank or DDP), full training or inference.
  * DeepSpeed: the per-GPU figure of `estimate_zero2_model_states_mem_needs_all_cold` /
    `estimate_zero3_model_states_mem_needs_all_cold` without offload (the same
    `estimate_zero{2,3}_model_states_mem_needs(cpu_offload=False, ...)` the printers call), with the
    total and largest-layer parameter counts of the transformers model (DeepSpeed's `model_to_params`
    rule, shared parameters once) and num_gpus_per_node = dp, num_nodes = 1. Covered are full-training
    ranks with zero 2 (ZeRO-2 figure) or zero 3 (ZeRO-3 figure), tp 1, pp 1, no HSDP.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accuracy_cases import BY_NAME, CASES, FAST  # noqa: E402

CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache",
              "comm_buffers", "temporaries", "other")
TARGET_MEDIAN_PCT = 1.0
TARGET_MAX_PCT = 3.0
MIB = 2 ** 20


# ==================================================================================================
# one case, in this process
# ==================================================================================================
def case_objects(case: dict):
    """(ModelSpec, Workload, ParallelConfig, ClusterSpec) of a case."""
    from sharder import model_catalog
    from sharder.model_loader import spec_from_hf_config
    from sharder.parallel import ParallelConfig
    from sharder.pool_spec import parse_gpus
    from sharder.workload import Workload

    cfg = model_catalog.catalog_config(case["model"])
    name = case["model"]
    if case.get("hf"):
        cfg.update(case["hf"])
        name = f"{name}(custom)"
    spec = spec_from_hf_config(cfg, name)
    if case.get("layers"):
        spec = spec.with_layers(case["layers"])
    wl = dict(case["workload"])
    if "lora_targets" in wl:
        wl["lora_targets"] = tuple(wl["lora_targets"])
    par = dict(case["parallel"])
    if par.get("split") is not None:
        par["split"] = tuple(par["split"])
    return spec, Workload(**wl), ParallelConfig(**par), parse_gpus(case["pool"])


def predict(case: dict) -> tuple[list, float]:
    """The cost model's estimate of every rank, and the seconds it took."""
    from sharder.cost_model import estimate

    spec, workload, parallel, cluster = case_objects(case)
    start = time.perf_counter()
    ranks = estimate(spec, workload, parallel, cluster)
    return ranks, time.perf_counter() - start


def compare_rank(pred, sim) -> dict:
    """One measurement: predicted vs simulated total and categories."""
    p_total, s_total = int(pred.peak_tensor_bytes), int(sim.peak_bytes)
    pb = {c: int(pred.breakdown.get(c, 0)) for c in CATEGORIES}
    sb = {c: int(sim.breakdown.get(c, 0)) for c in CATEGORIES}
    return dict(
        rank=pred.rank, layers=list(pred.layers), coords=list(pred.coords),
        predicted_bytes=p_total, simulated_bytes=s_total,
        error_bytes=p_total - s_total, error_pct=(p_total - s_total) / s_total * 100 if s_total else None,
        predicted_breakdown=pb, simulated_breakdown=sb, diff_breakdown={c: pb[c] - sb[c] for c in CATEGORIES},
        predicted_phase=pred.peak_phase, simulated_phase=sim.peak_phase, simulated_module=sim.peak_module,
        simulated_raw=dict(sim.raw), warmup_peak_bytes=sim.warmup_peak_bytes, sim_wall_s=sim.wall_s,
        notes=list(sim.notes) + list(pred.notes))


def run_case(case: dict, ranks: list[int] | None = None) -> dict:
    """Estimate, simulate the case's ranks and compute the baselines, in this process."""
    from sharder.errors import SharderInputError

    start = time.perf_counter()
    out = dict(name=case["name"], model=case["model"], layers=case.get("layers"), hf=case.get("hf"),
               what=case.get("what", ""), workload=case["workload"], parallel=case["parallel"], pool=case["pool"],
               ranks=[], status="ok", reason=None, baselines={})
    try:
        spec, workload, parallel, cluster = case_objects(case)
        out["summary"] = parallel.summary(workload.precision)
        out["num_layers"] = spec.num_layers
        predicted, est_s = predict(case)
        out["estimate_s"] = round(est_s, 6)
    except SharderInputError as exc:
        out.update(status="rejected", reason=f"cost model / inputs: {exc}")
        out["wall_s"] = round(time.perf_counter() - start, 2)
        return out
    from sharder.cluster.simulate import SimulationUnsupported, simulate_rank

    for rank in (ranks if ranks is not None else case["ranks"]):
        try:
            sim = simulate_rank(spec, workload, parallel, rank)
        except SimulationUnsupported as exc:
            out.update(status="unsupported", reason=f"referee: {exc}")
            out.setdefault("predicted_only", []).append(_prediction_only(predicted[rank]))
            continue
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            out.update(status="error", reason=f"referee raised {type(exc).__name__}: {str(exc)[:500]}",
                       traceback=traceback.format_exc()[-4000:])
            out.setdefault("predicted_only", []).append(_prediction_only(predicted[rank]))
            continue
        out["ranks"].append(compare_rank(predicted[rank], sim))
    try:
        out["baselines"] = baselines(spec, workload, parallel)
    except Exception as exc:  # noqa: BLE001
        out["baselines"] = {"error": f"{type(exc).__name__}: {exc}"}
    _baseline_errors(out)
    out["wall_s"] = round(time.perf_counter() - start, 2)
    return out


def _prediction_only(pred) -> dict:
    return dict(rank=pred.rank, predicted_bytes=int(pred.peak_tensor_bytes), predicted_phase=pred.peak_phase,
                predicted_breakdown={c: int(pred.breakdown.get(c, 0)) for c in CATEGORIES})


# ------------------------------------------------------------------------------------------ baselines
def accelerate_covers(workload, parallel) -> bool:
    return (parallel.tp == 1 and parallel.pp == 1 and parallel.zero == 0
            and (workload.full_training or workload.mode == "inference"))


def deepspeed_covers(workload, parallel) -> bool:
    return (workload.full_training and parallel.tp == 1 and parallel.pp == 1 and parallel.zero in (2, 3)
            and parallel.dp_replicate == 1)


def _hf_config(spec):
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[spec.hf_config["model_type"]].from_dict(dict(spec.hf_config))


def accelerate_figure(spec, workload) -> dict:
    """What `accelerate estimate-memory` prints for this model, run through accelerate's own gather_data
    and estimate_command, with create_empty_model replaced by a local build (no Hub access here) of the
    model accelerate builds: AutoModel.from_config(config, fp32) under init_empty_weights."""
    import torch
    from accelerate import init_empty_weights
    import accelerate.commands.estimate as est
    from transformers import AutoModel

    config = _hf_config(spec)

    def create_empty_model(model_name, library_name, trust_remote_code=False, access_token=None):
        with init_empty_weights():
            return AutoModel.from_config(config, dtype=torch.float32)

    original = est.create_empty_model
    est.create_empty_model = create_empty_model
    try:
        args = argparse.Namespace(model_name=spec.name, library_name="transformers", dtypes=["float32", "float16"],
                                  trust_remote_code=False)
        rows = est.gather_data(args)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            est.estimate_command(argparse.Namespace(**vars(args)))
    finally:
        est.create_empty_model = original
    table = {}
    for dtype, largest, total, training in rows:
        train = max(training.values())
        table[dtype] = dict(largest_layer_bytes=int(largest), total_bytes=int(total),
                            training_bytes=None if train == -1 else int(train))
    dtype = "float32" if workload.precision == "32-true" else "float16"
    key = "training_bytes" if workload.training else "total_bytes"
    return dict(tool="accelerate estimate-memory", row=dtype,
                figure="Training using Adam" if workload.training else "Total Size",
                bytes=table[dtype][key], table=table, printed=printed.getvalue())


def deepspeed_figure(spec, parallel) -> dict:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from transformers import AutoModelForCausalLM

    config = _hf_config(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())  # shared params once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    gpus, nodes = parallel.dp, 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        if parallel.zero == 2:
            from deepspeed.runtime.zero import stage_1_and_2 as z

            z.estimate_zero2_model_states_mem_needs_all_cold(total_params=total, num_gpus_per_node=gpus,
                                                             num_nodes=nodes)
            _, gpu = z.estimate_zero2_model_states_mem_needs(total_params=total, num_gpus_per_node=gpus,
                                                             num_nodes=nodes, cpu_offload=False)
            fn = "estimate_zero2_model_states_mem_needs_all_cold"
        else:
            from deepspeed.runtime.zero import stage3 as z

            z.estimate_zero3_model_states_mem_needs_all_cold(total_params=total, largest_layer_params=largest,
                                                             num_gpus_per_node=gpus, num_nodes=nodes)
            _, gpu, _ = z.estimate_zero3_model_states_mem_needs(total_params=total, largest_layer_params=largest,
                                                                num_gpus_per_node=gpus, num_nodes=nodes,
                                                                cpu_offload=False, cpu_offload_params=False,
                                                                zero_init=True)
            fn = "estimate_zero3_model_states_mem_needs_all_cold"
    return dict(tool=f"deepspeed {fn}", figure="per GPU, no offload", bytes=int(gpu), total_params=total,
                largest_layer_params=largest, num_gpus_per_node=gpus, num_nodes=nodes,
                printed=printed.getvalue())


def baselines(spec, workload, parallel) -> dict:
    out = {}
    if accelerate_covers(workload, parallel):
        out["accelerate"] = accelerate_figure(spec, workload)
    if deepspeed_covers(workload, parallel):
        out["deepspeed"] = deepspeed_figure(spec, parallel)
    return out


def _baseline_errors(result: dict) -> None:
    for row in result["ranks"]:
        for tool, fig in result["baselines"].items():
            if isinstance(fig, dict) and fig.get("bytes") is not None and row["simulated_bytes"]:
                row[f"{tool}_bytes"] = fig["bytes"]
                row[f"{tool}_error_pct"] = (fig["bytes"] - row["simulated_bytes"]) / row["simulated_bytes"] * 100


# ==================================================================================================
# the matrix: one subprocess per case
# ==================================================================================================
def run_in_subprocess(name: str, timeout: float) -> dict:
    case = BY_NAME[name]
    with tempfile.TemporaryDirectory(prefix="sharder-acc-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result_path)]
        start = time.perf_counter()
        env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
        except subprocess.TimeoutExpired:
            return dict(name=name, model=case["model"], what=case.get("what", ""), workload=case["workload"],
                        parallel=case["parallel"], pool=case["pool"], layers=case.get("layers"), ranks=[],
                        status="timeout", reason=f"no result within {timeout:.0f} s", baselines={},
                        wall_s=round(time.perf_counter() - start, 1))
        wall = time.perf_counter() - start
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            result = dict(name=name, model=case["model"], what=case.get("what", ""), workload=case["workload"],
                          parallel=case["parallel"], pool=case["pool"], layers=case.get("layers"), ranks=[],
                          status="error", baselines={},
                          reason=f"worker exited {proc.returncode} without a result: "
                                 f"{(proc.stderr or proc.stdout)[-1500:]}")
        result["process_wall_s"] = round(wall, 2)
        return result


def worker(name: str, result_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    result = run_case(BY_NAME[name])
    Path(result_path).write_text(json.dumps(result, default=str))
    return 0


# ==================================================================================================
# report
# ==================================================================================================
def _stats(values: list[float]) -> dict:
    vals = [abs(v) for v in values if v is not None]
    if not vals:
        return dict(n=0, median_abs_pct=None, max_abs_pct=None, within_1pct=0, within_3pct=0)
    return dict(n=len(vals), median_abs_pct=statistics.median(vals), max_abs_pct=max(vals),
                within_1pct=sum(v <= 1 for v in vals), within_3pct=sum(v <= 3 for v in vals))


def summarize(results: list[dict]) -> dict:
    rows = [r for res in results for r in res["ranks"]]
    sharder = _stats([r["error_pct"] for r in rows])
    out = dict(sharder=sharder, measurements=len(rows),
               cases=len(results), cases_ok=sum(res["status"] == "ok" for res in results),
               status_counts={s: sum(res["status"] == s for res in results)
                              for s in sorted({res["status"] for res in results})})
    # worst rank per case
    case_errs = [max(abs(r["error_pct"]) for r in res["ranks"]) for res in results if res["ranks"]]
    out["sharder_worst_rank_per_case"] = _stats(case_errs)
    for tool in ("accelerate", "deepspeed"):
        covered = [r for r in rows if f"{tool}_error_pct" in r]
        out[tool] = _stats([r[f"{tool}_error_pct"] for r in covered])
        out[f"sharder_on_{tool}_cases"] = _stats([r["error_pct"] for r in covered])
    s = sharder
    out["targets"] = dict(median_abs_pct=TARGET_MEDIAN_PCT, max_abs_pct=TARGET_MAX_PCT,
                          median_met=s["median_abs_pct"] is not None and s["median_abs_pct"] <= TARGET_MEDIAN_PCT,
                          max_met=s["max_abs_pct"] is not None and s["max_abs_pct"] <= TARGET_MAX_PCT)
    return out


def _mib(b) -> str:
    return "-" if b is None else f"{b / MIB:,.2f}"


def _pct(p) -> str:
    return "-" if p is None else f"{p:+.2f}%"


def _bytes(b: int) -> str:
    return f"{b:+,d} B ({b / MIB:+,.2f} MiB)"


def _fmt_stats(s: dict) -> str:
    if not s["n"]:
        return "no measurements"
    return (f"n={s['n']}, median |error| {s['median_abs_pct']:.3f}%, max |error| {s['max_abs_pct']:.3f}%, "
            f"within 1%: {s['within_1pct']}/{s['n']}, within 3%: {s['within_3pct']}/{s['n']}")


def explain_miss(res: dict, row: dict) -> list[str]:
    """Lines for 'cases that miss and why': the categories that differ, largest first."""
    lines = [f"**{res['name']}** rank {row['rank']} (layers {row['layers'][0]}-{row['layers'][1] - 1}; "
             f"{res.get('summary', '')}; {res.get('what', '')}): predicted {_mib(row['predicted_bytes'])} MiB, "
             f"simulated {_mib(row['simulated_bytes'])} MiB, error {_pct(row['error_pct'])} "
             f"({_bytes(row['error_bytes'])}). Peak phase: predicted *{row['predicted_phase']}*, simulated "
             f"*{row['simulated_phase']}*" + (f" in `{row['simulated_module']}`" if row.get("simulated_module") else "")
             + "."]
    diffs = sorted(((c, d) for c, d in row["diff_breakdown"].items() if d), key=lambda cd: -abs(cd[1]))
    for c, d in diffs:
        p, s = row["predicted_breakdown"][c], row["simulated_breakdown"][c]
        lines.append(f"  - `{c}`: predicted {p:,d} B, simulated {s:,d} B, diff {_bytes(d)}")
    if row.get("simulated_raw"):
        raw = ", ".join(f"{k} {v:,d}" for k, v in row["simulated_raw"].items() if v)
        lines.append(f"  - referee's raw categories at its peak: {raw}")
    return lines


def write_report(results: list[dict], out_dir: Path, meta: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    order = {c["name"]: i for i, c in enumerate(CASES)}
    results = sorted(results, key=lambda r: order.get(r["name"], 1 << 30))
    summary = summarize(results)
    data = dict(schema="sharder.accuracy/1", meta=meta, summary=summary, results=results)
    json_path = out_dir / "accuracy.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))

    s = summary["sharder"]
    L: list[str] = []
    L.append("# Cost-model accuracy: predicted vs simulated peak tensor bytes per rank\n")
    L.append(f"Generated {meta['finished']} by `{meta['command']}` in {meta['wall_s']:.0f} s wall "
             f"({meta['jobs']} parallel job(s), {os.cpu_count()} cores), torch {meta.get('torch', '?')}, "
             f"transformers {meta.get('transformers', '?')}, accelerate {meta.get('accelerate', '?')}, "
             f"deepspeed {meta.get('deepspeed', '?')}.\n")
    code = meta.get("code") or {}
    if code:
        dirty = code.get("uncommitted") or []
        L.append(f"Code measured: git {code.get('git_head', '?')}"
                 + (f" plus uncommitted changes to {', '.join(x.split()[-1] for x in dirty)}" if dirty else "")
                 + f" (sha256 of sharder/, strategies/, cluster/ sources: {code.get('sources_sha256')}). The cost "
                 "model and the referee are being worked on; these numbers belong to that state.\n")
    L.append("Predicted: `sharder.cost_model.estimate(...)[rank].peak_tensor_bytes` on a cpu pool (no device "
             "constants). Simulated: `simulate_rank(...)`.peak_bytes, PyTorch's FSDP2 / DTensor TP / pipelining "
             "on fake tensors, second (measured) iteration (DESIGN.md §3). Error = (predicted − simulated) / "
             "simulated. Each simulated rank is one measurement; every case runs in its own process. "
             "Categories are the snapshot at each side's own peak moment.\n")
    L.append("## Summary\n")
    L.append(f"- cases: {summary['cases']} ({', '.join(f'{k}: {v}' for k, v in summary['status_counts'].items())}); "
             f"measurements (simulated ranks): {summary['measurements']}")
    L.append(f"- **sharder: {_fmt_stats(s)}**")
    L.append(f"- sharder, worst rank of each case: {_fmt_stats(summary['sharder_worst_rank_per_case'])}")
    t = summary["targets"]
    L.append(f"- targets: median |error| ≤ {t['median_abs_pct']}% — **{'met' if t['median_met'] else 'NOT met'}**; "
             f"max |error| ≤ {t['max_abs_pct']}% — **{'met' if t['max_met'] else 'NOT met'}**")
    L.append(f"- accelerate estimate-memory on the {summary['accelerate']['n']} measurements it covers: "
             f"{_fmt_stats(summary['accelerate'])} (sharder on the same: "
             f"{_fmt_stats(summary['sharder_on_accelerate_cases'])})")
    L.append(f"- DeepSpeed ZeRO-2/3 cold estimators on the {summary['deepspeed']['n']} measurements they cover: "
             f"{_fmt_stats(summary['deepspeed'])} (sharder on the same: "
             f"{_fmt_stats(summary['sharder_on_deepspeed_cases'])})")
    L.append(f"- wall time: {meta['wall_s']:.0f} s for the run; per case (process) in the table below\n")

    L.append("## Results\n")
    L.append("| case | rank | layers | strategy | predicted MiB | simulated MiB | error | predicted phase | "
             "simulated phase | accelerate MiB (error) | DeepSpeed MiB (error) | sim s | case s |")
    L.append("|---|---|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for res in results:
        wall = res.get("process_wall_s", res.get("wall_s"))
        if not res["ranks"]:
            L.append(f"| {res['name']} | - | - | {res.get('summary', '')} | "
                     f"{_mib((res.get('predicted_only') or [{}])[0].get('predicted_bytes'))} | - | "
                     f"**{res['status']}** | {(res.get('predicted_only') or [{}])[0].get('predicted_phase', '-')} "
                     f"| - | - | - | - | {wall if wall is not None else '-'} |")
            continue
        for row in res["ranks"]:
            err = _pct(row["error_pct"])
            if row["error_pct"] is not None and abs(row["error_pct"]) > TARGET_MAX_PCT:
                err = f"**{err}**"
            acc = (f"{_mib(row['accelerate_bytes'])} ({_pct(row['accelerate_error_pct'])})"
                   if "accelerate_bytes" in row else "-")
            ds = (f"{_mib(row['deepspeed_bytes'])} ({_pct(row['deepspeed_error_pct'])})"
                  if "deepspeed_bytes" in row else "-")
            L.append(f"| {res['name']} | {row['rank']} | {row['layers'][0]}-{row['layers'][1] - 1} | "
                     f"{res.get('summary', '')} | {_mib(row['predicted_bytes'])} | {_mib(row['simulated_bytes'])} | "
                     f"{err} | {row['predicted_phase']} | {row['simulated_phase']} | {acc} | {ds} | "
                     f"{row['sim_wall_s']:.1f} | {wall} |")
    L.append("")

    bad = [res for res in results if res["status"] != "ok"]
    L.append("## Unsupported, rejected or failed cases\n")
    if not bad:
        L.append("None.\n")
    for res in bad:
        pred = res.get("predicted_only") or []
        ptxt = "; ".join(f"rank {p['rank']} predicted {_mib(p['predicted_bytes'])} MiB at {p['predicted_phase']}"
                         for p in pred)
        L.append(f"- **{res['name']}** ({res.get('what', '')}): **{res['status']}** — {res.get('reason')}"
                 + (f" (cost model: {ptxt})" if ptxt else "")
                 + (f"; {len(res['ranks'])} rank(s) measured before that" if res["ranks"] else ""))
    L.append("")

    L.append(f"## Cases that miss and why (|error| > {TARGET_MAX_PCT}%)\n")
    L.append("Per category: predicted − simulated bytes at each side's peak moment, largest difference first. "
             "When the peak phases differ, the categories differ by construction (different moments); the "
             "category that carries the total's error is the one to look at.\n")
    misses = [(res, row) for res in results for row in res["ranks"]
              if row["error_pct"] is not None and abs(row["error_pct"]) > TARGET_MAX_PCT]
    if not misses:
        L.append("None.\n")
    for res, row in sorted(misses, key=lambda rr: -abs(rr[1]["error_pct"])):
        L.extend(explain_miss(res, row))
        L.append("")
    near = [(res, row) for res in results for row in res["ranks"]
            if row["error_pct"] is not None and TARGET_MEDIAN_PCT < abs(row["error_pct"]) <= TARGET_MAX_PCT]
    L.append(f"### Within {TARGET_MAX_PCT}% but above {TARGET_MEDIAN_PCT}%\n")
    if not near:
        L.append("None.\n")
    for res, row in sorted(near, key=lambda rr: -abs(rr[1]["error_pct"])):
        L.extend(explain_miss(res, row))
        L.append("")

    L.append("## Per-category breakdown of every measurement\n")
    L.append("Bytes; diff = predicted − simulated (0 rows omitted).\n")
    for res in results:
        for row in res["ranks"]:
            L.append(f"<details><summary>{res['name']} rank {row['rank']}: {_pct(row['error_pct'])}</summary>\n")
            L.append("| category | predicted B | simulated B | diff B |")
            L.append("|---|---:|---:|---:|")
            for c in CATEGORIES:
                p, q = row["predicted_breakdown"][c], row["simulated_breakdown"][c]
                if p or q:
                    L.append(f"| {c} | {p:,d} | {q:,d} | {p - q:+,d} |")
            L.append(f"| **total** | {row['predicted_bytes']:,d} | {row['simulated_bytes']:,d} | "
                     f"{row['error_bytes']:+,d} |")
            L.append("\n</details>\n")

    L.append("## Baselines: what is computed\n")
    L.append("- **accelerate** (`accelerate estimate-memory`, accelerate "
             f"{meta.get('accelerate', '?')}): its own `gather_data` on the model it would build "
             "(`AutoModel.from_config(config, dtype=float32)` under `init_empty_weights`: the base model, without "
             "the LM head); row `float32` for 32-true, `float16` for bf16-mixed / bf16-true. Inference: "
             "\"Total Size\"; full training: \"Training using Adam\" (max of model/gradients/optimizer/step: "
             "4× the fp32 size in float32, 2× the fp32 size in float16). Covered: ranks holding the whole model "
             "(tp 1, pp 1, zero 0), full training or inference. It counts no activations, no KV cache.")
    L.append("- **DeepSpeed** (deepspeed "
             f"{meta.get('deepspeed', '?')}, `DS_ACCELERATOR=cpu`): `estimate_zero2_model_states_mem_needs_all_cold` "
             "(zero 2) / `estimate_zero3_model_states_mem_needs_all_cold` (zero 3), per-GPU figure without offload "
             "(2P + 18P/N, resp. 4·largest layer + 18P/N), with total params, largest layer params "
             "(DeepSpeed's `model_to_params` rule on the transformers model), num_gpus_per_node = dp, num_nodes = 1. "
             "Covered: full training, zero 2/3, tp 1, pp 1, no HSDP. Model states only; it assumes fp16/bf16 "
             "mixed precision whatever the case's precision.")
    L.append("")
    md_path = out_dir / "accuracy.md"
    md_path.write_text("\n".join(L) + "\n")
    return md_path, json_path


def versions() -> dict:
    out = {}
    for mod in ("torch", "transformers", "accelerate", "deepspeed"):
        try:
            if mod == "deepspeed":  # importing deepspeed is slow and loud; read its metadata
                from importlib.metadata import version

                out[mod] = version("deepspeed")
            else:
                from importlib.metadata import version

                out[mod] = version(mod)
        except Exception:  # noqa: BLE001
            out[mod] = "?"
    return out


def code_state() -> dict:
    """Which code was measured: git HEAD, uncommitted changes under the cost model and the referee, and a
    digest of those files (the cost model and the referee change often; results belong to one state)."""
    import hashlib

    out: dict = {}
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "sharder", "strategies", "cluster"],
                                cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.splitlines()
        out["uncommitted"] = [line.strip() for line in status]
    except Exception:  # noqa: BLE001
        pass
    digest = hashlib.sha256()
    for folder in ("sharder", "strategies", "cluster"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    out["sources_sha256"] = digest.hexdigest()[:16]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the fast subset (tiny models)")
    ap.add_argument("--case", action="append", default=[], metavar="NAME", help="run this case (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run in this many parallel subprocesses")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for accuracy.md and accuracy.json")
    ap.add_argument("--merge", action="store_true",
                    help="merge these cases' results into the folder's existing accuracy.json")
    ap.add_argument("--timeout", type=float, default=2400, help="seconds per case before it counts as timeout")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker(args.worker, args.result)
    if args.list:
        for c in CASES:
            print(f"{c['name']:48s} {'fast ' if c['fast'] else '     '}{c['what']}")
        return 0
    unknown = [n for n in args.case if n not in BY_NAME]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    names = args.case or (FAST if args.fast else [c["name"] for c in CASES])
    out_dir = Path(args.out)
    previous: dict[str, dict] = {}
    if args.merge and (out_dir / "accuracy.json").exists():
        previous = {r["name"]: r for r in json.loads((out_dir / "accuracy.json").read_text())["results"]}

    command = "python benchmarks/accuracy.py" + (" " + " ".join(sys.argv[1:]) if argv is None else "")
    start = time.perf_counter()
    meta = dict(command=command, jobs=args.jobs, started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **versions(), code=code_state())
    results: dict[str, dict] = {}
    # the longest cases first, so that they do not end the run alone
    heavy = [n for n in names if BY_NAME[n]["model"].endswith("70b") and not BY_NAME[n].get("layers")]
    queue = heavy + [n for n in names if n not in heavy]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_in_subprocess, n, args.timeout): n for n in queue}
        for fut in as_completed(futures):
            res = fut.result()
            results[res["name"]] = res
            errs = [f"r{r['rank']} {r['error_pct']:+.2f}%" for r in res["ranks"]]
            print(f"[{time.perf_counter() - start:7.1f}s] {res['name']}: {res['status']} "
                  f"{' '.join(errs)} ({res.get('process_wall_s', '?')} s)"
                  + (f" — {res['reason'][:200]}" if res.get("reason") else ""), flush=True)
            # keep a report of what is done so far (a long run can be read while it goes)
            meta_now = dict(meta, finished="(in progress)", wall_s=time.perf_counter() - start)
            write_report(list({**previous, **results}.values()), out_dir, meta_now)
    meta.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                wall_s=time.perf_counter() - start)
    md, js = write_report(list({**previous, **results}.values()), out_dir, meta)
    summary = json.loads(js.read_text())["summary"]
    print(f"sharder: {_fmt_stats(summary['sharder'])}")
    print(f"wrote {md} and {js} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
