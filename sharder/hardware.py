"""Hardware types: a GPU model, a node of GPUs, and the ClusterSpec the cost model and solver take."""

from __future__ import annotations

from dataclasses import dataclass

from sharder.errors import SharderInputError

GiB = 1024 ** 3
MiB = 1024 ** 2
GB = 1000 ** 3


@dataclass(frozen=True, kw_only=True)
class GpuType:
    """One accelerator model. Bytes are integers; speeds per second."""

    name: str
    """Catalog name as users type it, e.g. 'A100-80', 'H100-80-SXM', 'RTX4090', 'cpu'."""
    marketed_bytes: int
    """What the box says (80 GB -> 80e9 or 80 GiB as the vendor means it)."""
    usable_bytes: int
    """What the device reports as its total (torch.cuda.mem_get_info()[1]); plans use this."""
    bf16_flops: float
    """Dense bf16 peak FLOP/s (no sparsity)."""
    fp16_flops: float
    fp32_flops: float
    mem_bandwidth: float
    """HBM/GDDR bandwidth, bytes/s."""
    intra_node_bandwidth: float
    """Per-GPU bandwidth to its node peers (NVLink/xGMI, else PCIe), bytes/s, one direction."""
    link: str
    """'nvlink', 'xgmi', 'pcie' or 'none' (cpu)."""
    vendor: str = "nvidia"
    is_cpu: bool = False

    def __post_init__(self) -> None:
        if self.usable_bytes <= 0 or self.usable_bytes > self.marketed_bytes * 1.1 + GiB:
            raise SharderInputError(f"GPU {self.name}: usable_bytes {self.usable_bytes} is not plausible")


@dataclass(frozen=True, kw_only=True)
class Device:
    """One rank's device in the pool."""

    index: int
    """Global index in the pool; the plan's rank r runs on devices[r]."""
    node: int
    local_index: int
    gpu: GpuType
    capacity_bytes: int
    """usable_bytes for a GPU; for cpu ranks host memory ÷ ranks on that host."""


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    index: int
    gpus: tuple[GpuType, ...]
    host_memory_bytes: int
    inter_node_bandwidth: float
    """Per-node network bandwidth, bytes/s, one direction (e.g. 8x400 Gb/s InfiniBand = 400e9)."""


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """The pool: nodes of GPUs. Devices are numbered node by node."""

    nodes: tuple[NodeSpec, ...]
    spec: str = ""
    """The text it was parsed from, for messages and the plan JSON."""

    def __post_init__(self) -> None:
        if not self.nodes or not any(n.gpus for n in self.nodes):
            raise SharderInputError("the GPU pool is empty; give e.g. --gpus 4xA100-80")

    @property
    def devices(self) -> list[Device]:
        out: list[Device] = []
        for node in self.nodes:
            for local, gpu in enumerate(node.gpus):
                capacity = node.host_memory_bytes // len(node.gpus) if gpu.is_cpu else gpu.usable_bytes
                out.append(Device(index=len(out), node=node.index, local_index=local, gpu=gpu,
                                  capacity_bytes=capacity))
        return out

    @property
    def num_devices(self) -> int:
        return sum(len(n.gpus) for n in self.nodes)

    @property
    def gpus_per_node(self) -> int:
        """Largest node size (tensor parallel stays inside a node)."""
        return max(len(n.gpus) for n in self.nodes)

    @property
    def homogeneous(self) -> bool:
        return len({g.name for n in self.nodes for g in n.gpus}) == 1

    def to_dict(self) -> dict:
        return {"spec": self.spec, "nodes": [
            {"index": n.index, "gpus": [g.name for g in n.gpus], "host_memory_bytes": n.host_memory_bytes,
             "inter_node_bandwidth": n.inter_node_bandwidth} for n in self.nodes]}
