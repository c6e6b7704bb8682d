"""A torchtitan job TOML for a training plan (framework torch: FSDP2 / HSDP / DDP, TP, PP, AC).

Key names follow torchtitan's JobConfig (torchtitan/config/job_config.py): [parallelism]
data_parallel_replicate_degree, data_parallel_shard_degree, fsdp_reshard_after_forward,
tensor_parallel_degree, disable_loss_parallel, enable_async_tensor_parallel,
pipeline_parallel_degree, pipeline_parallel_schedule, pipeline_parallel_microbatch_size,
pipeline_parallel_split_points; [activation_checkpoint] mode, selective_ac_option; [training]
local_batch_size, global_batch_size, seq_len, mixed_precision_param, mixed_precision_reduce,
enable_cpu_offload. torchtitan trains its own model definitions: [model] is written for the Llama-3
family it ships; other models get a comment.

Batches: torchtitan's local_batch_size is per data-parallel rank and it accumulates gradients
global_batch_size / (local_batch_size × dp) times. sharder's batch is per replica per optimizer
step, with micro_batches as accumulation steps (PP = 1) or pipeline micro-batches (PP > 1).
"""

from __future__ import annotations

from sharder.errors import SharderInputError
from sharder.exporters._common import view

SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe"}

# catalog name -> (torchtitan model name, flavor)
TORCHTITAN_MODELS = {
    "llama-3-8b": ("llama3", "8B"), "llama-3.1-8b": ("llama3", "8B"),
    "llama-3-70b": ("llama3", "70B"), "llama-3.1-70b": ("llama3", "70B"),
    "llama-3.1-405b": ("llama3", "405B"),
}


def tables(plan: dict) -> tuple[dict[str, dict], list[str]]:
    """({section: {key: value}}, comment lines)."""
    v = view(plan)
    w, par = v.workload, v.parallel
    if not w.training:
        raise SharderInputError("torchtitan export needs a training plan; this plan is --mode inference "
                                "(try --to vllm or --to accelerate)")
    if par.framework != "torch":
        raise SharderInputError("torchtitan export: this plan is for DeepSpeed; use --to deepspeed")
    if w.adapters:
        raise SharderInputError(f"torchtitan export: torchtitan has no {w.mode.upper()} adapters; "
                                f"use --to fsdp2 (with PEFT) or plan full training")
    if par.zero == 1:
        raise SharderInputError("torchtitan export: torchtitan has no ZeRO-1 (sharded optimizer only); "
                                "plan with --zero 0 (DDP) or --zero 3 (FSDP)")
    if par.ep > 1:
        raise SharderInputError("torchtitan export: expert parallel plans are not exported yet; use --to fsdp2")
    if par.offload not in ("none", "all"):
        raise SharderInputError(f"torchtitan export: --offload {par.offload} is DeepSpeed's; use --to deepspeed")

    comments = [f"torchtitan job for the sharder plan: {v.summary} ({v.model_name})",
                f"launch on {par.world_size} GPUs: NGPU={par.world_size} CONFIG_FILE=<this file> ./run_train.sh"]

    if par.zero >= 2:
        replicate, shard = par.dp_replicate, par.dp // par.dp_replicate
    else:  # DDP
        replicate, shard = par.dp, 1
    parallelism: dict = {
        "data_parallel_replicate_degree": replicate,
        "data_parallel_shard_degree": shard,
        "tensor_parallel_degree": par.tp,
        "pipeline_parallel_degree": par.pp,
        "context_parallel_degree": 1,
        "enable_async_tensor_parallel": False,
    }
    if par.zero >= 2:
        # zero 3 reshards every layer after forward (sharder's referee); zero 2 keeps them gathered
        parallelism["fsdp_reshard_after_forward"] = "always" if par.zero == 3 else "never"
    if par.tp > 1:
        parallelism["disable_loss_parallel"] = par.tp_layout != "megatron"
        if par.tp_layout != "megatron":
            comments.append(f"tp-layout {par.tp_layout}: torchtitan always shards the embedding and output "
                            f"under TP; only loss parallel is switched off to match")
        if not par.sp:
            comments.append("torchtitan applies sequence parallel on the norms whenever TP > 1; "
                            "the plan was made without it (torchtitan will hold less activation memory)")

    training: dict = {"seq_len": w.seq, "global_batch_size": w.batch * par.dp,
                      "mixed_precision_param": "float32" if w.precision == "32-true" else "bfloat16",
                      "mixed_precision_reduce": "float32",
                      "enable_cpu_offload": par.offload == "all"}
    if par.pp > 1:
        training["local_batch_size"] = w.batch
        parallelism["pipeline_parallel_schedule"] = SCHEDULES[par.schedule]
        parallelism["pipeline_parallel_microbatch_size"] = w.micro_batch_size
        stages = v.stage_layers()
        parallelism["pipeline_parallel_split_points"] = [f"layers.{start}" for start, _ in stages[1:]]
    else:
        training["local_batch_size"] = w.micro_batch_size  # torchtitan accumulates micro_batches times
    if w.precision == "bf16-true":
        comments.append("bf16-true: torchtitan keeps fp32 parameters and casts to bf16 in FSDP "
                        "(mixed_precision_param); it will hold more parameter memory than the plan")

    ac: dict = {"mode": w.ac}
    if w.ac == "selective":
        ac["selective_ac_option"] = "op"

    out: dict[str, dict] = {}
    tt = TORCHTITAN_MODELS.get(v.model_name)
    if tt:
        out["model"] = {"name": tt[0], "flavor": tt[1]}
    else:
        comments.append(f"[model]: torchtitan ships no definition of {v.model_name}; register one "
                        f"(torchtitan trains its own model code, not transformers')")
    out["parallelism"] = parallelism
    out["activation_checkpoint"] = ac
    out["training"] = training
    out["optimizer"] = {"name": "AdamW" if w.optimizer == "adamw" else "SGD"}
    if w.optimizer == "sgd":
        comments.append("optimizer SGD: torchtitan builds optimizers by torch.optim name; check your version")
    return out, comments


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def export(plan: dict) -> str:
    out, comments = tables(plan)
    lines = [f"# {c}" for c in comments]
    for section, values in out.items():
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
