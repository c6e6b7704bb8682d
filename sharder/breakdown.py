"""Per-rank memory result: categories, the two peak totals, and whether a referee checks each part."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache",
              "comm_buffers", "temporaries", "other")


def empty_breakdown() -> dict[str, int]:
    return {c: 0 for c in CATEGORIES}


@dataclass(kw_only=True)
class RankEstimate:
    """The predicted memory of one rank. Bytes are integers."""

    rank: int
    gpu: str
    node: int
    layers: tuple[int, int]
    """[start, end) decoder-layer indices this rank holds."""
    capacity_bytes: int
    breakdown: dict[str, int]
    """Category -> bytes at the peak moment (they add up to peak_tensor_bytes)."""
    peak_tensor_bytes: int
    """Live tensor bytes at the worst moment, as PyTorch's trackers count them on CPU."""
    peak_allocated_bytes: int
    """Tensor part plus device constants (cuBLAS workspace, 512-B block rounding) on GPUs."""
    peak_reserved_bytes: int
    """Allocated plus fragmentation, CUDA context and communication-library buffers."""
    fits: bool
    verified: dict[str, bool]
    peak_phase: str = ""
    """Which moment of the step the peak is at (e.g. 'loss backward', 'optimizer step', 'decode')."""
    host_bytes: int = 0
    """Bytes kept in host memory by offload."""
    coords: tuple[int, int, int] = (0, 0, 0)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank, "gpu": self.gpu, "node": self.node, "layers": list(self.layers),
            "coords": {"pp": self.coords[0], "dp": self.coords[1], "tp": self.coords[2]},
            "capacity_bytes": self.capacity_bytes,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_tensor_bytes": self.peak_tensor_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "fits": self.fits, "peak_phase": self.peak_phase,
            "breakdown": dict(self.breakdown), "verified": dict(self.verified),
            "host_bytes": self.host_bytes, "notes": list(self.notes),
        }
