"""The cost model: (model, workload, parallel config, pool) -> per-rank memory at the worst moment of a step.

Pure arithmetic over plain data. Strategies are applied in one written-down order:
  1. tensor parallel (local shapes)      2. expert parallel (local experts)
  3. pipeline (which blocks, in-flight)  4. quantization / LoRA (stored bytes, trainable set)
  5. activation checkpointing            6. FSDP / ZeRO / DDP (sharding, buffers)
  7. offload (what leaves the device)    8. KV cache (inference)
then the step's moments (loss backward, start and end of the layer backward, optimizer step; or
prefill and decode) are evaluated and the largest is the peak, its categories the breakdown.
"""

from __future__ import annotations

from sharder import activations as act
from sharder.breakdown import RankEstimate, empty_breakdown
from sharder.device_overhead import allocated_and_reserved
from sharder.errors import SharderInputError
from sharder.hardware import ClusterSpec
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.rank_tensors import edge_local_tensors, layer_local_tensors, stored_bytes
from sharder.workload import Workload
from sharder.strategies import (activation_checkpointing, data_parallel, deepspeed_zero, expert, fsdp,
                                kv_cache, offload, pipeline, tensor_parallel, zero_redundancy)
from sharder.strategies.registry import verified_map


def validate(model: ModelSpec, workload: Workload, par: ParallelConfig, cluster: ClusterSpec | None) -> None:
    """Every degree checked once, with every factor named."""
    if cluster is not None and par.world_size != cluster.num_devices:
        raise SharderInputError(
            f"degrees multiply to {par.world_size} (pp {par.pp} × dp {par.dp} × tp {par.tp}) but the pool "
            f"has {cluster.num_devices} devices; make pp × dp × tp = {cluster.num_devices}")
    tensor_parallel.validate(model, par.tp)
    if cluster is not None and par.tp > cluster.gpus_per_node:
        raise SharderInputError(
            f"--tp {par.tp} spans nodes: the largest node has {cluster.gpus_per_node} GPUs; keep TP inside a node")
    expert.validate(model.num_experts, par.ep, par.dp * par.tp)
    if par.pp > 1:
        if workload.training:
            pipeline.validate(par.schedule, workload.micro_batches, par.pp, model.num_layers)
        par.stage_layers(model.num_layers)
    if par.framework == "deepspeed" and not workload.training:
        raise SharderInputError("--framework deepspeed models training; use --framework torch for inference")
    if workload.adapters and par.zero == 1:
        raise SharderInputError("LoRA with --zero 1 is not modelled; use --zero 0 or --zero 3")
    if not workload.training and par.zero not in (0, 3):
        raise SharderInputError("inference uses --zero 0 (replicated) or --zero 3; --zero 1/2 shard training state")


def estimate(model: ModelSpec, workload: Workload, par: ParallelConfig, cluster: ClusterSpec,
             headroom: float = 0.05) -> list[RankEstimate]:
    """Predicted memory of every rank. Ranks with identical coordinates-classes are computed once."""
    validate(model, workload, par, cluster)
    devices = cluster.devices
    stages = par.stage_layers(model.num_layers)
    cache: dict[tuple, tuple] = {}
    out = []
    for rank in range(par.world_size):
        pp_i, dp_i, tp_i = par.coords(rank)
        dev = devices[rank]
        key = (pp_i, _dp_class(dp_i, par), tp_i, dev.gpu.name)
        if key not in cache:
            cache[key] = _rank_memory(model, workload, par, pp_i, dp_i, tp_i, stages[pp_i], cluster, dev.gpu)
        breakdown, phase, host, notes = cache[key]
        tensor = sum(breakdown.values())
        allocated, reserved = allocated_and_reserved(tensor, dev.gpu, par.world_size, breakdown)
        fits = reserved <= dev.capacity_bytes * (1 - headroom)
        out.append(RankEstimate(
            rank=rank, gpu=dev.gpu.name, node=dev.node, layers=stages[pp_i], capacity_bytes=dev.capacity_bytes,
            breakdown=dict(breakdown), peak_tensor_bytes=tensor, peak_allocated_bytes=allocated,
            peak_reserved_bytes=reserved, fits=fits, verified=verified_map(workload, par, model, dev.gpu),
            peak_phase=phase, host_bytes=host, coords=(pp_i, dp_i, tp_i), notes=list(notes)))
    return out


def _dp_class(dp_i: int, par: ParallelConfig) -> int:
    """Ranks whose shards are full-size share one answer; only the tail of dim-0 chunking differs."""
    shard = par.dp_shard
    if shard <= 1:
        return 0
    within = dp_i % shard
    return within if within >= shard - 2 else -1


def rank_memory(model: ModelSpec, workload: Workload, par: ParallelConfig, pp_i: int, dp_i: int, tp_i: int,
                layer_range: tuple[int, int]) -> tuple[dict[str, int], str, int, tuple[str, ...]]:
    """(breakdown at the peak, peak phase, host bytes, notes) of one rank holding `layer_range`."""
    return _rank_memory(model, workload, par, pp_i, dp_i, tp_i, layer_range, None, None)


def _rank_memory(model, workload, par, pp_i, dp_i, tp_i, layer_range, cluster, gpu):
    if not workload.training:
        return _inference_memory(model, workload, par, pp_i, tp_i, layer_range)
    return _training_memory(model, workload, par, pp_i, dp_i, tp_i, layer_range)


# ----------------------------------------------------------------------------------------------- training
def _training_memory(model: ModelSpec, w: Workload, par: ParallelConfig, pp_i: int, dp_i: int, tp_i: int,
                     layer_range: tuple[int, int]):
    first, last = pp_i == 0, pp_i == par.pp - 1
    n_layers = layer_range[1] - layer_range[0]
    c = w.compute_bytes
    pbytes = w.param_bytes
    fsdp_on = par.framework == "torch" and par.zero >= 2
    shard = par.dp_shard if par.zero >= 1 else 1
    shard_index = dp_i % shard if shard > 1 else 0
    mixed_fsdp = fsdp_on and w.precision == "bf16-mixed"
    unshard_bytes = 2 if (mixed_fsdp or w.precision == "bf16-true") else 4

    layer = layer_local_tensors(model, w, par, tp_i)
    edges = edge_local_tensors(model, w, par, tp_i, first, last)
    notes: list[str] = []

    # ---- 6. sharding of parameters, gradients and optimizer states
    def param_store(t) -> int:
        n = fsdp.padded_shard_numel(t.shape, shard) if (fsdp_on or par.framework == "deepspeed" and par.zero == 3) else t.numel
        return stored_bytes(t, n, w)

    def owned_numel(t) -> int:
        if fsdp_on:
            return fsdp.local_shard_numel(t.shape, shard, shard_index)
        return t.numel

    state_mult = 2 if w.optimizer == "adamw" else 1
    step_scalar = 4 if w.optimizer == "adamw" else 0

    layer_params = sum(param_store(t) for t in layer)
    edge_params = sum(param_store(t) for t in edges)
    params = n_layers * layer_params + edge_params

    trainable_layer = [t for t in layer if t.trainable]
    trainable_edges = [t for t in edges if t.trainable]
    edge_first = [t for t in trainable_edges if t.block == "embedding"]
    edge_last = [t for t in trainable_edges if t.block != "embedding"]
    all_trainable = edge_first + trainable_layer * n_layers + edge_last  # model.parameters() order

    if par.framework == "torch" and par.zero == 1 and shard > 1:
        numels = [t.numel for t in all_trainable]
        mine = zero_redundancy.partition_params(numels, shard)[shard_index]
        optimizer = sum(state_mult * numels[i] * pbytes + step_scalar for i in mine)
    else:
        # every layer is alike: one layer's sum times the layer count
        per_tensor = lambda ts: sum(state_mult * owned_numel(t) * pbytes + step_scalar for t in ts)  # noqa: E731
        optimizer = per_tensor(edge_first) + n_layers * per_tensor(trainable_layer) + per_tensor(edge_last)

    grad_bytes = 4 if mixed_fsdp else pbytes
    if fsdp_on:
        grad_layer = sum(fsdp.padded_shard_numel(t.shape, shard) for t in trainable_layer) * grad_bytes
        grad_edges = sum(fsdp.padded_shard_numel(t.shape, shard) for t in trainable_edges) * grad_bytes
    else:
        grad_layer = sum(t.numel for t in trainable_layer) * grad_bytes
        grad_edges = sum(_grad_numel(t, par) for t in trainable_edges) * grad_bytes
    grads = n_layers * grad_layer + grad_edges
    buffers = model.rotary_buffer_bytes()  # inv_freq and original_inv_freq

    comm_persistent = 0
    ds_bucket = 0  # DeepSpeed ZeRO-1/2's reduce bucket: from the first gradient hook to the end of the backward
    if par.framework == "torch" and par.zero <= 1 and par.dp > 1:
        comm_persistent += data_parallel.ddp_bucket_bytes(grads, par.dp)

    if par.framework == "deepspeed" and par.zero in (1, 2) and par.offload == "none":
        # stage_1_and_2.py as DeepSpeed 0.19.8 allocates it; its `bf16` casts the model, so the flat
        # parameters and every gradient buffer are in the model dtype (fp32 masters and states)
        numels = [t.numel for t in all_trainable]
        grad_bytes = 4 if w.precision == "32-true" else 2
        states = deepspeed_zero.zero12_state_bytes(numels, par.dp, dp_i, grad_bytes, w.optimizer)
        params, grads, optimizer = states["parameters"], states["gradients"], states["optimizer_states"]
        # frozen parameters (LoRA's base) stay outside the flat group, cast too (not measured)
        params += (n_layers * sum(t.numel for t in layer if not t.trainable)
                   + sum(t.numel for t in edges if not t.trainable)) * grad_bytes
        if par.zero == 1:  # every param.grad stays until reduce_gradients, after the backward
            grads = sum(numels) * grad_bytes
            grad_layer = sum(t.numel for t in trainable_layer) * grad_bytes
        else:  # each gradient is copied into the reduce bucket as it is made
            grad_layer = 0
        ds_bucket = deepspeed_zero.bucket_bytes(grad_bytes)
        notes.append("DeepSpeed's reduce bucket: reduce_bucket_size (5e8) elements in the model dtype, whatever "
                     "the model's size")
    elif par.framework == "deepspeed":
        states = deepspeed_zero.model_state_bytes(sum(t.numel for t in all_trainable) + 0, par.dp, par.zero,
                                                  par.offload, w.precision != "32-true")
        params, grads, optimizer = states["parameters"], states["gradients"], states["optimizer_states"]
        grad_layer = grads // max(1, n_layers + 1)
        comm_persistent += deepspeed_zero.buffer_bytes(sum(t.numel for t in all_trainable), par.zero,
                                                       sum(t.numel for t in layer), w.precision != "32-true")
        notes.append("DeepSpeed buffers are modelled from its defaults (unverified)")

    # ---- 7. offload
    host = 0
    moved = offload.moves_to_host(par.framework, par.offload)
    if par.framework == "torch" and par.offload == "all":
        host = params + optimizer + grads
        params, optimizer, grads, grad_layer = 0, 0, 0, 0
    elif par.framework == "deepspeed" and par.offload != "none":
        host = optimizer if moved["optimizer_states"] else 0

    # ---- FSDP unsharded parameters and communication buffers (compute dtype)
    layer_unsharded = sum(t.numel for t in layer) * unshard_bytes
    edge_unsharded = sum(t.numel for t in edges) * unshard_bytes
    layer_ag = fsdp.all_gather_buffer_bytes([t.shape for t in layer], shard, unshard_bytes) if fsdp_on else 0
    layer_grad_unsharded = sum(t.numel for t in trainable_layer) * unshard_bytes
    layer_rs = sum(fsdp.padded_shard_numel(t.shape, shard) for t in trainable_layer) * shard * grad_bytes

    # ---- 3 + 5. activations per micro-batch
    mbs = w.micro_batch_size
    tokens = mbs * w.seq
    vocab_local = _vocab_local(model, par)
    # the adapted Linears this family has (a fused qkv answers to q_proj, a fused gate_up to gate_proj)
    lora_targets = tuple(t.name.rsplit(".", 2)[0] for t in layer if t.name.endswith(".lora_A")) if w.adapters else ()
    if w.adapters and not lora_targets:
        raise SharderInputError(f"--lora-targets {','.join(w.lora_targets)}: {model.name} has none of these Linears; "
                                "try q_proj,v_proj (attention) or gate_proj,down_proj (MLP)")
    autocast = uses_autocast(w, par)
    full_layer = act.decoder_layer_saved_per_token(model, c, par.tp, par.sp, w.attention, w.seq,
                                                   w.lora_rank if w.adapters else 0, lora_targets, autocast) * tokens
    if autocast:  # every Linear keeps its weight's cast (cached by autocast) for its input gradient
        full_layer += sum(t.numel for t in layer if len(t.shape) >= 2) * c
    layer_input = act.layer_input_per_token(model, c, par.tp, par.sp) * tokens
    saved_layer = activation_checkpointing.saved_per_layer(int(full_layer), int(layer_input), w.ac)
    recompute = activation_checkpointing.recompute_extra(int(full_layer), int(layer_input), w.ac)
    head_saved = (int(act.head_saved_per_token(model, c, vocab_local, par.sp, par.tp, autocast and not w.adapters)
                      * tokens)
                  + act.LOSS_SCALARS) if last else 0
    if last and autocast:
        head_saved += sum(t.numel for t in edges if t.block == "head") * c
    loss_parallel = par.tp > 1 and par.tp_layout == "megatron"
    loss_temp = int(act.loss_backward_temporaries_per_token(vocab_local, loss_parallel) * tokens) if last else 0
    if last and loss_parallel:
        head_saved += act.LOSS_PARALLEL_SAVED_PER_TOKEN * tokens + 4
    # cos/sin take the embedding output's dtype: fp32 under autocast
    rotary = act.rotary_bytes(model, w.seq, act.FP32 if autocast else c) + act.attention_mask_bytes(model, mbs, w.seq)
    acts_mb = n_layers * saved_layer + head_saved + rotary + act.norm_constant_bytes(model, n_layers, last)
    if w.adapters and w.ac == "none" and not par.sp:
        edge_unsaved = int(act.frozen_edges_unsaved(model, c, first and n_layers > 0, last, lora_targets) * tokens)
        acts_mb -= edge_unsaved
        head_saved -= int(act.frozen_edges_unsaved(model, c, False, last) * tokens)
    if not first and n_layers and c == 4 and w.ac == "none":
        # a later pipeline stage's first RMSNorm saves its fp32 input, which is the receive buffer itself
        acts_mb -= int(act.layer_input_per_token(model, c, par.tp, par.sp) * tokens)

    if par.pp > 1:
        inflight = pipeline.in_flight_micro_batches(par.schedule, w.micro_batches, par.pp, pp_i)
        recv = pipeline.receive_buffer_bytes(pp_i, par.pp, w.micro_batches, tokens, model.hidden_size, c)
        kept_outputs = w.micro_batches * tokens * vocab_local * c if last else 0
        comm_persistent += recv
        grads_during = grads if w.micro_batches > inflight else 0
        acc_steps_grads = grads_during
        act_peak = inflight * acts_mb
    else:
        acc_steps_grads = grads if w.micro_batches > 1 else 0
        act_peak = acts_mb
        kept_outputs = 0

    # ---- FSDP2: what is unsharded when (the root is not resharded between forward and backward)
    sharded_fsdp = fsdp_on and shard > 1
    root_unsharded = edge_unsharded if sharded_fsdp else 0
    all_layers_unsharded = n_layers * layer_unsharded if (sharded_fsdp and par.zero == 2) else 0

    # the step's input ids (labels are the same tensor) count with the activations, as the trackers do
    base = {"parameters": params, "optimizer_states": optimizer, "other": buffers,
            "activations": _input_bytes(w, first, last)}
    head_grads = sum(_grad_numel(t, par) for t in trainable_edges if t.block in ("head", "norm"))
    embed_grads = sum(_grad_numel(t, par) for t in trainable_edges if t.block == "embedding")
    dw_down = max((t.numel for t in trainable_layer if "down" in t.name), default=0)
    if fsdp_on:  # unsharded gradients live in the compute dtype until reduce-scatter
        head_grads, embed_grads, dw_down = (x * unshard_bytes for x in (head_grads, embed_grads, dw_down))
    else:
        head_grads, embed_grads, dw_down = (x * grad_bytes for x in (head_grads, embed_grads, dw_down))
    mlp_transient = int(act.mlp_backward_transient_per_token(model, c, par.tp) * tokens)
    if ds_bucket and par.zero == 2:
        head_grads = 0  # ZeRO-2 copies each gradient into the bucket as it is made
    acts_no_head = act_peak - (head_saved if last else 0)
    loss_scalar = act.LOSS_SCALARS if last else 0
    hidden_grad = tokens * model.hidden_size * c

    moments: list = []

    base_total = sum(base.values())

    def moment(name, **cats):  # the breakdown is built for the winner only (the solver calls this a lot)
        moments.append((base_total + sum(int(v) for v in cats.values()), name, cats))

    # the loss forward: logits (and their fp32 copy) next to the saved log-softmax and the shifted labels
    if last:
        logits = tokens * vocab_local * (c + (4 if c != 4 else 0))
        labels = (mbs * (w.seq + 1) + tokens) * 8
        moment("loss forward", gradients=acc_steps_grads, activations=act_peak + kept_outputs + logits + labels,
               comm_buffers=comm_persistent + root_unsharded + all_layers_unsharded
               + (layer_ag if sharded_fsdp and par.zero == 2 else 0))
    # the loss backward: every activation saved, logits-sized fp32 gradients; FSDP has already
    # prefetched the last layer's all-gather for the backward
    moment("loss backward", gradients=acc_steps_grads, activations=act_peak + kept_outputs,
           temporaries=loss_temp, comm_buffers=comm_persistent + root_unsharded + all_layers_unsharded
           + (layer_ag if sharded_fsdp and par.zero == 3 else 0))
    if ds_bucket and last:
        # DeepSpeed's first gradient hook (the head's weight) makes the bucket while that gradient and
        # the head's input gradient are alive; the loss has freed its fp32 log-softmax
        head_w = sum(_grad_numel(t, par) for t in trainable_edges if t.block == "head") * grad_bytes
        moment("backward (first gradient hook)", gradients=acc_steps_grads + head_w,
               activations=act_peak + kept_outputs - tokens * vocab_local * act.FP32, comm_buffers=ds_bucket)
    if ds_bucket and last and n_layers:
        # inside the final norm's backward (as a layer's input norm, without a residual's gradient):
        # its fp32 input and its fp32 gradients, the head's gradients made (ZeRO-1)
        end_act, end_temp = act.layer_backward_end_per_token(model, c, par.tp, par.sp)[1]
        moment("backward (final norm)", gradients=max(acc_steps_grads, head_grads),
               activations=acts_no_head + loss_scalar + kept_outputs + int(end_act * tokens),
               temporaries=int((end_temp - c * model.hidden_size) * tokens), comm_buffers=ds_bucket)
    if n_layers and not sharded_fsdp:
        # the last layer's MLP backward: activations still saved, head gradients made
        moment("backward (last layer)",
               gradients=max(acc_steps_grads, head_grads if last else 0) + dw_down,
               activations=acts_no_head + loss_scalar + kept_outputs,
               temporaries=recompute + mlp_transient + (0 if last else hidden_grad),
               comm_buffers=comm_persistent + ds_bucket)
        # the first layer's MLP backward: every other gradient made
        done = (n_layers - 1) * grad_layer + (head_grads if last else 0)
        moment("backward (first layer)",
               gradients=max(acc_steps_grads, done) + dw_down,
               activations=(act_peak - acts_mb) + saved_layer + rotary + loss_scalar,
               temporaries=recompute + mlp_transient, comm_buffers=comm_persistent + ds_bucket)
        if par.pp > 1 and w.micro_batches > 1:
            # the last micro-batch's backward: the earlier micro-batches' gradients all made, only its
            # own activations left
            one_mb_acts = acts_mb - (head_saved if last else 0)
            moment("backward (last layer, last micro-batch)",
                   gradients=grads, activations=one_mb_acts + loss_scalar + kept_outputs,
                   temporaries=recompute + mlp_transient + (0 if last else hidden_grad),
                   comm_buffers=comm_persistent + ds_bucket)
            moment("backward (first layer, last micro-batch)",
                   gradients=grads, activations=saved_layer + rotary + loss_scalar + kept_outputs,
                   temporaries=recompute + mlp_transient, comm_buffers=comm_persistent + ds_bucket)
    elif n_layers and par.pp > 1:
        _pipeline_fsdp_moments(moment, locals())
    elif n_layers:
        # the last layer's MLP backward under FSDP2: everything saved, the head's gradients unsharded, the
        # layer's own parameters and the next one's prefetched all-gather
        moment("backward (last layer MLP)",
               gradients=acc_steps_grads,
               activations=acts_no_head + loss_scalar + kept_outputs,
               temporaries=(head_grads if last else 0) + dw_down + recompute + mlp_transient
               + (0 if last else hidden_grad),
               comm_buffers=comm_persistent + root_unsharded
               + (all_layers_unsharded if par.zero == 2 else layer_unsharded)
               + (layer_ag if n_layers > 1 and par.zero == 3 else 0))
        # an earlier layer's MLP backward (with checkpointing: right after its recompute)
        for k in sorted({0, min(1, n_layers - 1), max(0, n_layers - 2)} - {n_layers - 1}):
            moment(f"backward (layer {layer_range[0] + k} MLP)",
                   gradients=(n_layers - 1 - k) * grad_layer,
                   activations=(k + 1) * saved_layer + rotary + loss_scalar + kept_outputs
                   + act.norm_constant_bytes(model, k + 1, False),
                   temporaries=(head_grads if last else 0) + dw_down + recompute + mlp_transient
                   + (0 if last else hidden_grad),
                   comm_buffers=comm_persistent + root_unsharded
                   + ((k + 1) * layer_unsharded if par.zero == 2 else layer_unsharded)
                   + (layer_ag if k > 0 and par.zero == 3 else 0) + layer_rs)
        # FSDP2 post-backward of the last layer: its unsharded parameters, the next layer's
        # all-gather, the reduce-scatter input and output, the root's unsharded gradients
        moment("backward (last layer reduce-scatter)",
               gradients=grad_layer + (head_grads if last else 0),
               activations=acts_no_head - saved_layer + loss_scalar + kept_outputs,
               temporaries=hidden_grad,
               comm_buffers=comm_persistent + root_unsharded
               + (all_layers_unsharded - layer_unsharded if par.zero == 2 else layer_unsharded)
               + (layer_ag if n_layers > 1 and par.zero == 3 else 0) + layer_rs)
        # the end of a layer's backward (its input norm), before its post-backward: all of its gradients
        # unsharded next to the head's, its own and the next layer's (prefetched) parameters, and the
        # previous layer's reduce-scatter input, which FSDP2 frees only at this layer's reduce-scatter
        ends = act.layer_backward_end_per_token(model, c, par.tp, par.sp)
        norm_w = model.hidden_size * unshard_bytes  # the input norm's weight gradient, made in the norm
        for k in sorted({0, min(1, n_layers - 1), max(0, n_layers - 2), n_layers - 1}):
            for i, (end_act, end_temp) in enumerate(ends):
                if w.ac == "full":  # the recomputed layer's tensors are made in the backward
                    kept = layer_input
                    end_temp, end_act = end_temp + max(0, end_act * tokens - layer_input) / tokens, 0
                else:
                    kept = 0
                moment(f"backward (layer {layer_range[0] + k} end)",
                       gradients=(n_layers - 1 - k) * grad_layer,
                       activations=k * saved_layer + kept + int(end_act * tokens) + rotary + loss_scalar
                       + kept_outputs + act.norm_constant_bytes(model, k, False),
                       temporaries=(head_grads if last else 0) + layer_grad_unsharded - (norm_w if i == 0 else 0)
                       + int(end_temp * tokens) + (0 if last else hidden_grad),
                       # zero 2 keeps layers unsharded from the forward until their own backward ends
                       comm_buffers=comm_persistent + root_unsharded
                       + ((k + 1) * layer_unsharded if par.zero == 2 else layer_unsharded)
                       + (layer_ag if k > 0 and par.zero == 3 else 0)
                       + (layer_rs if k < n_layers - 1 else 0))
        # the root's post-backward at the very end: the root's unsharded gradients (cast to the reduce
        # dtype under bf16-mixed, originals still referenced, or copied into the reduce-scatter input),
        # every layer's sharded gradients; the root's parameters are already resharded
        root_numel = sum(t.numel for t in trainable_edges)
        root_grads = root_numel * unshard_bytes  # this rank's (TP-local) unsharded root gradients
        if mixed_fsdp:
            root_temp = root_grads + root_numel * 4
        else:
            root_temp = root_grads + sum(fsdp.padded_shard_numel(t.shape, shard) for t in trainable_edges) * shard * grad_bytes
        moment("backward (root reduce-scatter)", gradients=n_layers * grad_layer,
               activations=loss_scalar + kept_outputs, temporaries=root_temp,
               comm_buffers=comm_persistent)
        moment("backward (first layer reduce-scatter)",
               gradients=n_layers * grad_layer + (head_grads if last else 0),
               activations=loss_scalar + kept_outputs, temporaries=hidden_grad,
               comm_buffers=comm_persistent + root_unsharded + layer_unsharded + layer_rs)
    # the end of the backward: the embedding's gradient made while the input's gradient is alive
    if first and not sharded_fsdp:
        moment("backward (embedding)", gradients=grads - (grad_edges if fsdp_on else embed_grads),
               temporaries=embed_grads + tokens * model.hidden_size * c, activations=loss_scalar,
               comm_buffers=comm_persistent + ds_bucket)
    # the optimizer step: non-foreach AdamW keeps two temporaries of the current tensor and the
    # previous tensor's denominator
    # DTensor ops run on the local shards; the layers repeat, so two of them stand for all in the max below
    sizes = [owned_numel(t) for t in edge_first + trainable_layer * min(n_layers, 2) + edge_last]
    if w.optimizer == "adamw" and sizes:
        step_temp = max(2 * n + (sizes[i - 1] if i else 0) for i, n in enumerate(sizes)) * pbytes
    else:
        step_temp = 0
    if ds_bucket:  # DeepSpeed ZeRO-1/2: the bucket's reduction, then its own optimizer step
        numels = [t.numel for t in all_trainable]
        moment("gradient reduction", gradients=acc_steps_grads if par.zero == 2 else 0, activations=loss_scalar,
               temporaries=deepspeed_zero.reduction_bytes(sum(numels), grad_bytes), comm_buffers=ds_bucket)
        moment("optimizer step", activations=kept_outputs + (4 if last else 0),
               **deepspeed_zero.step_moment(numels, par.dp, dp_i, grad_bytes, w.optimizer))
    else:
        moment("optimizer step", gradients=grads, temporaries=step_temp, comm_buffers=comm_persistent,
               activations=kept_outputs + (4 if last else 0))
    _, phase, cats = max(moments, key=lambda m: m[0])
    peak = empty_breakdown() | base
    for k, v in cats.items():
        peak[k] += int(v)
    if fsdp_on and shard == 1:
        notes.append("FSDP over one rank shards nothing")
    return {k: int(v) for k, v in peak.items()}, phase, host, tuple(notes)


def _pipeline_fsdp_moments(moment, v: dict) -> None:
    """FSDP2 inside a pipeline stage (torch.distributed.pipelining): every micro-batch's backward runs
    without reduce-scatter and without resharding, folding each layer's gradients into unsharded
    accumulators (the reduce dtype, fp32 under bf16-mixed); REDUCE_GRAD reduce-scatters every group at
    the end. So the last micro-batch's backward holds every earlier micro-batch's gradients unsharded."""
    n, k_first = v["n_layers"], v["layer_range"][0]
    w, par, pp_i, last, first = v["w"], v["par"], v["pp_i"], v["last"], v["first"]
    acc_bytes = 4 if v["mixed_fsdp"] else v["unshard_bytes"]
    trainable_layer_numel = sum(t.numel for t in v["trainable_layer"])
    trainable_edge_numel = sum(t.numel for t in v["trainable_edges"])
    acc_layer = trainable_layer_numel * acc_bytes
    acc_all = n * acc_layer + trainable_edge_numel * acc_bytes
    m = w.micro_batches
    all_unsharded = n * v["layer_unsharded"]
    refwd = pipeline.forward_after_first_backward(par.schedule, m, par.pp, pp_i)
    base_comm = v["comm_persistent"] + v["root_unsharded"]
    # a forward: the in-flight micro-batches' activations; after a first backward, every accumulator
    acc_fwd = acc_all if (refwd and m > 1) else 0
    moment("forward (pipeline stage end)", activations=v["act_peak"] - (v["head_saved"] if last else 0)
           + v["kept_outputs"], temporaries=acc_fwd,
           comm_buffers=base_comm + (all_unsharded if acc_fwd else v["layer_unsharded"]))
    # backward j of the M: the micro-batches still in flight, the accumulators made so far, and which
    # layers are unsharded (a forward since the last backward resharded them; otherwise they all stay)
    ends = act.layer_backward_end_per_token(v["model"], v["c"], par.tp, par.sp)
    norm_w = v["model"].hidden_size * v["unshard_bytes"]
    tokens = v["tokens"]
    inflight = pipeline.in_flight_micro_batches(par.schedule, m, par.pp, pp_i)
    # only the largest of these candidates is passed on (the first on ties, as the caller's max would)
    act_fixed = v["rotary"] + v["loss_scalar"] + v["kept_outputs"]
    temp_fixed = (v["head_grads"] if last else 0) + v["layer_grad_unsharded"] + (0 if last else v["hidden_grad"])
    ends_bytes = [(int(a * tokens), int(t * tokens) - (norm_w if i == 0 else 0)) for i, (a, t) in enumerate(ends)]
    best = None
    for j in sorted({0, min(1, m - 1), m - 1}):
        forwards_done = m if par.schedule == "gpipe" else min(m, j + inflight)
        others = forwards_done - j - 1
        forward_between = j == 0 or (par.schedule != "gpipe" and j + inflight <= m)
        for k in sorted({0, min(1, n - 1), max(0, n - 2), n - 1}):
            acc = acc_all if j > 0 else (n - 1 - k) * acc_layer
            if forward_between:  # layers >= k unsharded, k - 1 prefetched
                params = (n - k) * v["layer_unsharded"] + (v["layer_ag"] if k > 0 else 0)
            else:
                params = all_unsharded
            for end_act, end_temp in ends_bytes:
                cats = (others * v["acts_mb"] + k * v["saved_layer"] + end_act + act_fixed,
                        acc + temp_fixed + end_temp, base_comm + params)
                if best is None or sum(cats) > best[0]:
                    best = (sum(cats), j, k, cats)
    _, j, k, (a, t, cb) = best
    moment(f"backward (layer {k_first + k} end, micro-batch {j + 1} of {m})", activations=a, temporaries=t,
           comm_buffers=cb)
    # REDUCE_GRAD: the first group reduce-scatters while every accumulator is alive
    moment("pipeline reduce-scatter (FSDP)", gradients=v["grad_layer"], temporaries=acc_all if m > 1 else
           n * v["layer_grad_unsharded"] + (v["head_grads"] if last else 0) + (v["embed_grads"] if first else 0),
           activations=v["loss_scalar"] + v["kept_outputs"],
           comm_buffers=base_comm + all_unsharded - v["layer_unsharded"] + v["layer_rs"])


def uses_autocast(w: Workload, par: ParallelConfig) -> bool:
    """bf16-mixed training outside FSDP2 runs under torch.autocast (FSDP2 casts through its
    MixedPrecisionPolicy; DeepSpeed's bf16 keeps 16-bit weights)."""
    return (w.training and w.precision == "bf16-mixed" and par.framework == "torch"
            and not par.zero >= 2)


def _input_bytes(w: Workload, first: bool, last: bool = True) -> int:
    """The int64 input ids of one step on the first stage and the labels on the last (one tensor when
    the stage is both)."""
    return w.batch * w.seq * 8 if (first or last) else 0


def _grad_numel(t, par: ParallelConfig) -> int:
    """Megatron TP returns the vocabulary-split embedding's gradient at full size (DESIGN §4)."""
    if t.block == "embedding" and par.tp > 1 and par.tp_layout == "megatron":
        n = 1
        for d in t.full_shape:
            n *= d
        return n
    return t.numel


def _grad_numel_edges(edges, par) -> int:
    return sum(_grad_numel(t, par) for t in edges if t.block == "head")


def _vocab_local(model: ModelSpec, par: ParallelConfig) -> int:
    if par.tp > 1 and par.tp_layout == "megatron":
        return -(-model.vocab_size // par.tp)
    return model.vocab_size


# ---------------------------------------------------------------------------------------------- inference
def _inference_memory(model: ModelSpec, w: Workload, par: ParallelConfig, pp_i: int, tp_i: int,
                      layer_range: tuple[int, int]):
    first, last = pp_i == 0, pp_i == par.pp - 1
    n_layers = layer_range[1] - layer_range[0]
    c = w.compute_bytes
    layer = layer_local_tensors(model, w, par, tp_i)
    edges = edge_local_tensors(model, w, par, tp_i, first, last)
    shard = par.dp if par.zero == 3 else 1
    params = 0
    for t in layer:
        n = fsdp.padded_shard_numel(t.shape, shard) if shard > 1 else t.numel
        params += n_layers * (stored_bytes(t, n, w) if t.quantized else n * c)
    for t in edges:
        n = fsdp.padded_shard_numel(t.shape, shard) if shard > 1 else t.numel
        params += n * c
    buffers = model.rotary_buffer_bytes()
    cache = kv_cache.kv_cache_bytes(model, range(*layer_range), w.batch, w.context, w.kv_bytes, par.tp)
    tokens = w.batch * w.seq
    vocab_parallel = par.tp > 1 and first  # measured: every TP layout keeps a second int64 copy of the ids
    mlp_peak = int(act.inference_transient_per_token(model, c, par.tp) * tokens) \
        + act.inference_fixed_bytes(model, w.batch, w.seq, c, vocab_parallel)
    phase = "prefill (MLP)"
    working = mlp_peak
    if w.attention == "eager" or model.model_type == "gemma2":
        attn_peak = act.eager_attention_prefill_bytes(model, w.batch, w.seq, w.context, c, par.tp) \
            + act.inference_fixed_bytes(model, w.batch, w.seq, c, vocab_parallel)
        if attn_peak > working:
            working, phase = attn_peak, "prefill (attention scores)"
    comm = 0
    if par.pp > 1:
        comm = pipeline.receive_buffer_bytes(pp_i, par.pp, 1, tokens, model.hidden_size, c) // 2
    if shard > 1:
        comm += sum(t.numel for t in layer) * c + sum(t.numel for t in edges) * c
    bd = empty_breakdown()
    bd.update(parameters=params, other=buffers, kv_cache=cache,
              activations=working + (8 * tokens if first else 0), comm_buffers=comm)
    return bd, phase, 0, ()
