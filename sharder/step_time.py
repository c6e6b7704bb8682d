"""Step-time model: compute at a fraction of peak FLOP/s, decode at memory bandwidth, communication from
message sizes and link bandwidths, pipeline bubble and offload transfers. Plain arithmetic.

Assumptions (stated in every plan's `step_time_parts_s`): dense matmul efficiency MFU_TRAIN of peak
for training and prefill; FSDP/DP communication overlaps compute (the step takes the larger of the two);
tensor-parallel all-reduces do not overlap; pipeline bubble (P-1)/(M+P-1); offload moves every offloaded
byte over PCIe once each way per step and does not overlap.
"""

from __future__ import annotations

from sharder.hardware import ClusterSpec, GpuType
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload
from sharder.strategies import offload, pipeline

MFU_TRAIN = 0.45
"""Fraction of dense peak FLOP/s reached by large matmuls (typical measured MFU of well-tuned FSDP/TP)."""
BW_EFFICIENCY = 0.8
"""Fraction of nominal link bandwidth collectives reach."""
DECODE_BW_EFFICIENCY = 0.7


def peak_flops(gpu: GpuType, precision: str) -> float:
    return gpu.fp32_flops if precision == "32-true" else gpu.bf16_flops


def _group_bandwidth(cluster: ClusterSpec, group_size: int, spans_nodes: bool) -> float:
    devs = cluster.devices
    intra = min(d.gpu.intra_node_bandwidth for d in devs)
    if not spans_nodes:
        return intra * BW_EFFICIENCY
    per_gpu = min(n.inter_node_bandwidth / max(1, len(n.gpus)) for n in cluster.nodes)
    return min(intra, per_gpu) * BW_EFFICIENCY


def training_flops_per_step(model: ModelSpec, w: Workload, tokens: int) -> float:
    """6 × active parameters × tokens (forward 2, backward 4), + attention scores, + recompute (ac=full)."""
    dense = 6 * model.active_params_per_token() * tokens
    attn = 6 * 2 * model.num_layers * model.q_size * w.seq * tokens / 2  # causal: half the scores
    recompute = 1 + (1 / 3 if w.ac == "full" else 0)
    return (dense + attn) * recompute


def step_time(model: ModelSpec, w: Workload, par: ParallelConfig, cluster: ClusterSpec,
              stage_layers: list[tuple[int, int]] | None = None) -> tuple[float, float, dict[str, float]]:
    """(seconds per step, tokens per second, parts). Training: one optimizer step of the global batch."""
    devs = cluster.devices
    stages = stage_layers or par.stage_layers(model.num_layers)
    if not w.training:
        return _inference_time(model, w, par, cluster, stages)
    global_tokens = w.batch * par.dp * w.seq
    flops_total = training_flops_per_step(model, w, global_tokens)
    # the slowest stage bounds the pipeline: its share of layers over its GPUs' speed
    stage_times = []
    for s, (start, end) in enumerate(stages):
        ranks = [r for r in range(par.world_size) if par.coords(r)[0] == s]
        speed = min(peak_flops(devs[r].gpu, w.precision) for r in ranks) * MFU_TRAIN
        share = (end - start) / model.num_layers
        stage_times.append(flops_total * share / (par.dp * par.tp) / speed)
    compute = max(stage_times)
    nodes_of = lambda ranks: len({devs[r].node for r in ranks})  # noqa: E731
    tp_group = [r for r in range(par.tp)]
    tp_bw = _group_bandwidth(cluster, par.tp, nodes_of(tp_group) > 1)
    c = w.compute_bytes
    tokens_per_rank = w.batch * w.seq
    layers_per_stage = max(e - s for s, e in stages)
    tp_comm = 0.0
    if par.tp > 1:
        per_layer = 4 * 2 * (par.tp - 1) / par.tp * tokens_per_rank * model.hidden_size * c
        tp_comm = layers_per_stage * per_layer / tp_bw
    dp_group = [par.tp * d for d in range(par.dp)]
    dp_bw = _group_bandwidth(cluster, par.dp, nodes_of(dp_group) > 1)
    stage_params = model.total_params() / par.pp / par.tp
    dp_comm = 0.0
    if par.dp > 1:
        trained = stage_params if w.full_training else stage_params * 0.01
        if par.zero >= 2:
            gathers = 2 if par.zero == 3 else 1
            dp_comm = (par.dp - 1) / par.dp * (gathers * stage_params * c + trained * 4) / dp_bw
        else:
            dp_comm = 2 * (par.dp - 1) / par.dp * trained * 4 / dp_bw
    bubble = pipeline.bubble_fraction(par.schedule, w.micro_batches, par.pp)
    pp_comm = 0.0
    if par.pp > 1:
        pp_comm = 2 * tokens_per_rank * model.hidden_size * c / _group_bandwidth(cluster, 2, True)
    offload_s = 0.0
    if par.offload != "none":
        offload_s = offload.transfer_seconds(int(2 * stage_params / max(1, par.dp_shard) * 4 * 2))
    busy = max(compute, dp_comm) + tp_comm + pp_comm
    total = busy / (1 - bubble) + offload_s
    parts = {"compute_s": compute, "tp_comm_s": tp_comm, "dp_comm_s": dp_comm, "pp_comm_s": pp_comm,
             "bubble_s": total - busy - offload_s, "offload_s": offload_s}
    return total, global_tokens / total, parts


def _inference_time(model, w, par, cluster, stages):
    devs = cluster.devices
    c = w.compute_bytes
    speed = min(peak_flops(d.gpu, w.precision) for d in devs) * MFU_TRAIN
    bandwidth = min(d.gpu.mem_bandwidth for d in devs) * DECODE_BW_EFFICIENCY
    weight_bytes = model.total_params() * (c if w.quant == "none" else 0.6)
    prompt_tokens = w.batch * w.seq  # per replica; pipeline stages take one batch in turn
    prefill = 2 * model.active_params_per_token() * prompt_tokens / (speed * par.tp)
    kv_bytes = 2 * model.num_layers * model.kv_size * w.kv_bytes * w.batch * w.context
    # one decode step reads every weight and the cache once; stages run one after another
    per_step = (weight_bytes + kv_bytes) / (par.tp * par.pp) / bandwidth * par.pp
    tp_bw = _group_bandwidth(cluster, par.tp, False)
    tp_comm = 0.0
    if par.tp > 1:
        tp_comm = model.num_layers * 2 * 2 * (par.tp - 1) / par.tp * w.batch * model.hidden_size * c / tp_bw
    gen = w.max_new_tokens
    decode = gen * (per_step + tp_comm + 10e-6 * model.num_layers / par.pp)
    total = prefill + decode
    tokens = w.batch * par.dp * (w.seq + gen)  # prompt tokens processed plus tokens generated
    parts = {"prefill_s": prefill, "decode_s": decode, "tp_comm_s": tp_comm * gen}
    return total, tokens / total, parts
