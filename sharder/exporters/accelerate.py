"""accelerate `device_map` + `max_memory` JSON: the plan's pipeline stages as one process's big-model
dispatch (``from_pretrained(..., device_map=..., max_memory=...)`` or ``load_checkpoint_and_dispatch``).

Module names follow transformers 5 (``model.embed_tokens``, ``model.layers.i``, ``model.norm``,
``lm_head`` for Llama-style families; GPT-NeoX and Falcon have their own). Device keys are the ranks'
local device indices on their node (``"cpu"`` for cpu ranks). JSON object keys are strings, so
``max_memory`` keys are ``"0"``, ``"1"``, …: turn digit keys back into ints before passing them on.

No equivalent (one line, SharderInputError): tensor parallel, data-parallel training, a replica that
spans nodes (accelerate dispatches inside one process on one machine).
"""

from __future__ import annotations

import json

from sharder.errors import SharderInputError
from sharder.exporters._common import PlanView, compute_dtype_name, mib_string, view

# model_type -> (embedding, decoder-layer prefix, final norm, head, extra first-stage modules)
_LLAMA_STYLE = ("model.embed_tokens", "model.layers", "model.norm", "lm_head", ("model.rotary_emb",))
MODULE_NAMES: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    **{t: _LLAMA_STYLE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                                 "gemma", "gemma2", "phi3", "olmo2")},
    "gpt_neox": ("gpt_neox.embed_in", "gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
                 ("gpt_neox.rotary_emb",)),
    "falcon": ("transformer.word_embeddings", "transformer.h", "transformer.ln_f", "lm_head",
               ("transformer.rotary_emb",)),
}


def module_names(model_type: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    return MODULE_NAMES.get(model_type, _LLAMA_STYLE)


def _device(v: PlanView, rank: dict):
    return "cpu" if v.is_cpu(rank) else v.local_index(rank)


def replica_maps(v: PlanView, replica: int) -> tuple[dict, dict, list[str]]:
    """(device_map, max_memory, notes) for data-parallel replica `replica` (pipeline stages in order)."""
    par = v.parallel
    stages = v.stage_layers()
    stage_ranks = [v.rank((s * par.dp + replica) * par.tp) for s in range(par.pp)]
    nodes = {int(r.get("node", 0)) for r in stage_ranks}
    if len(nodes) > 1:
        raise SharderInputError(
            f"accelerate export: replica {replica}'s pipeline stages span nodes {sorted(nodes)}; accelerate "
            f"dispatches inside one process on one machine (try --to vllm or --to fsdp2)")
    devices = [_device(v, r) for r in stage_ranks]
    embed, layers, norm, head, extras = module_names(v.model_type)
    notes: list[str] = []
    device_map: dict[str, object] = {embed: devices[0]}
    for extra in extras:
        device_map[extra] = devices[0]
    for (start, end), dev in zip(stages, devices):
        for i in range(start, end):
            device_map[f"{layers}.{i}"] = dev
    device_map[norm] = devices[-1]
    head_device = devices[-1]
    if v.tied_embeddings and devices[0] != devices[-1]:
        # accelerate keeps tied weights together; the plan counted a copy of the head on the last stage.
        head_device = devices[0]
        notes.append(f"{head} shares its weight with {embed} (tied embeddings), so it runs on device {devices[0]} "
                     f"with the embedding; the plan counted a separate copy on the last stage")
    device_map[head] = head_device
    max_memory: dict[str, str] = {}
    for r, dev in zip(stage_ranks, devices):
        max_memory[str(dev)] = mib_string(v.usable_bytes(r))
    return device_map, max_memory, notes


def config(plan: dict) -> dict:
    v = view(plan, need_ranks=True)
    w, par = v.workload, v.parallel
    if par.tp > 1:
        raise SharderInputError(
            f"accelerate export: tensor parallel (TP={par.tp}) has no accelerate device_map equivalent "
            f"(try --to vllm for inference, --to fsdp2 or torchtitan for training)")
    if w.training and par.dp > 1:
        raise SharderInputError(
            f"accelerate export: a device_map places one process's model; this training plan is data parallel "
            f"(DP={par.dp}) (try --to deepspeed, fsdp2 or torchtitan)")
    if par.zero == 3 and par.dp > 1:
        raise SharderInputError(
            f"accelerate export: ZeRO-3 sharding over {par.dp} ranks has no device_map equivalent "
            f"(plan with --zero 0, or try --to fsdp2)")
    device_map, max_memory, notes = replica_maps(v, 0)
    out: dict = {
        "device_map": device_map,
        "max_memory": max_memory,
        # the dtype the weights are loaded in: training keeps fp32 masters under bf16-mixed
        "dtype": "float32" if (w.precision == "32-true" or (w.training and w.precision == "bf16-mixed"))
        else "bfloat16",
        "plan": v.summary,
    }
    if w.quant != "none":
        out["quantization"] = ({"load_in_8bit": True} if w.quant == "int8" else
                               {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4" if w.quant == "nf4" else "fp4",
                                "bnb_4bit_compute_dtype": compute_dtype_name(w)})
        notes.append("quantization: pass these as transformers.BitsAndBytesConfig(**cfg['quantization'])")
    if par.dp > 1:
        out["replicas"] = []
        for d in range(par.dp):
            dm, mm, _ = replica_maps(v, d)
            out["replicas"].append({"device_map": dm, "max_memory": mm})
        notes.append(f"{par.dp} data-parallel replicas: run one process per replica with its own device_map "
                     f"(\"replicas\"); \"device_map\" is replica 0's")
    notes.append("max_memory keys are device indices as strings: use {int(k) if k.isdigit() else k: v}")
    notes.append("max_memory is each device's capacity x (1 - headroom); accelerate's own budget counts weights only")
    out["notes"] = notes
    return out


def export(plan: dict) -> str:
    return json.dumps(config(plan), indent=2) + "\n"
