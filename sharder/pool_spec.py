"""GPU-pool grammar: parse `--gpus` text such as 4xA100-80, 2x8xH100+4xRTX4090 or 4xcpu into a ClusterSpec.

Grammar (case-insensitive; spaces around '+' and around the 'x' are allowed; '*' may stand for 'x')::

    spec  := term ('+' term)*
    term  := TYPE                one device of TYPE
           | N 'x' TYPE          N devices; N <= 8 is one node, N > 8 is split into nodes of 8
                                 (12xH100 -> a node of 8 and a node of 4)
           | M 'x' N 'x' TYPE    M nodes of N devices each (2x8xH100); N may exceed 8 here
    TYPE  := a catalog name or alias (see sharder.gpu_catalog / `sharder gpus`)
    N, M  := whole numbers >= 1; N, or M*N, at most 100,000 per term

Which node a device lands on:

* Terms of the form ``N x TYPE`` with N <= 8 share a node: consecutive such terms fill the same
  node while it holds at most 8 devices, so ``2xA100-80+2xRTX4090`` is ONE node of four mixed
  GPUs; a term that would take the node past 8 starts a new one (``8xA100-80+8xH100`` is two
  nodes of 8). Write ``MxNxTYPE`` to say exactly what a node holds.
* Multi-node terms (``N > 8`` or ``MxNxTYPE``) get nodes of their own, and close the shared node.
* ``cpu`` ranks all run on this one host: every cpu term goes to a single host node (placed where
  the first cpu term appears), never split into nodes of 8; ``MxNxcpu`` is refused. A cpu rank's
  capacity is that node's host memory divided by the ranks on it (ClusterSpec.devices).
* Devices are numbered node by node, in the order the nodes were written.

Defaults for the two per-node knobs (the CLI's ``--host-mem`` and ``--inter-node-bw`` replace
them, the same value for every node):

* host memory: 128 GiB per GPU on the node (1 TiB for an 8-GPU server), at least 64 GiB;
  for the cpu host node, this machine's physical memory (os.sysconf).
* inter-node bandwidth, bytes/s one direction, per NODE (NodeSpec's unit): the sum over the
  node's data-center GPUs (NVLink/xGMI boards) of one NIC each -- 400 Gb/s InfiniBand = 50 GB/s
  (DGX H100/H200/B200, MI300X), 200 Gb/s = 25 GB/s for A100 (DGX A100), 100 Gb/s shared by two
  = 6.25 GB/s for V100 (DGX-1), 12.5 GB/s per MI250X GCD (Frontier: 4 x 200 Gb/s per 8 GCDs);
  a node with only PCIe cards gets one 100 Gb/s Ethernet NIC, 12.5 GB/s for the node.
"""

from __future__ import annotations

import math
import re

from sharder.errors import SharderInputError, closest_names
from sharder.gpu_catalog import find_gpu, gpu_names, host_physical_memory_bytes
from sharder.hardware import GB, GiB, ClusterSpec, GpuType, NodeSpec

NODE_SIZE = 8
"""Devices per node when a term does not say (NxTYPE with N > 8 is cut into nodes of this size)."""
MAX_GPUS_PER_TERM = 100_000
HOST_MEM_PER_GPU = 128 * GiB
MIN_HOST_MEM = 64 * GiB
NIC_PER_DATACENTER_GPU = 50 * GB
"""400 Gb/s InfiniBand per GPU (DGX H100 / H200 / B200)."""
NIC_PCIE_NODE = 12.5 * GB
"""One 100 Gb/s Ethernet NIC for a node of PCIe cards (or the cpu host)."""
_NIC_PER_GPU = {"A100-40": 25 * GB, "A100-80": 25 * GB, "V100-16": 6.25 * GB, "V100-32": 6.25 * GB,
                "MI250X": 12.5 * GB}

EXAMPLE = "write e.g. 4xA100-80, 2x8xH100 or 2xA100-80+2xRTX4090"

# A leading count: digits, or something count-like that is malformed (-1, 1.5, 1e3, 1,000).
_COUNT = re.compile(r"^([-+]?[0-9.][0-9a-z_,.]*?)\s*[x×*]\s*(.*)$", re.IGNORECASE | re.DOTALL)
# TYPE followed by a count, e.g. "A100-80x4".
_TRAILING_COUNT = re.compile(r"^(.+?)\s*[x×*]\s*([0-9]+)$", re.IGNORECASE | re.DOTALL)


def default_host_memory_bytes(gpus: tuple[GpuType, ...]) -> int:
    """Host memory of a node holding `gpus` when --host-mem is not given."""
    if gpus and all(g.is_cpu for g in gpus):
        return host_physical_memory_bytes()
    return max(MIN_HOST_MEM, HOST_MEM_PER_GPU * len(gpus))


def default_inter_node_bandwidth(gpus: tuple[GpuType, ...]) -> float:
    """Per-node network bandwidth (bytes/s, one direction) when --inter-node-bw is not given."""
    total = 0.0
    for g in gpus:
        if g.link in ("nvlink", "xgmi"):
            total += _NIC_PER_GPU.get(g.name, NIC_PER_DATACENTER_GPU)
    return total if total > 0 else NIC_PCIE_NODE


def parse_gpus(spec: str, host_memory_bytes: int | None = None,
               inter_node_bandwidth: float | None = None) -> ClusterSpec:
    """Parse a GPU-pool spec (grammar in the module docstring) into a ClusterSpec.

    `host_memory_bytes` (per node) and `inter_node_bandwidth` (per node, bytes/s) replace the
    defaults for every node. Malformed input raises SharderInputError with one line.
    """
    if not isinstance(spec, str):
        raise SharderInputError(f"the GPU spec must be text, got {type(spec).__name__}; {EXAMPLE}")
    host_mem = _check_host_memory(host_memory_bytes)
    bandwidth = _check_bandwidth(inter_node_bandwidth)
    text = spec.strip()
    if not text:
        raise SharderInputError(f"the GPU spec is empty; {EXAMPLE}")

    # Node contents in order; the cpu host node is one mutable list, filled as cpu terms appear.
    nodes: list[tuple[GpuType, ...] | list[GpuType]] = []
    shared: list[GpuType] | None = None  # the open node that NxTYPE (N <= 8) terms fill
    cpu_node: list[GpuType] | None = None

    raw_terms = text.split("+")
    for i, raw in enumerate(raw_terms):
        term = raw.strip()
        if not term:
            raise _bad(spec, _empty_term_reason(i, len(raw_terms)))
        nodes_count, per_node, gpu = _parse_term(spec, term)
        if gpu.is_cpu:
            if nodes_count is not None:
                raise _bad(spec, f"term {term!r}: cpu ranks all run on this machine, so give one count "
                                 f"({nodes_count * per_node}xcpu), not nodes x ranks")
            if cpu_node is None:
                shared = None
                cpu_node = []
                nodes.append(cpu_node)
            cpu_node.extend([gpu] * per_node)
        elif nodes_count is not None:
            shared = None
            block = (gpu,) * per_node
            nodes.extend([block] * nodes_count)
        elif per_node > NODE_SIZE:
            shared = None
            full, rest = divmod(per_node, NODE_SIZE)
            nodes.extend([(gpu,) * NODE_SIZE] * full)
            if rest:
                nodes.append((gpu,) * rest)
        else:
            if shared is None or len(shared) + per_node > NODE_SIZE:
                shared = []
                nodes.append(shared)
            shared.extend([gpu] * per_node)

    built: list[NodeSpec] = []
    defaults: dict[int, tuple[int, float]] = {}  # by id of a node tuple that repeats (MxN, N > 8)
    for index, content in enumerate(nodes):
        gpus = content if isinstance(content, tuple) else tuple(content)
        knobs = defaults.get(id(content))
        if knobs is None:
            knobs = (host_mem if host_mem is not None else default_host_memory_bytes(gpus),
                     bandwidth if bandwidth is not None else default_inter_node_bandwidth(gpus))
            if isinstance(content, tuple):
                defaults[id(content)] = knobs  # `nodes` keeps content alive, so the id is not reused
        built.append(NodeSpec(index=index, gpus=gpus, host_memory_bytes=knobs[0], inter_node_bandwidth=knobs[1]))
    return ClusterSpec(nodes=tuple(built), spec=text)


def _parse_term(spec: str, term: str) -> tuple[int | None, int, GpuType]:
    """(nodes or None, devices per node, gpu) for one term of the sum."""
    if "," in term or ";" in term:
        raise _bad(spec, f"term {term!r}: join terms with '+', not ',' or ';'")
    counts: list[str] = []
    rest = term
    while True:
        m = _COUNT.match(rest)
        if not m:
            break
        if len(counts) == 2:
            raise _bad(spec, f"term {term!r} has more than two counts; use NxTYPE or MxNxTYPE (M nodes of N)")
        counts.append(m.group(1))
        rest = m.group(2).strip()
    type_name = rest
    if not type_name:
        raise _bad(spec, f"term {term!r} has a count but no GPU type after it")
    if type_name[0] in "xX×*":
        raise _bad(spec, f"term {term!r}: the count goes before the type, as COUNTxTYPE")
    if re.search(r"\s", type_name):
        raise _bad(spec, f"term {term!r} has a space inside; join terms with '+' and write counts as NxTYPE")
    numbers = [_count(spec, term, c) for c in counts]
    gpu = find_gpu(type_name)
    if gpu is None:
        if type_name.isdigit():
            raise _bad(spec, f"term {term!r}: {type_name!r} is a number, not a GPU type")
        m = _TRAILING_COUNT.match(type_name)
        if m and find_gpu(m.group(1)) is not None and not counts:
            raise _bad(spec, f"term {term!r}: write the count first, {m.group(2)}x{m.group(1)}")
        near = closest_names(type_name, gpu_names())
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise _bad(spec, f"unknown GPU type {type_name!r}{hint}, see `sharder gpus`")
    if not numbers:
        return None, 1, gpu
    if len(numbers) == 1:
        return None, numbers[0], gpu
    nodes_count, per_node = numbers
    if nodes_count * per_node > MAX_GPUS_PER_TERM:
        raise _bad(spec, f"term {term!r} asks for {nodes_count * per_node:,} devices; at most "
                         f"{MAX_GPUS_PER_TERM:,} per term")
    return nodes_count, per_node, gpu


def _count(spec: str, term: str, text: str) -> int:
    if text.isdigit() and text.isascii():
        value = int(text)
        if 1 <= value <= MAX_GPUS_PER_TERM:
            return value
        raise _bad(spec, f"term {term!r}: count {value:,} is out of range; counts are whole numbers "
                         f"from 1 to {MAX_GPUS_PER_TERM:,}")
    raise _bad(spec, f"term {term!r}: count {text!r} is not a whole number from 1 to {MAX_GPUS_PER_TERM:,}")


def _empty_term_reason(i: int, n: int) -> str:
    if n == 1:
        return "the spec is empty"
    if i == 0:
        return "nothing before the first '+'"
    if i == n - 1:
        return "nothing after the last '+'"
    return "two '+' with nothing between them"


def _bad(spec: str, what: str) -> SharderInputError:
    shown = spec.strip()
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SharderInputError(f"bad GPU spec {shown!r}: {what}; {EXAMPLE}")


def _check_host_memory(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SharderInputError(f"host memory must be a number of bytes, got {value!r}; e.g. --host-mem 1TiB")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise SharderInputError(f"host memory must be a whole number of bytes, got {value!r}")
        value = int(value)
    if value <= 0:
        raise SharderInputError(f"host memory must be positive, got {value!r} bytes; e.g. --host-mem 1TiB")
    return value


def _check_bandwidth(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SharderInputError(f"inter-node bandwidth must be a positive number of bytes/s per node, "
                                f"got {value!r}; e.g. --inter-node-bw 400GB/s")
    return float(value)
