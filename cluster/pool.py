"""Ray pool: read a live Ray cluster into a ClusterSpec, or start a local Ray that declares a ClusterSpec.

    from sharder.cluster.pool import discover_pool, local_ray
    spec = discover_pool("ray://head:10001")       # or None: the Ray this process is connected to
    with local_ray(parse_gpus("2xA100-80")):       # logical GPUs on this machine; shut down on exit
        ...

What a Ray node says about its GPUs, in the order it is believed:
1. resources ``sharder_gpu:<catalog name>`` (what `local_ray` declares, one unit per device, so one
   node may hold several GPU types);
2. the label ``sharder.io/gpu`` (set it with ``ray start --labels sharder.io/gpu=A100-80``);
3. Ray's own label ``ray.io/accelerator-type`` or resource ``accelerator_type:<X>`` (Ray's names:
   ``A100``, ``H100``, ...; a bare family name takes the catalog's default variant, e.g. A100 → A100-80).
The node's ``GPU`` resource gives the count. A node with no GPUs offers ``cpu`` ranks only when the
caller asks for them (``cpu_ranks=N`` per GPU-less node). Host memory is Ray's ``memory`` +
``object_store_memory`` resources (what Ray may hand out on that node, a little under its RAM).

Importing this module does not import ray; the functions do.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from sharder.errors import SharderInputError
from sharder.gpu_catalog import find_gpu, lookup_gpu
from sharder.hardware import ClusterSpec, GpuType, NodeSpec
from sharder.pool_spec import default_inter_node_bandwidth

GPU_RESOURCE_PREFIX = "sharder_gpu:"
"""Custom resource, one unit per device of that catalog type (declared by local_ray)."""
GPU_LABEL = "sharder.io/gpu"
NODE_LABEL = "sharder.io/node"
"""Label local_ray puts on the Ray node that stands for the plan's node N."""


@dataclass(frozen=True)
class RayNode:
    """One alive Ray node, as the executor needs it."""

    node_id: str
    address: str
    gpus: tuple[GpuType, ...]
    cpus: float
    memory_bytes: int
    labels: dict = field(default_factory=dict, compare=False)
    typed_resources: bool = False
    """True when the node declares `sharder_gpu:<name>` resources (bundles then ask for the type)."""


def _ray():
    import ray

    return ray


# --------------------------------------------------------------------------------------------------
# connecting
# --------------------------------------------------------------------------------------------------
def connect(address: str | None) -> bool:
    """Make sure this process is connected to Ray. Returns True when this call connected
    (the caller then disconnects with `ray.shutdown()` when done; the cluster keeps running).

    `address=None` uses the Ray this process is already connected to; raises if there is none.
    An unreachable address is SharderInputError (one line).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is None:
        raise SharderInputError("no Ray cluster: pass --address HOST:PORT (or 'auto'), or let `sharder run` "
                                "start a local one")
    unreachable = _tcp_check(address)
    if unreachable:
        raise SharderInputError(f"cannot reach the Ray cluster at {address!r} ({unreachable}); check that "
                                f"`ray start --head` runs there and the address is right")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error")
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, grpc errors ...
        with contextlib.suppress(Exception):
            ray.shutdown()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SharderInputError(f"cannot reach the Ray cluster at {address!r} ({first[:160]}); "
                                f"check that `ray start --head` runs there and the address is right") from None
    return True


def _tcp_check(address: str, timeout_s: float = 3.0) -> str | None:
    """Why `address` (HOST:PORT or ray://HOST:PORT) cannot be reached, or None. Ray itself retries an
    unreachable GCS for minutes; a plain TCP connect answers in seconds. 'auto' is left to Ray."""
    import socket

    text = address.strip()
    if text.startswith("ray://"):
        text = text[len("ray://"):]
    if text in ("auto", "local") or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return f"port {port!r} is not a number"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def local_ray(spec: ClusterSpec, *, num_cpus: int | None = None, object_store_memory: int = 256 * 1024 ** 2):
    """A local Ray that declares the devices of `spec` (logical GPUs: no GPU is needed), shut down on exit.

    One plan node → one `ray.init` node; several → a `ray.cluster_utils.Cluster` with one Ray node per
    plan node (all on this machine). Each node declares `GPU` = its non-cpu devices, one
    `sharder_gpu:<name>` unit per device, `accelerator_type:<name>`, the labels `sharder.io/node` and
    (single-type nodes) `sharder.io/gpu`, and CPUs = max(8, 2 × ranks) for the whole pool (logical:
    each rank actor takes one). Yields the list of RayNode it started.
    """
    ray = _ray()
    if ray.is_initialized():
        raise SharderInputError("this process is already connected to Ray; pass its address instead of "
                                "starting a local one")
    ranks = spec.num_devices
    total_cpus = num_cpus if num_cpus is not None else max(8, 2 * ranks)
    node_args = []
    for node in spec.nodes:
        share = max(2, round(total_cpus * len(node.gpus) / ranks)) if len(spec.nodes) > 1 else total_cpus
        node_args.append(_node_args(node, share, object_store_memory))
    cluster = None
    try:
        if len(node_args) == 1:
            args = node_args[0]
            ray.init(address="local", num_cpus=args["num_cpus"], num_gpus=args["num_gpus"],
                     resources=args["resources"], labels=args["labels"], object_store_memory=object_store_memory,
                     include_dashboard=False, log_to_driver=False, logging_level="error")
        else:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args=dict(node_args[0], include_dashboard=False))
            for args in node_args[1:]:
                cluster.add_node(**args)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
        yield ray_nodes()
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()


def _node_args(node: NodeSpec, cpus: int, object_store_memory: int) -> dict:
    gpus = [g for g in node.gpus if not g.is_cpu]
    resources: dict[str, float] = {}
    for g in gpus:
        resources[GPU_RESOURCE_PREFIX + g.name] = resources.get(GPU_RESOURCE_PREFIX + g.name, 0) + 1
        resources[f"accelerator_type:{g.name}"] = 1
    labels = {NODE_LABEL: str(node.index)}
    if gpus and len({g.name for g in gpus}) == 1:
        labels[GPU_LABEL] = gpus[0].name
    return {"num_cpus": cpus, "num_gpus": len(gpus), "resources": resources, "labels": labels,
            "object_store_memory": object_store_memory}


# --------------------------------------------------------------------------------------------------
# discovering
# --------------------------------------------------------------------------------------------------
def ray_nodes(*, strict: bool = True) -> list[RayNode]:
    """The alive nodes of the connected Ray, GPU types resolved; `strict`: an unknown type is an error
    (otherwise that node's GPUs are dropped)."""
    ray = _ray()
    out = []
    for raw in sorted((n for n in ray.nodes() if n.get("Alive")), key=_node_order):
        res = raw.get("Resources", {})
        labels = dict(raw.get("Labels") or {})
        count = int(res.get("GPU", 0))
        typed = {k[len(GPU_RESOURCE_PREFIX):]: int(v) for k, v in res.items() if k.startswith(GPU_RESOURCE_PREFIX)}
        gpus: list[GpuType] = []
        if typed:
            for name, n in sorted(typed.items()):
                gpus.extend([lookup_gpu(name)] * n)
        elif count:
            name = _gpu_name(res, labels)
            gpu = find_gpu(name) if name else None
            if gpu is None and strict:
                what = f"reports accelerator {name!r}, which is not in the catalog" if name else \
                    "has GPUs but no accelerator type"
                raise SharderInputError(
                    f"Ray node {raw.get('NodeManagerAddress')} ({raw['NodeID'][:8]}) {what}; start it with "
                    f"`ray start --labels {GPU_LABEL}=<catalog name>` (see `sharder gpus`)")
            if gpu is not None:
                gpus = [gpu] * count
        memory = int(res.get("memory", 0) + res.get("object_store_memory", 0))
        out.append(RayNode(node_id=raw["NodeID"], address=raw.get("NodeManagerAddress", ""), gpus=tuple(gpus),
                           cpus=float(res.get("CPU", 0)), memory_bytes=memory, labels=labels,
                           typed_resources=bool(typed)))
    return out


def _node_order(raw: dict):
    labels = raw.get("Labels") or {}
    index = labels.get(NODE_LABEL)
    return (0 if index is not None else 1, int(index) if (index or "").isdigit() else 0,
            raw.get("NodeManagerAddress", ""), raw.get("NodeID", ""))


def _gpu_name(resources: dict, labels: dict) -> str | None:
    if labels.get(GPU_LABEL):
        return labels[GPU_LABEL]
    if labels.get("ray.io/accelerator-type"):
        return labels["ray.io/accelerator-type"]
    for key in resources:
        if key.startswith("accelerator_type:"):
            return key.split(":", 1)[1]
    return None


def discover_pool(address: str | None = None, *, cpu_ranks: int = 0) -> ClusterSpec:
    """The ClusterSpec of a live Ray cluster: one NodeSpec per alive node with GPUs, in Ray node order
    (local_ray's nodes in plan order). `cpu_ranks`: also count N `cpu` ranks on each GPU-less node
    (capped by its CPU count). Connects to `address` if this process is not connected, and disconnects
    again afterwards (the cluster keeps running)."""
    ray = _ray()
    connected_here = connect(address)
    try:
        nodes = ray_nodes()
    finally:
        if connected_here:
            ray.shutdown()
    return pool_from_nodes(nodes, cpu_ranks=cpu_ranks, where=address or "this Ray")


def pool_from_nodes(nodes: list[RayNode], *, cpu_ranks: int = 0, where: str = "this Ray") -> ClusterSpec:
    """ClusterSpec of RayNode data (plain; see discover_pool)."""
    built, terms = [], []
    cpu = lookup_gpu("cpu")
    for node in nodes:
        gpus = node.gpus
        if not gpus and cpu_ranks:
            gpus = (cpu,) * max(1, min(cpu_ranks, int(node.cpus) or cpu_ranks))
        if not gpus:
            continue
        built.append(NodeSpec(index=len(built), gpus=gpus, host_memory_bytes=max(node.memory_bytes, 1),
                              inter_node_bandwidth=default_inter_node_bandwidth(gpus)))
        names = [g.name for g in gpus]
        if len(set(names)) == 1:
            terms.append(f"{len(names)}x{names[0]}" if gpus[0].is_cpu else f"1x{len(names)}x{names[0]}")
        else:
            terms.append("+".join(f"{names.count(n)}x{n}" for n in dict.fromkeys(names)))
    if not built:
        hint = "; pass cpu_ranks=N to run cpu ranks on its CPU-only nodes" if not cpu_ranks else ""
        raise SharderInputError(f"the Ray cluster at {where} has no GPUs{hint}")
    return ClusterSpec(nodes=tuple(built), spec="+".join(terms))


def wait_for_nodes(count: int, timeout_s: float = 30.0) -> None:
    """Wait until the connected Ray shows `count` alive nodes (after adding nodes to a Cluster)."""
    ray = _ray()
    deadline = time.monotonic() + timeout_s
    while sum(1 for n in ray.nodes() if n.get("Alive")) < count:
        if time.monotonic() > deadline:
            raise SharderInputError(f"Ray shows fewer than {count} alive nodes after {timeout_s:.0f} s")
        time.sleep(0.2)
