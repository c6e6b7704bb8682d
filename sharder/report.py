"""Human output: per-rank memory tables (rich), ranked plan lists and warnings; ranks with equal rows merged."""

from __future__ import annotations

from sharder.breakdown import RankEstimate

GIB = 1024 ** 3
SHORT = {"parameters": "params", "gradients": "grads", "optimizer_states": "optim", "activations": "acts",
         "kv_cache": "kv", "comm_buffers": "comm", "temporaries": "temp", "other": "other"}


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def _bar(used: int, capacity: int, width: int = 12) -> str:
    frac = used / capacity if capacity else 0
    filled = min(width, int(round(frac * width)))
    bar = "█" * filled + "·" * (width - filled)
    return f"{bar} {frac * 100:5.1f}%"


def _groups(ranks: list[RankEstimate]) -> list[tuple[str, RankEstimate]]:
    """Merge consecutive ranks whose rows are identical (big pools print a few lines, not thousands)."""
    out: list[tuple[list[int], RankEstimate]] = []
    for r in ranks:
        key = (r.gpu, r.layers, tuple(r.breakdown.values()), r.peak_reserved_bytes, r.capacity_bytes, r.node)
        if out and out[-1][2] == key:
            out[-1][0].append(r.rank)
        else:
            out.append(([r.rank], r, key))
    return [(_range_label(ids), r) for ids, r, _ in out]


def _range_label(ids: list[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"


def rank_table(ranks: list[RankEstimate], title: str):
    from rich.table import Table

    used = [c for c in SHORT if any(r.breakdown.get(c) for r in ranks)]
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    table.add_column("rank", justify="right")
    table.add_column("gpu")
    table.add_column("layers", justify="right")
    for c in used:
        table.add_column(SHORT[c], justify="right")
    table.add_column("alloc", justify="right")
    table.add_column("reserved", justify="right")
    table.add_column("capacity", justify="right")
    table.add_column("used (reserved / capacity)")
    for label, r in _groups(ranks):
        layers = f"{r.layers[0]}-{r.layers[1] - 1}" if r.layers[1] > r.layers[0] else "-"
        style = None if r.fits else "bold red"
        table.add_row(label, r.gpu, layers, *[gib(r.breakdown.get(c, 0)) for c in used],
                      gib(r.peak_allocated_bytes), gib(r.peak_reserved_bytes), gib(r.capacity_bytes),
                      _bar(r.peak_reserved_bytes, r.capacity_bytes), style=style)
    return table


def print_estimate(console, header: str, summary: str, ranks: list[RankEstimate], warnings: list[str],
                   headroom: float) -> None:
    fits = all(r.fits for r in ranks)
    console.print(f"[bold]{header}[/bold]")
    console.print(f"plan: [cyan]{summary}[/cyan]")
    console.print(rank_table(ranks, "per-rank memory at the peak (GiB)"))
    worst = max(ranks, key=lambda r: r.peak_reserved_bytes / r.capacity_bytes)
    phase = f" (peak at {worst.peak_phase})" if worst.peak_phase else ""
    if fits:
        console.print(f"[green]fits[/green]: worst rank {worst.rank} uses {gib(worst.peak_reserved_bytes)} of "
                      f"{gib(worst.capacity_bytes)} GiB{phase}, headroom {headroom:.0%} kept")
    else:
        console.print(f"[red]does not fit[/red]: rank {worst.rank} needs {gib(worst.peak_reserved_bytes)} GiB, "
                      f"capacity {gib(worst.capacity_bytes)} GiB × (1 − {headroom:.2f}){phase}")
    for w in warnings:
        console.print(f"[yellow]warning[/yellow]: {w}")


def plans_table(plans, title: str = "best plans, ranked by tokens/s"):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("plan")
    table.add_column("split")
    table.add_column("micro", justify="right")
    table.add_column("ac")
    table.add_column("tokens/s", justify="right")
    table.add_column("step s", justify="right")
    table.add_column("worst rank GiB", justify="right")
    for i, p in enumerate(plans, 1):
        worst = max(p.ranks, key=lambda r: r.peak_reserved_bytes / r.capacity_bytes)
        split = "/".join(str(e - s) for s, e in p.parallel.stage_layers(p.model.num_layers))
        table.add_row(str(i), p.summary(), split, str(p.workload.micro_batches), p.workload.ac,
                      f"{p.tokens_per_s:,.0f}", f"{p.step_time_s:.3f}",
                      f"{gib(worst.peak_reserved_bytes)} / {gib(worst.capacity_bytes)}")
    return table
