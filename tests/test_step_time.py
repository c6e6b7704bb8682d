"""The step-time model: what each knob costs, and the lower bound the solver prunes with."""

import itertools

import pytest

from sharder.model_loader import load_model
from sharder.parallel import ParallelConfig
from sharder.pool_spec import parse_gpus
from sharder.step_time import (BW_EFFICIENCY, DECODE_BW_EFFICIENCY, Group, MATMUL_EFFICIENCY, StepModel,
                               pool_layout, step_time)
from sharder.workload import Workload

M7 = load_model("llama-2-7b")


def _train(**kw):
    base = dict(mode="finetune", batch=8, seq=4096, precision="bf16-mixed")
    base.update(kw)
    return Workload(**base)


def test_full_checkpointing_costs_a_third_more_compute():
    pool, par = parse_gpus("8xA100-80"), ParallelConfig(dp=8, zero=3)
    none = step_time(M7, _train(ac="none"), par, pool)
    full = step_time(M7, _train(ac="full"), par, pool)
    sel = step_time(M7, _train(ac="selective"), par, pool)
    assert full[2]["recompute_s"] == pytest.approx(full[2]["compute_s"] / 3, rel=0.05)
    assert none[0] < sel[0] < full[0]
    assert 1.2 < full[0] / none[0] < 1.4


def test_gradient_accumulation_is_not_free():
    """PP = 1: more micro-batches mean smaller matmuls, more launches and an FSDP all-gather and
    reduce-scatter per micro-batch."""
    pool, par = parse_gpus("8xA100-80"), ParallelConfig(dp=8, zero=3)
    one = step_time(M7, _train(micro_batches=1), par, pool)[0]
    four = step_time(M7, _train(micro_batches=4), par, pool)[0]
    eight = step_time(M7, _train(micro_batches=8), par, pool)[0]
    assert one < four < eight


def test_pipeline_bubble_shrinks_with_micro_batches():
    pool, par = parse_gpus("4xA100-80"), ParallelConfig(pp=4)
    steps = [step_time(M7, _train(batch=32, micro_batches=m), par, pool) for m in (4, 8, 32)]
    bubbles = [parts["bubble_s"] / seconds for seconds, _, parts in steps]
    assert bubbles[0] > bubbles[1] > bubbles[2]
    assert bubbles[0] == pytest.approx(3 / 7, rel=0.1)  # (P - 1) / (M + P - 1)
    assert steps[1][0] < steps[0][0]


def test_offload_pays_pcie_and_host_optimizer():
    pool = parse_gpus("8xA100-80")
    on = step_time(M7, _train(), ParallelConfig(dp=8, zero=3, offload="all"), pool)
    off = step_time(M7, _train(), ParallelConfig(dp=8, zero=3), pool)
    assert on[0] > off[0]
    assert on[2]["step_extra_s"] > 10 * off[2]["step_extra_s"]  # AdamW on the host
    assert on[2]["offload_s"] > 0


def test_tensor_parallel_across_nodes_is_slower():
    """The same TP=2 over NVLink versus over the network (one GPU per node)."""
    w = _train(batch=1)
    inside = step_time(M7, w, ParallelConfig(tp=2), parse_gpus("2xA100-80"))
    across = step_time(M7, w, ParallelConfig(tp=2), parse_gpus("2x1xA100-80"))
    assert across[2]["tp_comm_s"] > 5 * inside[2]["tp_comm_s"]


def test_group_collectives():
    ring = Group(size=4, nodes=4, per_node=1, intra_bw=300e9, net_bw=25e9)
    assert ring.all_gather(1e9) == pytest.approx(3 / 4 * 1e9 / (25e9 * BW_EFFICIENCY), rel=0.01)
    node = Group(size=8, nodes=1, per_node=8, intra_bw=300e9, net_bw=25e9)
    assert node.all_gather(1e9) == pytest.approx(7 / 8 * 1e9 / (300e9 * BW_EFFICIENCY), rel=0.01)
    both = Group(size=16, nodes=2, per_node=8, intra_bw=300e9, net_bw=25e9)
    assert node.all_gather(1e9) < both.all_gather(1e9) < ring.all_gather(1e9)
    assert both.all_reduce(1e9) == pytest.approx(2 * both.all_gather(1e9))


def test_layout_groups_follow_the_rank_order():
    pool = parse_gpus("2x8xH100")
    lay = pool_layout(pool, ParallelConfig(tp=8, dp=2))
    assert (lay.stages[0].tp.nodes, lay.stages[0].dp.nodes, lay.stages[0].dp.per_node) == (1, 2, 1)
    lay = pool_layout(pool, ParallelConfig(tp=2, pp=2, dp=4))
    assert lay.stages[0].dp.nodes == 1 and lay.stages[0].next_link_bw == pool.nodes[0].inter_node_bandwidth / 8


def test_decode_is_memory_bound():
    m = load_model("llama-70b")
    w = Workload(seq=128, max_new_tokens=1000)
    seconds, tps, parts = step_time(m, w, ParallelConfig(tp=8), parse_gpus("8xH100"))
    reads = m.total_params() * 2 / 8 / (3350e9 * DECODE_BW_EFFICIENCY)  # weights, per GPU per token
    # plus two all-reduces and the kernel launches per layer: about 12 ms a token, as TP=8 serving sees
    assert reads < parts["decode_s"] / 1000 < 2 * reads
    assert tps == pytest.approx(1000 / seconds)


def test_prefill_is_compute_bound():
    m = load_model("llama-70b")
    seconds, _, _ = step_time(m, Workload(seq=8192), ParallelConfig(tp=8), parse_gpus("8xH100"))
    flops = 2 * m.total_params() * 8192
    assert seconds > flops / 8 / (989e12 * MATMUL_EFFICIENCY)


def test_slower_gpu_slower_stage():
    sm = StepModel(M7, _train(micro_batches=8), ParallelConfig(pp=2), parse_gpus("H100+A100-80"))
    assert sm.layer_s(1) > 2.5 * sm.layer_s(0)


@pytest.mark.parametrize("pool,M", [("4xA100-80", 4), ("2xH100+2xRTX4090", 8), ("H100+A100-80+L4", 3)])
def test_lower_bound_holds_for_every_split(pool, M):
    model = M7.with_layers(9)
    cluster = parse_gpus(pool)
    P = cluster.num_devices
    sm = StepModel(model, _train(micro_batches=M, batch=24), ParallelConfig(pp=P), cluster)
    bound = sm.lower_bound(9)
    best = min(sm.quanta(c) for c in itertools.product(range(1, 10), repeat=P) if sum(c) == 9)
    assert bound <= best
    assert bound >= 0.9 * best  # and it is tight enough to prune
