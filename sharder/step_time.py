"""Step-time model: how long one step of a plan takes, from FLOPs, bytes moved and link bandwidths.

Plain arithmetic over plain data, like the cost model. `StepModel` is built once per (model, workload,
parallel degrees, pool) and answers, for any layer split, the step time; the solver uses its per-stage
linear pieces (`layer_s`, `edge_s`) to choose the split by dynamic programming.

Assumptions (a plan's `step_time_parts_s` gives the step's parts: compute, recompute, overhead, tp/ep/dp/pp
communication, offload, bubble, and the once-per-step extra):

* Compute: dense matmul work runs at MATMUL_EFFICIENCY of the GPU's dense peak (bf16, or fp32 for
  32-true), scaled by T / (T + TOKENS_HALF) for a micro-batch of T tokens (small matmuls run worse),
  plus LAUNCH_S of kernel launches per layer and pass. Training is forward + backward; the backward
  costs 2 forwards when weights train (dX and dW), 1 for LoRA/QLoRA (frozen base: dX only).
  Activation checkpointing recomputes the forward: full +1 forward (+1/3 of a training step),
  selective +1/2 forward. Attention adds 2·S·q_size FLOPs per token per layer forward (causal).
* Memory-bound work (decode, optimizer step, loss) runs at DECODE_BW_EFFICIENCY of HBM bandwidth.
* Collectives: hierarchical ring over NVLink/PCIe inside a node and the node's NICs across nodes
  (each GPU its share of the node bandwidth), at BW_EFFICIENCY of nominal, plus a latency per call.
* Tensor parallel: 2 all-reduce-sized collectives per layer per forward pass (SP's all-gather +
  reduce-scatter move the same bytes); not overlapped with compute.
* FSDP/ZeRO-2/3 (and CPU offload's host<->device copies, which FSDP2 issues in the same stream before
  each all-gather): every micro-batch all-gathers each layer (twice for ZeRO-3: forward and backward)
  and reduce-scatters its gradients; overlapped with the layer's compute (the layer takes the longer of
  the two), except the first all-gather and last reduce-scatter of each micro-batch. HSDP adds an
  all-reduce of the gradient shards across replicas; expert parallelism two all-to-alls per MoE layer
  and pass.
* DDP (ZeRO-0/1): one gradient all-reduce per step (no_sync while accumulating), overlapped with the
  last micro-batch's backward; ZeRO-1 then all-gathers the updated parameters (exposed).
* Pipeline (1F1B or GPipe): Σ_s t_s + (M - 1)·max_s t_s for stage times t_s per micro-batch, i.e.
  (M + P - 1)·t for equal stages; activations and gradients cross each stage boundary per micro-batch.
  The step adds the largest once-per-step extra of any stage (exposed sync, optimizer step).
* Optimizer step: AdamW reads and writes 7 words per parameter it owns (memory-bound); with CPU offload
  it runs on the host at HOST_ADAM_PARAMS_PER_S per node, not overlapped.
* Inference: a batch goes through the stages one after another (no overlap between stages); prefill is
  compute-bound, each decode step reads the stage's weights and KV cache (average length seq + new/2).
  tokens/s counts generated tokens, or prompt tokens when nothing is generated (as `run` measures it).
* Not modelled: overlap of TP communication with compute, sliding-window attention savings, MoE load
  imbalance, network congestion; numbers are uncalibrated until measured on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sharder.hardware import ClusterSpec, GpuType
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

MATMUL_EFFICIENCY = 0.6
"""Fraction of dense peak a decoder layer's matmuls and attention reach on large micro-batches."""
TOKENS_HALF = 256
"""Tokens per micro-batch at which matmul efficiency is half of MATMUL_EFFICIENCY."""
LAUNCH_S = 30e-6
"""Kernel launches per decoder layer per pass (about 15 kernels of 2 µs)."""
BW_EFFICIENCY = 0.8
"""Fraction of nominal link bandwidth collectives reach."""
DECODE_BW_EFFICIENCY = 0.7
"""Fraction of HBM bandwidth memory-bound kernels reach."""
INTRA_LATENCY_S = 8e-6
"""Latency of one collective inside a node."""
NET_LATENCY_S = 15e-6
"""Latency per tree level of a collective across nodes."""
PCIE_BYTES_PER_S = 25e9
"""Host<->device copies, PCIe Gen4 x16, one direction, per GPU."""
HOST_ADAM_PARAMS_PER_S = 1e9
"""Parameters per second a host's CPUs update with AdamW (shared by the node's GPUs)."""
ADAM_WORDS = 7
"""AdamW touches param (r/w), grad (r), exp_avg (r/w), exp_avg_sq (r/w): 7 words per parameter."""
TIME_QUANTUM = 1e-12
"""Times are compared in whole picoseconds so equal plans tie exactly."""


def peak_flops(gpu: GpuType, precision: str) -> float:
    return gpu.fp32_flops if precision == "32-true" else gpu.bf16_flops


# ------------------------------------------------------------------------------------------- topology
@dataclass(frozen=True, slots=True)
class Group:
    """Shape of a communication group: members, nodes spanned, most members on one node, bandwidths."""

    size: int = 1
    nodes: int = 1
    per_node: int = 1
    intra_bw: float = 0.0
    """Slowest member's bandwidth to its node peers, bytes/s."""
    net_bw: float = 0.0
    """Smallest per-GPU share of a member node's network bandwidth, bytes/s."""

    def all_gather(self, total_bytes: float) -> float:
        """Seconds for an all-gather (or reduce-scatter) whose full result is `total_bytes`: an
        inter-node ring per rail, then a ring inside each node."""
        if self.size <= 1 or total_bytes <= 0:
            return 0.0
        t = 0.0
        if self.per_node > 1:
            t += (self.per_node - 1) / self.per_node * total_bytes / (self.intra_bw * BW_EFFICIENCY)
            t += INTRA_LATENCY_S
        if self.nodes > 1:
            t += (self.nodes - 1) / (self.nodes * self.per_node) * total_bytes / (self.net_bw * BW_EFFICIENCY)
            t += NET_LATENCY_S * math.ceil(math.log2(self.nodes))
        return t

    def all_reduce(self, total_bytes: float) -> float:
        return 2 * self.all_gather(total_bytes)

    def all_to_all(self, bytes_per_rank: float) -> float:
        """Each rank sends (size-1)/size of its bytes to the others."""
        if self.size <= 1 or bytes_per_rank <= 0:
            return 0.0
        bw = self.net_bw if self.nodes > 1 else self.intra_bw
        latency = NET_LATENCY_S if self.nodes > 1 else INTRA_LATENCY_S
        return (self.size - 1) / self.size * bytes_per_rank / (bw * BW_EFFICIENCY) + latency


@dataclass(frozen=True, slots=True)
class StageDevices:
    """What bounds one pipeline stage: its slowest GPU's speeds and its groups' shapes."""

    gpu_types: tuple[GpuType, ...]
    flops_bf16: float
    flops_fp32: float
    hbm_bw: float
    tp: Group
    dp: Group
    """The data-parallel group of one TP index (all dp ranks of the stage)."""
    shard: Group
    """FSDP shard group (HSDP: one replica's ranks)."""
    replicate: Group
    """HSDP replica group (same shard index in each replica)."""
    ep: Group
    next_link_bw: float
    """Bandwidth to the next stage's ranks (0 for the last stage)."""
    host_adam_rate: float
    """Parameters per second this stage's slowest host gives one GPU."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The pool cut into stages and groups for given degrees (rank order pp, dp, tp; tp fastest)."""

    stages: tuple[StageDevices, ...]


def pool_layout(cluster: ClusterSpec, par: ParallelConfig, devices=None) -> Layout:
    """Stages and groups of a parallel config on a pool. `devices` may pass cluster.devices (cached)."""
    devs = devices if devices is not None else cluster.devices
    nodes = cluster.nodes
    net_share = [n.inter_node_bandwidth / max(1, len(n.gpus)) for n in nodes]
    host_rate = [HOST_ADAM_PARAMS_PER_S / max(1, len(n.gpus)) for n in nodes]
    tp, dp, pp = par.tp, par.dp, par.pp
    shard = max(1, dp // par.dp_replicate)
    per_stage = tp * dp

    def group(ranks) -> Group:
        count: dict[int, int] = {}
        intra = float("inf")
        net = float("inf")
        for r in ranks:
            d = devs[r]
            count[d.node] = count.get(d.node, 0) + 1
            intra = min(intra, d.gpu.intra_node_bandwidth)
            net = min(net, net_share[d.node])
        return Group(size=len(ranks), nodes=len(count), per_node=max(count.values()), intra_bw=intra, net_bw=net)

    def worst(groups: list[Group]) -> Group:
        if len(groups) == 1:
            return groups[0]
        return Group(size=groups[0].size, nodes=max(g.nodes for g in groups),
                     per_node=max(g.per_node for g in groups), intra_bw=min(g.intra_bw for g in groups),
                     net_bw=min(g.net_bw for g in groups))

    stages: list[StageDevices] = []
    interned: dict[StageDevices, StageDevices] = {}  # equal stages share one object (StepModel caches by it)
    for s in range(pp):
        base = s * per_stage
        ranks = range(base, base + per_stage)
        gpus = {devs[r].gpu.name: devs[r].gpu for r in ranks}
        types = tuple(gpus.values())
        # every group of a small stage; a large stage (hundreds of ranks, one GPU type in practice)
        # is sampled at its first and last groups
        exact = per_stage <= 64
        samples_tp = range(dp) if exact else sorted({0, dp - 1})
        samples_dp = range(tp) if exact else sorted({0, tp - 1})
        tp_g = worst([group(range(base + d * tp, base + (d + 1) * tp)) for d in samples_tp])
        dp_g = worst([group([base + d * tp + t for d in range(dp)]) for t in samples_dp])
        replicas = range(dp // shard) if exact else sorted({0, dp // shard - 1})
        shard_g = worst([group([base + (r * shard + j) * tp + t for j in range(shard)])
                         for t in samples_dp for r in replicas])
        rep_g = worst([group([base + (r * shard) * tp + t for r in range(dp // shard)]) for t in samples_dp])
        ep_g = Group()
        if par.ep > 1:
            ep_g = group(range(base, base + par.ep))
        next_bw = 0.0
        if s < pp - 1:
            a, b = devs[base], devs[base + per_stage]
            next_bw = (min(a.gpu.intra_node_bandwidth, b.gpu.intra_node_bandwidth) if a.node == b.node
                       else min(net_share[a.node], net_share[b.node]))
        sd = StageDevices(
            gpu_types=types, flops_bf16=min(g.bf16_flops for g in types),
            flops_fp32=min(g.fp32_flops for g in types), hbm_bw=min(g.mem_bandwidth for g in types),
            tp=tp_g, dp=dp_g, shard=shard_g, replicate=rep_g, ep=ep_g, next_link_bw=next_bw,
            host_adam_rate=min(host_rate[devs[r].node] for r in (base, base + per_stage - 1)))
        stages.append(interned.setdefault(sd, sd))
    return Layout(stages=tuple(stages))


# ------------------------------------------------------------------------------------------ the model
@dataclass(frozen=True, slots=True)
class _Stage:
    """One stage's pieces: time per micro-batch = n · layer + edge; once per step: extra(n)."""

    layer: float
    edge: float
    parts_layer: dict
    parts_edge: dict
    sync_per_layer: float
    """DDP gradient all-reduce per layer (overlapped with the last backward)."""
    sync_edge: float
    bwd_fraction: float
    """Share of a micro-batch's stage time that is backward (what the all-reduce hides behind)."""
    exposed_per_layer: float
    """Once per step, not overlapped: ZeRO-1 parameter all-gather, optimizer, offload."""
    exposed_edge: float


class StepModel:
    """Step time of one (model, workload, parallel degrees, pool) for any layer split."""

    def __init__(self, model: ModelSpec, w: Workload, par: ParallelConfig, cluster: ClusterSpec,
                 layout: Layout | None = None):
        self.model, self.w, self.par = model, w, par
        self.layout = layout or pool_layout(cluster, par)
        self.training = w.training
        self.micro_batches = w.micro_batches if w.training else 1
        if w.training:
            self.tokens = w.batch * par.dp * w.seq
            build = self._training_stage
        else:
            gen = w.max_new_tokens
            self.tokens = w.batch * par.dp * (gen if gen else w.seq)
            build = self._inference_stage
        seen: dict[tuple, _Stage] = {}
        stages = []
        devs = self.layout.stages
        for s in range(par.pp):  # stages alike in devices and position are computed once
            key = (id(devs[s]), s == 0, s == par.pp - 1, id(devs[s - 1]) if s else 0)
            st = seen.get(key)
            if st is None:
                st = seen[key] = build(s)
            stages.append(st)
        self.stages = tuple(stages)

    # -------------------------------------------------------------------------------- public pieces
    def layer_s(self, s: int) -> float:
        """Seconds one decoder layer adds to stage s per micro-batch (per request in inference)."""
        return self.stages[s].layer

    def edge_s(self, s: int) -> float:
        """Seconds stage s spends per micro-batch outside its decoder layers (embedding, head, p2p)."""
        return self.stages[s].edge

    def stage_time(self, s: int, n: int) -> float:
        st = self.stages[s]
        return n * st.layer + st.edge

    def step_extra(self, s: int, n: int) -> float:
        """Seconds stage s needs once per step after its last micro-batch (exposed sync, optimizer)."""
        st = self.stages[s]
        if not self.training:
            return 0.0
        sync = n * st.sync_per_layer + st.sync_edge
        hidden = st.bwd_fraction * self.stage_time(s, n)
        return max(0.0, sync - hidden) + n * st.exposed_per_layer + st.exposed_edge

    def layer_quanta(self, s: int) -> int:
        """layer_s in whole TIME_QUANTUMs: stage times built from these tie exactly when equal."""
        return quantize(self.stages[s].layer)

    def edge_quanta(self, s: int) -> int:
        return quantize(self.stages[s].edge)

    def quanta(self, counts) -> int:
        """The step time in whole TIME_QUANTUMs (the solver's exact objective)."""
        times = [n * self.layer_quanta(s) + self.edge_quanta(s) for s, n in enumerate(counts)]
        extras = [quantize(self.step_extra(s, n)) for s, n in enumerate(counts)]
        return sum(times) + (self.micro_batches - 1) * max(times) + max(extras)

    def combine(self, times: list[float], extras: list[float]) -> float:
        """Step seconds from per-stage micro-batch times and per-step extras."""
        return sum(times) + (self.micro_batches - 1) * max(times) + max(extras)

    def total(self, counts: list[int] | tuple[int, ...]) -> tuple[float, float, dict[str, float]]:
        """(seconds per step, tokens per second, parts) for layer counts per stage."""
        times = [self.stage_time(s, n) for s, n in enumerate(counts)]
        extras = [self.step_extra(s, n) for s, n in enumerate(counts)]
        seconds = self.combine(times, extras)
        m = self.micro_batches
        if self.training:  # the bottleneck stage's parts over the step, then the pipeline's
            b = max(range(len(times)), key=lambda s: times[s])
            chosen, weight = [b], m
        else:  # inference: the stages run one after another
            chosen, weight = list(range(len(times))), 1
        parts: dict[str, float] = {}
        for s in chosen:
            st, n = self.stages[s], counts[s]
            for k, v in st.parts_layer.items():
                parts[k] = parts.get(k, 0.0) + weight * n * v
            for k, v in st.parts_edge.items():
                parts[k] = parts.get(k, 0.0) + weight * v
        if self.training:
            parts["bubble_s"] = seconds - m * times[chosen[0]] - max(extras)
            parts["step_extra_s"] = max(extras)
        return seconds, self.tokens / seconds, {k: v for k, v in parts.items() if v}

    def lower_bound(self, num_layers: int, caps: list[int] | None = None) -> int | None:
        """A step time (in TIME_QUANTUMs) that no split of `num_layers` layers beats; with `caps`, no
        split holding at most caps[s] layers on stage s (None when no such split exists)."""
        P = len(self.stages)
        if caps is not None and (min(caps) < 1 or sum(caps) < num_layers):
            return None
        if P == 1:
            return self.quanta([num_layers])
        bound = self._relaxed_bound(num_layers)
        if caps is not None and any(c < num_layers - P + 1 for c in caps):
            bound = max(bound, self._capped_bound(num_layers, caps))
        return bound

    def _capped_bound(self, L: int, caps: list[int]) -> int:
        """Σ stage times and the bottleneck bounded apart under the caps: the least sum fills the
        cheapest stages first up to their caps; the least bottleneck T lets Σ min(cap, (T - E)/A)
        reach L (layers fractional)."""
        P = len(self.stages)
        A = [max(1, self.layer_quanta(s)) for s in range(P)]
        E = [self.edge_quanta(s) for s in range(P)]
        left, least_sum = L - P, float(sum(A) + sum(E))
        for s in sorted(range(P), key=lambda s: A[s]):
            take = min(left, caps[s] - 1)
            least_sum += take * A[s]
            left -= take
        lo = float(max(a + e for a, e in zip(A, E)))
        hi = float(max(E[s] + A[s] * caps[s] for s in range(P)))
        for _ in range(60):
            mid = (lo + hi) / 2
            if sum(min(caps[s], (mid - E[s]) / A[s]) for s in range(P)) >= L:
                hi = mid
            else:
                lo = mid
        least_extra = max(quantize(st.exposed_per_layer + st.exposed_edge) - 1 if self.training else 0
                          for st in self.stages)
        best = least_sum + (self.micro_batches - 1) * lo
        return int(best * (1 - 1e-9)) - P - 1 + max(0, least_extra)

    def _relaxed_bound(self, num_layers: int) -> int:
        P = len(self.stages)
        A = [max(1, self.layer_quanta(s)) for s in range(P)]
        E = [self.edge_quanta(s) for s in range(P)]
        M, L = self.micro_batches, num_layers
        least_extra = max(quantize(st.exposed_per_layer + st.exposed_edge) - 1 if self.training else 0
                          for st in self.stages)
        # Relaxation: layers fractional, every stage time within a bottleneck T. For a given T the
        # least Σ stage times fills the cheapest stages first up to their room (T - E)/A; the step is
        # then at least (M - 1)·T + that sum, a convex piecewise-linear function of T whose corners are
        # where the k cheapest stages are exactly full (T_k below), or where the domain begins.
        order = sorted(range(P), key=lambda s: A[s])
        base = float(sum(A) + sum(E))
        floor_T = max(max(a + e for a, e in zip(A, E)),
                      (L + sum(e / a for e, a in zip(E, A))) / sum(1 / a for a in A))

        def relaxed(T: float) -> float:
            left, total = L - P, base
            for s in order:
                take = min(left, max(0.0, (T - E[s]) / A[s] - 1))
                total += take * A[s]
                left -= take
            return (M - 1) * T + total

        best = relaxed(floor_T)
        inv = ends = pre = 0.0
        for k, s in enumerate(order, 1):
            inv += 1 / A[s]
            ends += E[s] / A[s]
            pre += E[s] + A[s]
            T = (L - P + k + ends) / inv  # the k cheapest stages hold every extra layer
            if T >= floor_T:
                best = min(best, (M - 1) * T + base + k * T - pre)
        return int(best * (1 - 1e-9)) - P - 1 + max(0, least_extra)

    # ------------------------------------------------------------------------------------ training
    def _training_stage(self, s: int) -> _Stage:
        model, w, par = self.model, self.w, self.par
        dev = self.layout.stages[s]
        P = par.pp
        first, last = s == 0, s == P - 1
        c = w.compute_bytes
        pbytes = w.param_bytes
        tokens = w.micro_batch_size * w.seq
        flops = dev.flops_fp32 if w.precision == "32-true" else dev.flops_bf16
        speed = flops * MATMUL_EFFICIENCY * tokens / (tokens + TOKENS_HALF)
        recompute = {"none": 0.0, "selective": 0.5, "full": 1.0}[w.ac]
        grad_passes = 2.0 if w.full_training else 1.0
        passes = 1.0 + grad_passes + recompute
        tp, ep = par.tp, par.ep if model.is_moe else 1

        fwd = 2 * _active_layer_params(model) * tokens + 2 * tokens * w.seq * model.q_size
        compute = fwd * (1 + grad_passes) / tp / speed
        recompute_s = fwd * recompute / tp / speed
        launch = LAUNCH_S * passes
        # [TP] 2 collectives per layer per forward pass (forward, backward, recomputed forward)
        tp_calls = 2 * (2 + (1 if w.ac == "full" else 0))
        tp_comm = tp_calls * dev.tp.all_reduce(tokens * model.hidden_size * c) if tp > 1 else 0.0
        ep_comm = 0.0
        if ep > 1:
            routed = tokens * model.experts_per_token * model.hidden_size * c
            ep_comm = 2 * (2 + (1 if w.ac == "full" else 0)) * dev.ep.all_to_all(routed)

        layer_params = _local_layer_params(model, tp, ep)
        trainable = layer_params if w.full_training else _lora_layer_params(model, w, tp)
        fsdp = par.zero >= 2 or (par.framework == "deepspeed" and par.zero == 3)
        shard = par.dp_shard if par.zero >= 1 else 1
        reduce_bytes = 4 if w.precision != "bf16-true" else 2
        unshard_bytes = 4 if w.precision == "32-true" else 2
        overlapped, tail = 0.0, 0.0
        offload_layer = 0.0
        if fsdp and shard > 1:
            gathers = 2 if par.zero == 3 else 1
            ag = dev.shard.all_gather(layer_params * unshard_bytes)
            rs = dev.shard.all_gather(trainable * reduce_bytes)
            hsdp = dev.replicate.all_reduce(trainable / shard * reduce_bytes) if par.dp_replicate > 1 else 0.0
            overlapped = gathers * ag + rs + hsdp
            tail = ag + rs
        if par.offload != "none" and par.framework == "torch":
            # FSDP2 CPUOffloadPolicy: sharded params copied in before each all-gather, grads out after
            gathers = 2 if par.zero == 3 else 1
            offload_layer = (gathers * layer_params / shard * pbytes + trainable / shard * 4) / PCIE_BYTES_PER_S
            overlapped += offload_layer
        busy = compute + recompute_s + launch
        layer = max(busy, overlapped) + tp_comm + ep_comm
        exposed_fsdp_comm = max(0.0, overlapped - busy)

        # edges: embedding lookup (first), final norm + head + loss (last), point-to-point sends
        edge_compute = 0.0
        head_tp = tp if par.tp_layout in ("megatron", "hf") else 1
        if first:
            edge_compute += 3 * tokens * model.hidden_size * c / (dev.hbm_bw * DECODE_BW_EFFICIENCY)
        if last:
            head_fwd = 2 * tokens * model.hidden_size * model.vocab_size
            edge_compute += head_fwd * (1 + grad_passes) / head_tp / speed
            edge_compute += 4 * tokens * model.vocab_size / head_tp * 4 / (dev.hbm_bw * DECODE_BW_EFFICIENCY)
        p2p = 0.0
        act_bytes = tokens * model.hidden_size * c / (tp if par.sp else 1)
        if s < P - 1:
            p2p += act_bytes / (dev.next_link_bw * BW_EFFICIENCY)
        if s > 0:
            p2p += act_bytes / (self.layout.stages[s - 1].next_link_bw * BW_EFFICIENCY)
        edge = edge_compute + p2p + tail

        # once per step
        edge_params = _edge_params(model, first, last, P, head_tp)
        edge_trainable = edge_params if w.full_training else 0
        sync_per_layer, sync_edge = 0.0, 0.0
        exposed_per_layer, exposed_edge = 0.0, 0.0
        grad_bytes = pbytes
        if par.dp > 1 and not fsdp:
            # [DDP / ZeRO-1 / DeepSpeed ZeRO-1,2] one gradient all-reduce per step
            sync_per_layer = dev.dp.all_reduce(trainable * grad_bytes)
            sync_edge = dev.dp.all_reduce(edge_trainable * grad_bytes)
            if par.zero >= 1:  # updated parameter shards gathered back
                exposed_per_layer += dev.dp.all_gather(layer_params * pbytes)
                exposed_edge += dev.dp.all_gather(edge_params * pbytes)
        owner = shard if par.zero >= 1 else 1
        words = ADAM_WORDS if w.optimizer == "adamw" else 3
        if par.offload == "none":
            per_param = words * pbytes / (dev.hbm_bw * DECODE_BW_EFFICIENCY)
            exposed_per_layer += trainable / owner * per_param
            exposed_edge += edge_trainable / owner * per_param
        else:
            host = 1 / dev.host_adam_rate
            if par.framework == "deepspeed":  # grads out, updated bf16 params back, once per step
                host += (grad_bytes + 2) / PCIE_BYTES_PER_S
            exposed_per_layer += trainable / owner * host
            exposed_edge += edge_trainable / owner * host

        parts_layer = {"compute_s": compute, "recompute_s": recompute_s, "overhead_s": launch,
                       "tp_comm_s": tp_comm, "ep_comm_s": ep_comm, "dp_comm_s": exposed_fsdp_comm,
                       "offload_s": offload_layer}
        parts_edge = {"compute_s": edge_compute, "pp_comm_s": p2p, "dp_comm_s": tail}
        return _Stage(layer=layer, edge=edge, parts_layer=parts_layer, parts_edge=parts_edge,
                      sync_per_layer=sync_per_layer, sync_edge=sync_edge,
                      bwd_fraction=grad_passes / passes, exposed_per_layer=exposed_per_layer,
                      exposed_edge=exposed_edge)

    # ----------------------------------------------------------------------------------- inference
    def _inference_stage(self, s: int) -> _Stage:
        model, w, par = self.model, self.w, self.par
        dev = self.layout.stages[s]
        P = par.pp
        last = s == P - 1
        c = w.compute_bytes
        tp, ep = par.tp, par.ep if model.is_moe else 1
        batch = w.batch
        gen = w.max_new_tokens
        flops = dev.flops_fp32 if w.precision == "32-true" else dev.flops_bf16
        hbm = dev.hbm_bw * DECODE_BW_EFFICIENCY
        wbytes = _weight_bytes_per_param(w)

        def speed(tokens: int) -> float:
            return flops * MATMUL_EFFICIENCY * tokens / (tokens + TOKENS_HALF)

        prompt = batch * w.seq
        layer_weights = _local_layer_params(model, tp, ep) * wbytes
        fwd = 2 * _active_layer_params(model) * prompt + 2 * prompt * w.seq * model.q_size
        prefill_compute = fwd / tp / speed(prompt)
        prefill_read = layer_weights / hbm
        tp_prefill = 2 * dev.tp.all_reduce(prompt * model.hidden_size * c) if tp > 1 else 0.0
        prefill = max(prefill_compute, prefill_read) + tp_prefill + LAUNCH_S

        decode = 0.0
        tp_decode = 0.0
        if gen:
            ctx = w.seq + gen / 2
            kv = 2 * model.kv_size / tp * w.kv_bytes * batch * ctx
            read = (_decode_layer_params(model, tp, ep, batch) * wbytes + kv) / hbm
            # roofline: a decode step's matmuls are matrix-vector products bounded by the reads above
            dec_compute = ((2 * _active_layer_params(model) * batch + 2 * batch * ctx * model.q_size) / tp
                           / (flops * MATMUL_EFFICIENCY))
            tp_decode = 2 * dev.tp.all_reduce(batch * model.hidden_size * c) if tp > 1 else 0.0
            decode = max(read, dec_compute) + tp_decode + LAUNCH_S
        layer = prefill + gen * decode

        head_tp = tp if par.tp_layout in ("megatron", "hf") else 1
        head = 0.0
        if last:  # generate() computes logits of the last token only: the head's weights are read
            head = model.vocab_size * model.hidden_size * c / head_tp / hbm * (1 + gen)
        p2p = 0.0
        for bw in ([dev.next_link_bw] if s < P - 1 else []):
            p2p += prompt * model.hidden_size * c / (bw * BW_EFFICIENCY) + INTRA_LATENCY_S
            p2p += gen * (batch * model.hidden_size * c / (bw * BW_EFFICIENCY) + INTRA_LATENCY_S)
        edge = head + p2p
        parts_layer = {"prefill_s": prefill, "decode_s": gen * decode, "tp_comm_s": tp_prefill + gen * tp_decode}
        parts_edge = {"head_s": head, "pp_comm_s": p2p}
        return _Stage(layer=layer, edge=edge, parts_layer=parts_layer, parts_edge=parts_edge,
                      sync_per_layer=0.0, sync_edge=0.0, bwd_fraction=0.0, exposed_per_layer=0.0,
                      exposed_edge=0.0)


# ----------------------------------------------------------------------------------- parameter counts
def _active_layer_params(model: ModelSpec) -> int:
    """Parameters one token's forward multiplies through in one decoder layer (MoE: its experts)."""
    if not model.is_moe:
        return model.layer_params()
    return (model.attention_params() + model.router_params()
            + model.experts_per_token * model.dense_mlp_params() + model.norms_per_layer * model.norm_params())


def _local_layer_params(model: ModelSpec, tp: int, ep: int) -> float:
    """One decoder layer's parameters on one rank (TP splits attention and MLP, EP the experts)."""
    if model.is_moe:
        experts = model.num_experts * model.dense_mlp_params() / ep
        return ((model.attention_params() + experts) / tp + model.router_params()
                + model.norms_per_layer * model.norm_params())
    return (model.attention_params() + model.dense_mlp_params()) / tp + model.norms_per_layer * model.norm_params()


def _decode_layer_params(model: ModelSpec, tp: int, ep: int, batch: int) -> float:
    """Parameters one decode step reads per layer: MoE reads only the experts some token routes to."""
    if not model.is_moe:
        return _local_layer_params(model, tp, ep)
    e, k = model.num_experts, model.experts_per_token
    touched = e * (1 - (1 - k / e) ** batch)
    experts = touched * model.dense_mlp_params() / ep
    return ((model.attention_params() + experts) / tp + model.router_params()
            + model.norms_per_layer * model.norm_params())


def _lora_layer_params(model: ModelSpec, w: Workload, tp: int) -> float:
    h, q, kv, f = model.hidden_size, model.q_size, model.kv_size, model.intermediate_size
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
    return sum(w.lora_rank * (a + b) for t, (a, b) in dims.items() if t in w.lora_targets) / tp


def _edge_params(model: ModelSpec, first: bool, last: bool, pp: int, head_tp: int) -> float:
    n = 0.0
    if first:
        n += model.embedding_params() / head_tp
    if last:
        head = model.head_params() or (model.embedding_params() if pp > 1 else 0)
        n += head / head_tp + model.norm_params()
    return n


def _weight_bytes_per_param(w: Workload) -> float:
    if w.quant == "none":
        return w.compute_bytes
    from sharder.strategies.quantization import quantized_bytes

    return quantized_bytes(1 << 20, w.quant) / (1 << 20)


# ------------------------------------------------------------------------------------------ front door
def step_time(model: ModelSpec, w: Workload, par: ParallelConfig, cluster: ClusterSpec,
              stage_layers: list[tuple[int, int]] | None = None) -> tuple[float, float, dict[str, float]]:
    """(seconds per step, tokens per second, parts) of a plan. Training: one optimizer step of the
    global batch (w.batch × dp sequences); inference: one batch's prefill and generation."""
    stages = stage_layers or par.stage_layers(model.num_layers)
    return StepModel(model, w, par, cluster).total([e - s for s, e in stages])


def quantize(seconds: float) -> int:
    """Seconds as whole TIME_QUANTUMs, for exact comparisons."""
    return int(round(seconds / TIME_QUANTUM))


__all__ = ["StepModel", "Layout", "Group", "pool_layout", "step_time", "peak_flops", "quantize"]
