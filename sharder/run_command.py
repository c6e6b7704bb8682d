"""`sharder run`: estimate the plan, start it on Ray (sharder.cluster.executor) and print every rank's
predicted vs measured peak. Exit 0 when every rank ran and stayed within tolerance, 1 when a rank failed or
measured beyond its prediction (or the plan does not fit), 2 for bad input."""

from __future__ import annotations

import json

from sharder.errors import DoesNotFitError, SharderInputError


def run_command(model, workload, par, cluster, headroom: float, *, address: str | None, steps: int,
                timeout_s: float, tolerance: float, as_json: bool, console) -> int:
    if tolerance < 0:
        raise SharderInputError(f"--tolerance must be >= 0 (a fraction, e.g. 0.03), got {tolerance}")
    if timeout_s <= 0:
        raise SharderInputError(f"--timeout must be > 0 seconds, got {timeout_s}")
    try:
        import ray  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise SharderInputError(f"`sharder run` needs the run extra ({exc.name} is missing): "
                                "pip install 'sharder[run]'") from None
    from sharder.plan_file import estimate_plan

    plan = estimate_plan(model, workload, par, cluster, headroom).to_dict()
    if not plan["fits"]:
        worst = max(plan["ranks"], key=lambda r: r["peak_reserved_bytes"] / max(r["capacity_bytes"], 1))
        raise DoesNotFitError(
            f"the plan does not fit: rank {worst['rank']} needs {worst['peak_reserved_bytes'] / 2**30:.2f} GiB of "
            f"{worst['capacity_bytes'] / 2**30:.2f} GiB usable; try `sharder plan` for one that fits")
    from sharder.cluster.executor import run_plan

    result = run_plan(plan, address=address, steps=steps, timeout_s=timeout_s, tolerance=tolerance)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_run(console, plan, result)
    return 0 if result["ok"] else 1


def _gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.3f}" if value >= 2**27 else f"{value / 2**20:.2f} MiB"


def _verdict(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row.get("beyond_prediction"):
        return "BEYOND"
    return "ok" if row.get("within_tolerance") else "ok (over-predicted)"


def print_run(console, plan: dict, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"sharder run: {plan['model']['name']} — {plan['summary']} on {plan['cluster'].get('spec')}")
    for col in ("rank", "gpu", "layers", "compared", "predicted", "measured", "error", "status"):
        table.add_column(col, justify="right" if col in ("rank", "predicted", "measured", "error") else "left")
    for row in result["ranks"]:
        basis = row.get("compared_with") or "peak_allocated_bytes"
        err = row.get("error_pct")
        layers = row.get("layers")
        table.add_row(
            str(row["rank"]), str(row.get("gpu") or "-"),
            f"{layers[0]}-{layers[1] - 1}" if isinstance(layers, list) and len(layers) == 2 else str(layers or "-"),
            basis.replace("_bytes", ""), _gib(row.get(basis)), _gib(row.get("measured_peak_allocated_bytes")),
            "-" if err is None else f"{err:+.2f}%",
            _verdict(row),
        )
    console.print(table)
    sizes = "GiB (MiB where marked)"
    console.print(f"sizes in {sizes}; tolerance ±{100 * result['tolerance']:.1f}%; "
                  f"launch overhead {result.get('launch_overhead_s')} s; wall {result.get('wall_s')} s")
    for row in result["ranks"]:
        if row.get("error"):
            console.print(f"rank {row['rank']} {row['status']}: {row['error']}", markup=False)
    if result.get("error"):
        console.print(f"failed: {result['error']}", markup=False)
    elif not result["ok"]:
        console.print("failed: measured peak beyond prediction on some rank", markup=False)
