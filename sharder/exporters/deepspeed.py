"""DeepSpeed config JSON for a training plan (ZeRO data parallel, optional CPU offload).

Batch sizes follow DeepSpeed's rule train_batch_size = micro × accumulation × data-parallel ranks,
with the plan's batch per data-parallel replica: micro = batch / micro_batches, accumulation =
micro_batches. The ZeRO bucket sizes are written out at the values sharder's cost model assumed
(DeepSpeed's defaults, `sharder.strategies.deepspeed_zero`), so a later change of DeepSpeed's
defaults cannot silently move the prediction.
"""

from __future__ import annotations

import json

from sharder.errors import SharderInputError
from sharder.exporters._common import view

# DeepSpeed's defaults, as sharder.strategies.deepspeed_zero models them (kept in step by a test).
REDUCE_BUCKET_SIZE = 500_000_000
ALLGATHER_BUCKET_SIZE = 500_000_000
STAGE3_PREFETCH_BUCKET_SIZE = 50_000_000
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_PARAM_PERSISTENCE_THRESHOLD = 100_000

DEFAULT_LR = 1e-4
"""The learning rate the referee's AdamW uses (cluster/build.py); the plan does not choose one."""


def config(plan: dict, *, gradient_clipping: float | None = None, lr: float | None = None) -> dict:
    """The DeepSpeed config as a dict."""
    v = view(plan)
    w, par = v.workload, v.parallel
    if not w.training:
        raise SharderInputError(
            "deepspeed export needs a training plan; this plan is --mode inference "
            "(try --to vllm or --to accelerate)")
    if par.tp > 1 or par.pp > 1:
        raise SharderInputError(
            f"deepspeed export covers ZeRO data parallel only; this plan has TP={par.tp} PP={par.pp} "
            f"(try --to torchtitan or --to fsdp2)")
    if par.dp_replicate > 1:
        raise SharderInputError(
            f"deepspeed export: HSDP ({par.dp_replicate} replicas × {par.dp // par.dp_replicate} shards) has no "
            f"DeepSpeed equivalent (ZeRO++ hpZ keeps a second weight copy); try --to torchtitan or --to fsdp2")
    if gradient_clipping is not None and not (isinstance(gradient_clipping, (int, float)) and gradient_clipping > 0):
        raise SharderInputError(f"gradient clipping must be a number > 0, got {gradient_clipping!r}")

    micro = w.micro_batch_size
    accum = w.micro_batches
    train_batch = micro * accum * par.dp
    if plan.get("global_batch") not in (None, train_batch):
        raise SharderInputError(
            f"plan's global batch {plan['global_batch']} is not batch {w.batch} × DP {par.dp} = {train_batch}; "
            f"write the plan again with `sharder plan -o`")

    zero: dict = {"stage": par.zero}
    if par.zero in (1, 2):
        # one contiguous reduce bucket, as the cost model counts it (overlap_comm would add a second one)
        zero.update(reduce_bucket_size=REDUCE_BUCKET_SIZE, allgather_bucket_size=ALLGATHER_BUCKET_SIZE,
                    contiguous_gradients=True, overlap_comm=False)
    elif par.zero == 3:
        zero.update(reduce_bucket_size=REDUCE_BUCKET_SIZE,
                    stage3_prefetch_bucket_size=STAGE3_PREFETCH_BUCKET_SIZE,
                    stage3_max_live_parameters=STAGE3_MAX_LIVE_PARAMETERS,
                    stage3_param_persistence_threshold=STAGE3_PARAM_PERSISTENCE_THRESHOLD)
    if par.offload != "none":
        if par.zero == 0:
            raise SharderInputError("deepspeed export: CPU offload needs ZeRO stage 1, 2 or 3; plan with --zero")
        # torch's "all" is FSDP2 CPUOffloadPolicy: parameters, gradients and optimizer on the host.
        if par.offload in ("optimizer", "all"):
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if par.offload in ("params", "all") and par.zero == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    bf16 = w.precision != "32-true"
    cfg: dict = {
        "train_batch_size": train_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "optimizer": _optimizer(w.optimizer, DEFAULT_LR if lr is None else lr),
        "steps_per_print": 10,
        "wall_clock_breakdown": False,
    }
    if gradient_clipping is not None:
        cfg["gradient_clipping"] = float(gradient_clipping)
    return cfg


def _optimizer(name: str, lr: float) -> dict:
    if name == "sgd":
        # DeepSpeed builds any torch.optim class by name; momentum keeps one state like the cost model.
        return {"type": "SGD", "params": {"lr": lr, "momentum": 0.9}}
    # AdamW in the config (not a client optimizer) so that ZeRO-Offload gets DeepSpeedCPUAdam.
    return {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0}}


def export(plan: dict, *, gradient_clipping: float | None = None, lr: float | None = None) -> str:
    return json.dumps(config(plan, gradient_clipping=gradient_clipping, lr=lr), indent=2) + "\n"
