"""Per-rank memory of a plan as a picture: stacked bars of the breakdown against each device's capacity.

`plot_plan(plan, path)` writes a PNG (matplotlib, Agg backend, imported only here) or a
self-contained HTML page (inline SVG and a table; no scripts, no external files). Each bar is one rank:
the breakdown categories stacked (they add up to the tensor peak), then the runtime part up to
peak_reserved_bytes (device constants, allocator fragmentation, CUDA context, communication
libraries). A solid line marks the capacity, a dashed one the budget capacity × (1 − headroom).
"""

from __future__ import annotations

import html
from pathlib import Path

from sharder.breakdown import CATEGORIES
from sharder.errors import SharderInputError

GiB = 1024 ** 3
RUNTIME = "runtime (reserved - tensors)"
COLORS = {
    "parameters": "#4e79a7", "gradients": "#f28e2b", "optimizer_states": "#e15759",
    "activations": "#76b7b2", "kv_cache": "#59a14f", "comm_buffers": "#edc948",
    "temporaries": "#b07aa1", "other": "#9c755f", RUNTIME: "#bab0ac",
}


def _segments(rank: dict) -> list[tuple[str, int]]:
    """(label, bytes) from the bottom of the bar up; the top is peak_reserved_bytes (or the tensor sum)."""
    breakdown = rank.get("breakdown") or {}
    names = [c for c in CATEGORIES if c in breakdown] + [c for c in breakdown if c not in CATEGORIES]
    segs = [(c, int(breakdown[c])) for c in names]
    tensors = sum(b for _, b in segs)
    reserved = rank.get("peak_reserved_bytes")
    if isinstance(reserved, int) and reserved > tensors:
        segs.append((RUNTIME, reserved - tensors))
    return segs


def _check(plan: dict) -> tuple[list[dict], float]:
    if not isinstance(plan, dict) or not isinstance(plan.get("ranks"), list) or not plan["ranks"]:
        raise SharderInputError(
            "plot needs a plan with per-rank estimates (\"ranks\"); write one with `sharder plan -o`")
    for r in plan["ranks"]:
        if not isinstance(r, dict) or not isinstance(r.get("capacity_bytes"), int):
            raise SharderInputError("plot: every rank needs an integer \"capacity_bytes\"")
    headroom = float(plan.get("headroom", 0.05))
    return sorted(plan["ranks"], key=lambda r: r.get("rank", 0)), headroom


def title(plan: dict, two_lines: bool = False) -> str:
    """'<model> | <parallel summary>' then '<mode> batch .. seq .. | fits' (one line, or two)."""
    model = (plan.get("model") or {}).get("name", "model")
    w = plan.get("workload") or {}
    first = " | ".join(p for p in (str(model), plan.get("summary") or "") if p)
    second = []
    if w:
        text = f"{w.get('mode', '')} batch {w.get('batch', '')} seq {w.get('seq', '')}"
        if w.get("max_new_tokens"):
            text += f" + {w['max_new_tokens']} new"
        second.append(text)
    fits = plan.get("fits")
    if fits is None:
        fits = all(r.get("fits", True) for r in plan.get("ranks") or [])
    second.append("fits" if fits else "DOES NOT FIT")
    return first + ("\n" if two_lines else " | ") + " | ".join(second)


def _labels(ranks: list[dict]) -> list[str]:
    return [f"r{r.get('rank', i)}\n{r.get('gpu', '')}" for i, r in enumerate(ranks)]


def plot_plan(plan: dict, path: str | Path) -> Path:
    """Write the per-rank memory picture to `path` (.png or .html). Returns the path."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".png":
        _png(plan, p)
    elif suffix in (".html", ".htm"):
        p.write_text(html_page(plan), encoding="utf-8")
    else:
        raise SharderInputError(f"plot: {path} must end in .png or .html")
    return p


# ------------------------------------------------------------------------------------------- PNG
def _png(plan: dict, path: Path) -> None:
    ranks, headroom = _check(plan)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(ranks)
    width = min(24.0, max(8.0, 0.6 * n + 4))
    fig, ax = plt.subplots(figsize=(width, 5.5), dpi=100)
    seen: set[str] = set()
    xs = list(range(n))
    for x, r in zip(xs, ranks):
        bottom = 0.0
        for label, b in _segments(r):
            if b <= 0:
                continue
            height = b / GiB
            ax.bar(x, height, bottom=bottom, width=0.7, color=COLORS.get(label, "#cccccc"),
                   label=label if label not in seen else None, edgecolor="white", linewidth=0.3)
            seen.add(label)
            bottom += height
        cap = r["capacity_bytes"] / GiB
        ax.hlines(cap, x - 0.42, x + 0.42, colors="black", linewidth=1.5,
                  label="capacity" if "capacity" not in seen else None)
        seen.add("capacity")
        ax.hlines(cap * (1 - headroom), x - 0.42, x + 0.42, colors="red", linestyles="dashed", linewidth=1.2,
                  label=f"budget (1 - headroom {headroom:g})" if "budget" not in seen else None)
        seen.add("budget")
    ax.set_xticks(xs)
    ax.set_xticklabels(_labels(ranks), fontsize=8 if n <= 16 else 6)
    ax.set_ylabel("GiB")
    ax.set_title(title(plan, two_lines=True), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    order = list(CATEGORIES) + [RUNTIME]
    ranked = sorted(zip(handles, labels), key=lambda hl: order.index(hl[1]) if hl[1] in order else len(order))
    ax.legend([h for h, _ in ranked], [lbl for _, lbl in ranked], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------- HTML
def html_page(plan: dict) -> str:
    """A self-contained page: an inline SVG chart (one <g class="bar"> per rank) and a table."""
    ranks, headroom = _check(plan)
    n = len(ranks)
    bar_w, gap, left, top, plot_h = 36, 14, 64, 20, 320
    width = left + n * (bar_w + gap) + gap + 20
    height = top + plot_h + 60
    ymax = max(max(r["capacity_bytes"], r.get("peak_reserved_bytes") or 0,
                   sum(b for _, b in _segments(r))) for r in ranks) / GiB * 1.05 or 1.0

    def y(gib: float) -> float:
        return top + plot_h - gib / ymax * plot_h

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11" role="img" aria-label="per-rank memory">']
    step = _tick_step(ymax)
    t = 0.0
    while t <= ymax + 1e-9:
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e5e5"/>')
        svg.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        t += step
    svg.append(f'<text x="14" y="{top + plot_h / 2:.0f}" transform="rotate(-90 14 {top + plot_h / 2:.0f})" '
               f'text-anchor="middle">GiB</text>')
    for i, r in enumerate(ranks):
        x = left + gap + i * (bar_w + gap)
        rank_id = html.escape(str(r.get("rank", i)))
        svg.append(f'<g class="bar" data-rank="{rank_id}">')
        bottom = 0.0
        for label, b in _segments(r):
            h = b / GiB
            if h <= 0:
                continue
            svg.append(f'<rect x="{x}" y="{y(bottom + h):.1f}" width="{bar_w}" height="{h / ymax * plot_h:.1f}" '
                       f'fill="{COLORS.get(label, "#cccccc")}"><title>rank {rank_id} {html.escape(label)}: '
                       f'{h:.2f} GiB</title></rect>')
            bottom += h
        cap = r["capacity_bytes"] / GiB
        svg.append(f'<line x1="{x - 4}" x2="{x + bar_w + 4}" y1="{y(cap):.1f}" y2="{y(cap):.1f}" stroke="black" '
                   f'stroke-width="2"><title>capacity {cap:.2f} GiB</title></line>')
        budget = cap * (1 - headroom)
        svg.append(f'<line x1="{x - 4}" x2="{x + bar_w + 4}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" '
                   f'stroke="red" stroke-dasharray="4 3" stroke-width="1.5"><title>budget {budget:.2f} GiB'
                   f'</title></line>')
        svg.append(f'<text x="{x + bar_w / 2}" y="{top + plot_h + 16}" text-anchor="middle">r{rank_id}</text>')
        svg.append(f'<text x="{x + bar_w / 2}" y="{top + plot_h + 30}" text-anchor="middle" font-size="9">'
                   f'{html.escape(str(r.get("gpu", "")))}</text>')
        svg.append("</g>")
    svg.append("</svg>")

    used = [c for c in list(CATEGORIES) + [RUNTIME]
            if any(lbl == c and b > 0 for r in ranks for lbl, b in _segments(r))]
    legend = "".join(f'<span class="key"><i style="background:{COLORS.get(c, "#ccc")}"></i>{html.escape(c)}</span>'
                     for c in used)
    legend += ('<span class="key"><i style="background:black;height:3px"></i>capacity</span>'
               f'<span class="key"><i style="background:red;height:2px"></i>budget (1 - headroom {headroom:g})</span>')
    head_cells = "".join(f"<th>{html.escape(c)}</th>" for c in used)
    rows = []
    for r in ranks:
        segs = dict(_segments(r))
        cells = "".join(f"<td>{segs.get(c, 0) / GiB:.2f}</td>" for c in used)
        reserved = (r.get("peak_reserved_bytes") or 0) / GiB
        rows.append(f"<tr><td>{html.escape(str(r.get('rank')))}</td><td>{html.escape(str(r.get('gpu', '')))}</td>"
                    f"<td>{html.escape(str(r.get('layers', '')))}</td>{cells}<td>{reserved:.2f}</td>"
                    f"<td>{r['capacity_bytes'] / GiB:.2f}</td><td>{'yes' if r.get('fits', True) else 'NO'}</td></tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title(plan))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.key {{ margin-right: 1.2em; white-space: nowrap; font-size: 13px; }}
.key i {{ display: inline-block; width: 14px; height: 10px; margin-right: 4px; vertical-align: middle; }}
table {{ border-collapse: collapse; font-size: 12px; margin-top: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
</style></head><body>
<h2>{html.escape(title(plan))}</h2>
<div>{legend}</div>
{"".join(svg)}
<table><thead><tr><th>rank</th><th>gpu</th><th>layers</th>{head_cells}<th>peak reserved</th><th>capacity</th>
<th>fits</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<p>GiB per rank. Bars stack the predicted breakdown at the peak moment; the runtime part reaches
peak_reserved_bytes. Black: device capacity; red dashed: capacity x (1 - headroom).</p>
</body></html>
"""


def _tick_step(ymax: float) -> float:
    for step in (0.25, 0.5, 1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if ymax / step <= 8:
            return float(step)
    return float(10 ** len(str(int(ymax))))
