"""`sharder verify`: predicted vs simulated bytes per rank and category; exit 1 beyond the tolerance.

The simulation is PyTorch's own FSDP2 / DTensor TP / pipelining on fake tensors with the fake process
group (sharder.cluster.simulate). It sees tensor bytes only: the CUDA context, NCCL buffers, allocator
fragmentation, cuBLAS workspace and CPU offload on a CPU-only host are device constants the cost model
adds on top (sharder.device_overhead), so verify compares the tensor part (`peak_tensor_bytes`).
"""

from __future__ import annotations

import json

from sharder.breakdown import CATEGORIES
from sharder.cost_model import estimate
from sharder.parallel import ParallelConfig


def representative_ranks(par: ParallelConfig, ranks) -> list[int]:
    """One rank per distinct shape: each pipeline stage's first rank, plus the last data-parallel rank
    where uneven FSDP chunks could differ, plus distinct GPU types."""
    seen, out = set(), []
    for r in ranks:
        pp_i, dp_i, tp_i = r.coords
        key = (pp_i, r.gpu, tuple(r.breakdown.values()))
        if key not in seen:
            seen.add(key)
            out.append(r.rank)
    return out


def compare(predicted: dict[str, int], simulated: dict[str, int]) -> list[dict]:
    rows = []
    for cat in CATEGORIES:
        p, s = int(predicted.get(cat, 0)), int(simulated.get(cat, 0))
        rows.append({"category": cat, "predicted_bytes": p, "simulated_bytes": s,
                     "error_pct": None if s == 0 else round((p - s) / s * 100, 3)})
    return rows


def run_verify(model, workload, par, cluster, headroom, *, rank=None, all_ranks=False, tolerance=0.03,
               as_json=False, console=None) -> int:
    from sharder.cluster.simulate import simulate_rank

    ranks = estimate(model, workload, par, cluster, headroom)
    if rank is not None:
        if not 0 <= rank < len(ranks):
            from sharder.errors import SharderInputError

            raise SharderInputError(f"--rank {rank} is outside the plan's {len(ranks)} ranks (0..{len(ranks) - 1})")
        targets = [rank]
    elif all_ranks:
        targets = representative_ranks(par, ranks)
    else:
        targets = [0]
    results = []
    worst = 0.0
    for r in targets:
        pred = ranks[r]
        sim = simulate_rank(model, workload, par, r)
        err = (pred.peak_tensor_bytes - sim.peak_bytes) / sim.peak_bytes
        worst = max(worst, abs(err))
        row = pred.to_dict()
        row.update(simulated_peak_bytes=sim.peak_bytes, error_pct=round(err * 100, 3),
                   simulated_breakdown=sim.breakdown, simulated_phase=sim.peak_phase,
                   simulated_raw=sim.raw, categories=compare(pred.breakdown, sim.breakdown),
                   wall_s=sim.wall_s, torch_version=sim.torch_version,
                   transformers_version=sim.transformers_version, notes=sim.notes)
        results.append(row)
    ok = worst <= tolerance
    if as_json:
        print(json.dumps({"model": model.name, "summary": par.summary(workload.precision), "ok": ok,
                          "tolerance": tolerance, "max_abs_error_pct": round(worst * 100, 3),
                          "ranks": results}, indent=2))
    else:
        _print(console, model, workload, par, results, tolerance, ok)
    return 0 if ok else 1


def _print(console, model, workload, par, results, tolerance, ok) -> None:
    from rich.table import Table

    gib = 1024 ** 3
    console.print(f"[bold]verify {model.name}[/bold] ({model.num_layers} layers) — {par.summary(workload.precision)}")
    for row in results:
        t = Table(title=f"rank {row['rank']} (layers {row['layers'][0]}-{row['layers'][1] - 1}): "
                        f"predicted peak at {row['peak_phase']}, simulated at {row['simulated_phase']}",
                  title_justify="left")
        for col in ("category", "predicted MiB", "simulated MiB", "error"):
            t.add_column(col, justify="right" if col != "category" else "left")
        for c in row["categories"]:
            if not c["predicted_bytes"] and not c["simulated_bytes"]:
                continue
            err = "-" if c["error_pct"] is None else f"{c['error_pct']:+.2f}%"
            t.add_row(c["category"], f"{c['predicted_bytes'] / 2**20:,.2f}", f"{c['simulated_bytes'] / 2**20:,.2f}", err)
        t.add_row("[bold]total (tensor part)[/bold]", f"{row['peak_tensor_bytes'] / 2**20:,.2f}",
                  f"{row['simulated_peak_bytes'] / 2**20:,.2f}", f"[bold]{row['error_pct']:+.3f}%[/bold]")
        console.print(t)
        console.print(f"simulated in {row['wall_s']:.1f} s with torch {row['torch_version']}, "
                      f"transformers {row['transformers_version']}; device constants on top: "
                      f"allocated {row['peak_allocated_bytes'] / gib:.2f} GiB, reserved "
                      f"{row['peak_reserved_bytes'] / gib:.2f} GiB (modelled, not simulated)")
    verdict = "[green]within[/green]" if ok else "[red]beyond[/red]"
    console.print(f"total error {verdict} the tolerance of {tolerance:.1%}")
