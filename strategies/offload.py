"""CPU offload: FSDP2 CPUOffloadPolicy, DeepSpeed optimizer/parameter offload; host bytes and PCIe time."""

from __future__ import annotations

VERIFIED = False  # a CPU-only host cannot tell offload from no offload; check on a GPU

PCIE_BYTES_PER_S = 25e9
"""Effective host<->device bandwidth of PCIe Gen4 x16, one direction."""


def moves_to_host(framework: str, offload: str) -> dict[str, bool]:
    """Which states leave the device."""
    if offload == "none":
        return {"parameters": False, "gradients": False, "optimizer_states": False}
    if framework == "torch":  # CPUOffloadPolicy: sharded params, grads and the optimizer step on CPU
        return {"parameters": True, "gradients": True, "optimizer_states": True}
    return {"parameters": offload in ("params", "all"), "gradients": True,
            "optimizer_states": True}


def transfer_seconds(bytes_moved: int, bandwidth: float = PCIE_BYTES_PER_S) -> float:
    return bytes_moved / bandwidth
