"""Ray pool discovery, placement and local Ray lifetime (sharder.cluster.pool, sharder.cluster.placement).

Plain-data tests first (no Ray); then a two-node `ray.cluster_utils.Cluster` whose nodes advertise
their GPUs the two ways a real cluster does (Ray's `accelerator_type:` resource, and a
`sharder.io/gpu` label), discovered into a ClusterSpec, pinned by a placement group, and run on.
"""

from __future__ import annotations

import time

import pytest

from sharder.errors import SharderInputError
from sharder.gpu_catalog import lookup_gpu
from sharder.hardware import GiB

ray = pytest.importorskip("ray")

from sharder.cluster.placement import match_ranks  # noqa: E402
from sharder.cluster.pool import RayNode, pool_from_nodes  # noqa: E402


def node(node_id: str, gpus: tuple[str, ...] = (), cpus: float = 8, **labels) -> RayNode:
    return RayNode(node_id=node_id, address="10.0.0.1", gpus=tuple(lookup_gpu(g) for g in gpus), cpus=cpus,
                   memory_bytes=64 * GiB, labels=labels)


def plan_for(spec: str, dp: int) -> dict:
    from sharder.pool_spec import parse_gpus

    return {"cluster": parse_gpus(spec).to_dict(), "parallel": {"pp": 1, "dp": dp, "tp": 1}, "ranks": []}


# ------------------------------------------------------------------ plain data


def test_pool_from_nodes_gpu_nodes_and_cpu_ranks():
    nodes = [node("a", ("A100-80",) * 2), node("b", ("RTX4090",)), node("c", cpus=4)]
    spec = pool_from_nodes(nodes)
    assert [[g.name for g in n.gpus] for n in spec.nodes] == [["A100-80"] * 2, ["RTX4090"]]
    assert spec.spec == "1x2xA100-80+1x1xRTX4090"
    with_cpu = pool_from_nodes(nodes, cpu_ranks=2)
    assert [g.name for g in with_cpu.nodes[-1].gpus] == ["cpu", "cpu"]


def test_pool_without_gpus_says_how():
    with pytest.raises(SharderInputError, match="no GPUs; pass cpu_ranks"):
        pool_from_nodes([node("c")])


def test_match_ranks_pins_each_plan_node():
    nodes = [node("x", ("RTX4090",) * 2), node("y", ("A100-80",) * 2)]
    slots = match_ranks(plan_for("1x2xA100-80+1x2xRTX4090", 4), nodes)
    assert [s.node_id for s in slots] == ["y", "y", "x", "x"]
    assert all(s.bundle == {"CPU": 1.0, "GPU": 1} for s in slots)


def test_match_ranks_prefers_the_labelled_node_and_cpu_ranks_need_cpus_only():
    nodes = [node("p", cpus=8), node("q", cpus=8, **{"sharder.io/node": "0"})]
    slots = match_ranks(plan_for("2xcpu", 2), nodes)
    assert [s.node_id for s in slots] == ["q", "q"] and slots[0].bundle == {"CPU": 1.0}


def test_match_ranks_cannot_hold_is_one_line():
    nodes = [node("x", ("A100-80",) * 2, cpus=2)]
    with pytest.raises(SharderInputError) as exc:
        match_ranks(plan_for("3xA100-80", 3), nodes)
    text = str(exc.value)
    assert "\n" not in text and "plan node 0 needs 3xA100-80" in text and "2xA100-80, 2 CPUs" in text
    with pytest.raises(SharderInputError, match="needs 2xcpu and 2 CPUs"):
        match_ranks(plan_for("2xcpu", 2), [node("z", cpus=1)])


# ------------------------------------------------------------------ a live two-node pool


@pytest.fixture(scope="module")
def two_nodes():
    """Head: 2 logical GPUs typed by Ray's accelerator_type resource (Ray's name 'A100');
    worker: 1 logical GPU typed by the sharder.io/gpu label. No driver connection is kept."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "num_gpus": 2, "resources": {"accelerator_type:A100": 1},
        "object_store_memory": 128 * 1024 ** 2, "include_dashboard": False})
    cluster.add_node(num_cpus=4, num_gpus=1, labels={"sharder.io/gpu": "RTX4090"},
                     object_store_memory=128 * 1024 ** 2)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_discover_two_nodes_with_different_accelerators(two_nodes):
    from sharder.cluster.pool import discover_pool

    spec = discover_pool(two_nodes.address)
    kinds = sorted(tuple(g.name for g in n.gpus) for n in spec.nodes)
    assert kinds == [("A100-80", "A100-80"), ("RTX4090",)]
    assert all(n.host_memory_bytes > 0 for n in spec.nodes)
    assert not ray.is_initialized()  # discover_pool connected and disconnected; the cluster runs on


def test_placement_pins_ranks_to_their_nodes_and_is_released(two_nodes):
    from ray.util import placement_group_table

    from sharder.cluster.placement import plan_placement
    from sharder.cluster.pool import connect, discover_pool, ray_nodes

    spec = discover_pool(two_nodes.address)
    plan = {"cluster": spec.to_dict(), "parallel": {"pp": 1, "dp": 3, "tp": 1}, "ranks": []}
    connect(two_nodes.address)
    try:
        nodes = ray_nodes()
        owner = {n.gpus[0].name: n.node_id for n in nodes}
        with plan_placement(plan) as placed:
            where = placement_group_table(placed.group)["bundles_to_node_id"]
            assert sorted(s.gpu for s in placed.ranks) == ["A100-80", "A100-80", "RTX4090"]
            for slot in placed.ranks:
                assert where[slot.rank] == slot.node_id == owner[slot.gpu]
        too_big = {"cluster": {"nodes": [{"index": 0, "gpus": ["RTX4090"] * 2}]},
                   "parallel": {"dp": 2}, "ranks": []}
        with pytest.raises(SharderInputError, match="needs 2xRTX4090"):
            with plan_placement(too_big):
                pass
        time.sleep(0.5)
        assert all(g["state"] == "REMOVED" for g in placement_group_table().values())
    finally:
        ray.shutdown()


def test_run_across_two_nodes(two_nodes):
    """FSDP over an A100-80 rank on the head and the RTX4090 rank on the worker (logical GPUs)."""
    pytest.importorskip("torch")
    from sharder.cluster.executor import run_plan
    from sharder.cost_model import estimate
    from sharder.model_loader import load_model
    from sharder.parallel import ParallelConfig
    from sharder.plan_file import Plan
    from sharder.pool_spec import parse_gpus
    from sharder.workload import Workload

    model, workload = load_model("tiny-llama"), Workload(mode="train", batch=2, seq=32, precision="32-true")
    parallel, cluster = ParallelConfig(dp=2, zero=3), parse_gpus("1x1xA100-80+1x1xRTX4090")
    plan = Plan(model=model, workload=workload, parallel=parallel, cluster=cluster,
                ranks=estimate(model, workload, parallel, cluster)).to_dict()
    result = run_plan(plan, address=two_nodes.address, steps=1, timeout_s=300)
    assert [r["status"] for r in result["ranks"]] == ["ok", "ok"], result["error"]
    assert result["ray"] == "address" and not ray.is_initialized()
    assert len({r["ray_node_id"] for r in result["ranks"]}) == 2
    assert result["ranks"][0]["measured_peak_allocated_bytes"] == result["ranks"][1]["measured_peak_allocated_bytes"]


# ------------------------------------------------------------------ connecting and local Ray


def test_unreachable_address_is_one_line():
    from sharder.cluster.pool import discover_pool

    start = time.monotonic()
    with pytest.raises(SharderInputError, match="cannot reach the Ray cluster at '127.0.0.1:1'") as exc:
        discover_pool("127.0.0.1:1")
    assert "\n" not in str(exc.value) and time.monotonic() - start < 10


def test_local_run_reports_the_failure_and_shuts_ray_down():
    """run_plan with no address starts a local Ray for the plan's pool and shuts it down, failure or not."""
    pytest.importorskip("torch")
    from sharder.cluster.executor import run_plan
    from sharder.cost_model import estimate
    from sharder.model_loader import load_model
    from sharder.parallel import ParallelConfig
    from sharder.plan_file import Plan
    from sharder.pool_spec import parse_gpus
    from sharder.workload import Workload

    assert not ray.is_initialized()
    model, workload = load_model("tiny-llama"), Workload(mode="train", batch=2, seq=32, precision="32-true")
    cluster = parse_gpus("1xcpu")
    plan = Plan(model=model, workload=workload, parallel=ParallelConfig(), cluster=cluster,
                ranks=estimate(model, workload, ParallelConfig(), cluster)).to_dict()
    result = run_plan(plan, steps=1, timeout_s=120, inject_fault={"rank": 0, "kind": "raise", "step": 0})
    assert result["ray"] == "local" and not ray.is_initialized()
    assert result["failed_rank"] == 0 and result["ranks"][0]["status"] == "error"
    assert "injected fault on rank 0 at step 0" in result["error"]
