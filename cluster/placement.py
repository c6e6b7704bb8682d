"""One Ray placement group per plan: bundle r pins rank r to the Ray node standing for the plan's node.

    with plan_placement(plan_dict) as placed:        # SharderInputError before anything starts
        placed.group, placed.ranks[r].node_id, placed.ranks[r].bundle

Matching (plain data, `match_ranks`): the plan's nodes are taken in order; each gets the first unused
alive Ray node that has, for every GPU type the plan node uses, at least that many devices of the type
and the CPUs for its ranks (a `cpu` rank needs CPUs only). local_ray's nodes carry the label
`sharder.io/node=N` and are preferred for plan node N. A plan the pool cannot hold raises
SharderInputError with one line naming the first plan node without a home and what the pool offers.

Bundle r = {"CPU": cpus_per_rank} (+ {"GPU": 1} for a GPU rank, + {"sharder_gpu:<type>": 1} where the
node declares per-type resources, so a mixed node gives each rank its own type), and its label
selector {"ray.io/node-id": <node id>} pins it. The group is removed on every exit path.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

from sharder.errors import SharderInputError

from .pool import GPU_RESOURCE_PREFIX, NODE_LABEL, RayNode

NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True)
class RankSlot:
    """Where rank `rank` runs."""

    rank: int
    plan_node: int
    gpu: str
    """Catalog name of the rank's device in the plan ('cpu' for cpu ranks)."""
    node_id: str
    address: str
    bundle: dict

    @property
    def uses_gpu(self) -> bool:
        return "GPU" in self.bundle


@dataclass
class Placement:
    group: object
    ranks: list[RankSlot]


def plan_devices(plan: dict) -> list[tuple[int, str]]:
    """(plan node, gpu name) of every rank r, from the plan's `ranks` (else its cluster's devices, node by node)."""
    ranks = plan.get("ranks") or []
    if ranks:
        return [(int(r["node"]), str(r["gpu"])) for r in sorted(ranks, key=lambda r: r["rank"])]
    out = []
    for node in plan["cluster"]["nodes"]:
        out.extend((int(node["index"]), str(g)) for g in node["gpus"])
    return out


def match_ranks(plan: dict, nodes: list[RayNode], *, cpus_per_rank: float = 1.0) -> list[RankSlot]:
    """Rank → Ray node, or SharderInputError (one line) when the pool cannot hold the plan."""
    devices = plan_devices(plan)
    world = _world_size(plan)
    if world is not None and world != len(devices):
        raise SharderInputError(f"the plan has {len(devices)} ranks but its degrees multiply to {world}; "
                                f"write the plan again with `sharder plan -o`")
    by_node: dict[int, list[int]] = {}
    for rank, (node, _) in enumerate(devices):
        by_node.setdefault(node, []).append(rank)
    used: set[str] = set()
    home: dict[int, RayNode] = {}
    for plan_node, ranks in by_node.items():
        need = Counter(devices[r][1] for r in ranks if devices[r][1] != "cpu")
        cpus = cpus_per_rank * len(ranks)
        free = [n for n in nodes if n.node_id not in used]
        free.sort(key=lambda n: 0 if n.labels.get(NODE_LABEL) == str(plan_node) else 1)
        fit = next((n for n in free if _holds(n, need, cpus)), None)
        if fit is None:
            want = " + ".join(f"{c}x{g}" for g, c in need.items()) or f"{len(ranks)}xcpu"
            offer = "; ".join(_describe(n) for n in nodes) or "no alive nodes"
            raise SharderInputError(
                f"the Ray pool cannot hold the plan: plan node {plan_node} needs {want} and {cpus:g} CPUs on one "
                f"node, and no unused Ray node has them (Ray offers: {offer})")
        used.add(fit.node_id)
        home[plan_node] = fit
    slots = []
    for rank, (plan_node, gpu) in enumerate(devices):
        node = home[plan_node]
        bundle: dict[str, float] = {"CPU": cpus_per_rank}
        if gpu != "cpu":
            bundle["GPU"] = 1
            if node.typed_resources:
                bundle[GPU_RESOURCE_PREFIX + gpu] = 1
        slots.append(RankSlot(rank=rank, plan_node=plan_node, gpu=gpu, node_id=node.node_id,
                              address=node.address, bundle=bundle))
    return slots


def _world_size(plan: dict) -> int | None:
    par = plan.get("parallel") or {}
    try:
        return int(par.get("pp", 1)) * int(par.get("dp", 1)) * int(par.get("tp", 1))
    except (TypeError, ValueError):
        return None


def _holds(node: RayNode, need: Counter, cpus: float) -> bool:
    if node.cpus < cpus:
        return False
    have = Counter(g.name for g in node.gpus)
    return all(have[g] >= c for g, c in need.items())


def _describe(node: RayNode) -> str:
    have = Counter(g.name for g in node.gpus)
    gpus = " + ".join(f"{c}x{g}" for g, c in have.items()) or "no GPUs"
    return f"{node.address} {gpus}, {node.cpus:g} CPUs"


@contextlib.contextmanager
def plan_placement(plan: dict, nodes: list[RayNode] | None = None, *, cpus_per_rank: float = 1.0,
                   ready_timeout_s: float = 60.0, name: str = ""):
    """Reserve the plan's bundles; yields a Placement; removes the group on exit, whatever happens."""
    import ray
    from ray.util import placement_group, remove_placement_group

    from .pool import ray_nodes

    slots = match_ranks(plan, nodes if nodes is not None else ray_nodes(), cpus_per_rank=cpus_per_rank)
    group = placement_group([s.bundle for s in slots], strategy="PACK", name=name,
                            bundle_label_selector=[{NODE_ID_LABEL: s.node_id} for s in slots])
    try:
        try:
            ray.get(group.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise SharderInputError(
                f"the Ray pool has the devices the plan needs, but they did not become free within "
                f"{ready_timeout_s:.0f} s (other jobs hold them?)") from None
        yield Placement(group=group, ranks=slots)
    finally:
        with contextlib.suppress(Exception):
            remove_placement_group(group)
