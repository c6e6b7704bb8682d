"""The fast subset of the accuracy matrix (benchmarks/accuracy_cases.py, `fast: True`): tiny models, one
process, a few seconds each. Every simulated rank's predicted peak must be within 3% of the referee's.

Cases that miss today are marked xfail(strict=True) with the measured error and the category that carries
it, so this file fails as soon as one of them is fixed (then drop its entry from KNOWN_MISSES).
The full matrix, with per-category tables and the accelerate / DeepSpeed baselines, is
`python benchmarks/accuracy.py` (results in benchmarks/results/accuracy.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from accuracy_cases import BY_NAME, FAST  # noqa: E402
import accuracy  # noqa: E402

TOLERANCE_PCT = 3.0

# name -> reason (measured error and the category that carries it; benchmarks/results/accuracy.md has the rest)
KNOWN_MISSES: dict[str, str] = {
}

pytestmark = pytest.mark.filterwarnings("ignore")


def _params():
    for name in FAST:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[name])] if name in KNOWN_MISSES else []
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_fast_case_within_tolerance(name):
    from sharder.cluster.simulate import simulate_rank

    case = BY_NAME[name]
    spec, workload, parallel, _ = accuracy.case_objects(case)
    predicted, _ = accuracy.predict(case)
    for rank in case["ranks"]:
        sim = simulate_rank(spec, workload, parallel, rank)
        row = accuracy.compare_rank(predicted[rank], sim)
        diffs = {c: d for c, d in row["diff_breakdown"].items() if d}
        assert abs(row["error_pct"]) <= TOLERANCE_PCT, (
            f"{name} rank {rank}: predicted {row['predicted_bytes']:,} B at {row['predicted_phase']}, "
            f"simulated {row['simulated_bytes']:,} B at {row['simulated_phase']} "
            f"({row['error_pct']:+.2f}%); category diffs (predicted - simulated): {diffs}")


def test_fast_subset_covers_the_strategies():
    cases = [BY_NAME[n] for n in FAST]
    assert 6 <= len(cases) <= 10
    par = [c["parallel"] for c in cases]
    assert any(not p for p in par)                                         # single rank
    assert any(p.get("zero", 0) >= 2 for p in par)                         # FSDP
    assert any(p.get("tp", 1) > 1 for p in par)                            # TP
    assert any(p.get("pp", 1) > 1 for p in par)                            # PP
    assert any(c["workload"]["mode"] == "inference" for c in cases)        # inference
    assert all(c["model"].startswith("tiny-") for c in cases)
