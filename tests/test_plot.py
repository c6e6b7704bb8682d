"""plot_plan: a PNG with the PNG signature, and a self-contained HTML page with one bar per rank."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sharder.errors import SharderInputError
from sharder.plot import RUNTIME, _segments, html_page, plot_plan

GiB = 1024 ** 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_plan(n_ranks: int = 2, *, capacity: int = 80 * GiB, headroom: float = 0.05, over: int | None = None) -> dict:
    """A small plan dict by hand: n pipeline ranks with a training-like breakdown; rank `over` exceeds its budget."""
    ranks = []
    for r in range(n_ranks):
        scale = 1.6 if r == over else 0.5 + 0.05 * r
        tensor = int(capacity * scale * 0.9)
        breakdown = {"parameters": tensor * 4 // 10, "gradients": tensor // 10, "optimizer_states": tensor * 3 // 10,
                     "activations": tensor // 10, "kv_cache": 0, "comm_buffers": tensor // 20,
                     "temporaries": tensor // 40}
        breakdown["other"] = tensor - sum(breakdown.values())
        reserved = int(capacity * scale)
        ranks.append({"rank": r, "gpu": "A100-80", "node": 0, "layers": [r * 4, r * 4 + 4],
                      "capacity_bytes": capacity, "peak_tensor_bytes": tensor, "peak_allocated_bytes": tensor,
                      "peak_reserved_bytes": reserved, "fits": reserved <= capacity * (1 - headroom),
                      "breakdown": breakdown, "verified": {k: True for k in breakdown}})
    return {"schema": "sharder.plan/1", "model": {"name": "tiny-llama"},
            "workload": {"mode": "train", "batch": 4, "seq": 2048},
            "summary": f"TP=1 PP={n_ranks} DP=1 ZeRO-0 1f1b bf16-mixed", "headroom": headroom,
            "fits": all(r["fits"] for r in ranks), "ranks": ranks}


def test_png_has_the_signature_and_content(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_plan(make_plan(2), tmp_path / "plan.png")
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # bars, legend and title, not an empty canvas
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 600 and height >= 500


def test_png_for_many_ranks_and_an_over_budget_rank(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_plan(make_plan(24, over=5), tmp_path / "wide.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_html_has_one_bar_per_rank_and_is_self_contained(tmp_path):
    plan = make_plan(3, over=2)
    page = plot_plan(plan, tmp_path / "plan.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r'<g class="bar" data-rank="\d+">', page)) == 3
    assert [int(x) for x in re.findall(r'data-rank="(\d+)"', page)] == [0, 1, 2]
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "DOES NOT FIT" in page and plan["summary"] in page
    # every rank's bar: one rect per non-zero segment, then capacity and budget lines
    bars = re.findall(r'<g class="bar".*?</g>', page, flags=re.S)
    for bar, rank in zip(bars, plan["ranks"]):
        nonzero = [s for s in _segments(rank) if s[1] > 0]
        assert bar.count("<rect") == len(nonzero)
        assert 'stroke="black"' in bar and 'stroke="red"' in bar
    # the stack reaches peak_reserved_bytes: tensor categories plus the runtime part
    segs = _segments(plan["ranks"][0])
    assert segs[-1][0] == RUNTIME
    assert sum(b for _, b in segs) == plan["ranks"][0]["peak_reserved_bytes"]
    # the table repeats the numbers (GiB, two decimals)
    assert f"{plan['ranks'][1]['peak_reserved_bytes'] / GiB:.2f}" in page


def test_html_bar_heights_are_to_scale():
    plan = make_plan(2)
    page = html_page(plan)
    heights = [sum(float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', bar))
               for bar in re.findall(r'<g class="bar".*?</g>', page, flags=re.S)]
    want = [r["peak_reserved_bytes"] for r in plan["ranks"]]
    assert heights[1] / heights[0] == pytest.approx(want[1] / want[0], rel=0.01)


def test_bad_inputs():
    with pytest.raises(SharderInputError, match=r"\.png or \.html"):
        plot_plan(make_plan(), "plan.pdf")
    with pytest.raises(SharderInputError, match="ranks"):
        html_page({"ranks": []})


def test_import_is_cheap():
    """`import sharder.plot` loads no matplotlib (only writing a PNG does)."""
    code = textwrap.dedent("""
        import sys
        import sharder.plot
        print(any(m.startswith(("matplotlib", "torch")) for m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
