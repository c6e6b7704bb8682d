"""Build one rank's model: transformers model on meta, then TP → LoRA → AC → FSDP/DDP, then materialize.

Shared by the referee (`cluster/simulate.py`, fake tensors over the fake process group) and by
real runs (real tensors over gloo/nccl): every function takes plain torch objects and knows
nothing about fake mode. The order is DESIGN.md §3's: tensor parallel first (outside fake mode,
on the meta model), activation checkpointing, FSDP2 per decoder layer then the root; the
parameters are materialized last with `to_empty`, inside whatever mode the caller chose.

Importing this module imports torch and transformers (seconds); the planning path never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sharder.errors import SharderInputError
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload
from sharder.strategies import lora


class SimulationUnsupported(SharderInputError):
    """The referee (or the builder) cannot reproduce this combination; the message says which part."""


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------
def param_dtype(workload: Workload) -> torch.dtype:
    """Dtype the parameters are stored in: bf16 for bf16-true, fp32 otherwise (masters)."""
    return torch.bfloat16 if workload.precision == "bf16-true" else torch.float32


def compute_dtype(workload: Workload) -> torch.dtype:
    return torch.float32 if workload.precision == "32-true" else torch.bfloat16


# --------------------------------------------------------------------------------------------------
# the transformers model
# --------------------------------------------------------------------------------------------------
def hf_config(spec: ModelSpec, workload: Workload):
    """The transformers config object of `spec.hf_config` (with the spec's depth)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = dict(spec.hf_config or {})
    if not raw:
        raise SimulationUnsupported(f"model {spec.name}: no Hugging Face config to build it from")
    model_type = raw.pop("model_type", None) or spec.model_type
    for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype",
                "quantization_config", "auto_map"):
        raw.pop(key, None)
    if model_type not in CONFIG_MAPPING:
        raise SimulationUnsupported(f"model {spec.name}: transformers {_tf_version()} does not know "
                                    f"model_type {model_type!r}")
    config = AutoConfig.for_model(model_type, **raw)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(text, key) and isinstance(getattr(text, key), int):
            setattr(text, key, spec.num_layers)
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = list(text.layer_types)[:spec.num_layers]
    config.use_cache = not workload.training
    return config


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def build_meta_model(spec: ModelSpec, workload: Workload) -> nn.Module:
    """The causal-LM on the meta device, in the parameter dtype, train() or eval() per the mode."""
    from transformers import AutoModelForCausalLM

    config = hf_config(spec, workload)
    notes = []
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=workload.attention, dtype=param_dtype(workload))
    except ValueError as exc:
        if workload.attention != "sdpa" or "does not support" not in str(exc):
            raise
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=param_dtype(workload))
        notes.append(f"{type(model).__name__} has no SDPA attention in transformers {_tf_version()}: "
                     f"simulated with eager attention")
    model.sharder_notes = notes
    model.config.use_cache = not workload.training
    model.train(workload.training)
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers (model.model.layers for Llama-style families)."""
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and not isinstance(module[0], nn.Linear):
            return module
    raise SimulationUnsupported(f"cannot find the decoder layers of {type(model).__name__}")


def _layers_prefix(model: nn.Module) -> str:
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise SimulationUnsupported("decoder layers are not a submodule of the model")


def tied_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(module, name, source module, source name) for each weight tied to another (head ← embedding)."""
    pairs = []
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None and hasattr(config, "get_text_config") \
        else config
    if text is not None and getattr(text, "tie_word_embeddings", False):
        inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if inp is not None and out is not None:
            pairs.append((out, "weight", inp, "weight"))
    return pairs


def retie(model: nn.Module, pairs) -> None:
    """`to_empty` unties tied weights (DESIGN §4): point each tied weight back at its source."""
    for module, name, src, src_name in pairs:
        if getattr(module, name) is not getattr(src, src_name):
            setattr(module, name, getattr(src, src_name))


def rebuild_rotary(model: nn.Module) -> None:
    """`to_empty` leaves rotary `inv_freq` uninitialized; recompute it in place (NaN losses otherwise)."""
    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if not isinstance(inv, torch.Tensor) or not hasattr(module, "config"):
            continue
        fn = getattr(module, "rope_init_fn", None)
        if fn is None:
            rope_type = getattr(module, "rope_type", "default")
            if rope_type == "default" and hasattr(module, "compute_default_rope_parameters"):
                fn = module.compute_default_rope_parameters
            else:
                from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

                fn = ROPE_INIT_FUNCTIONS.get(rope_type)
        if fn is None:
            continue
        try:
            fresh, _ = fn(module.config, inv.device)
        except TypeError:
            fresh, _ = fn(module.config)
        with torch.no_grad():
            inv.copy_(fresh.to(inv.dtype))
            orig = getattr(module, "original_inv_freq", None)
            if isinstance(orig, torch.Tensor):
                orig.copy_(fresh.to(orig.dtype))


def materialize(model: nn.Module, device: str = "cpu", *, init_std: float | None = None) -> nn.Module:
    """`to_empty` onto `device` (inside the caller's fake mode, if any), re-tie, rebuild rotary;
    `init_std`: also fill the weights with N(0, std) (real-tensor runs, to keep losses finite)."""
    pairs = tied_pairs(model)
    model.to_empty(device=device)
    retie(model, pairs)
    rebuild_rotary(model)
    if init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                if local.is_floating_point():
                    local.normal_(0.0, init_std)
    return model


# --------------------------------------------------------------------------------------------------
# meshes
# --------------------------------------------------------------------------------------------------
@dataclass
class Meshes:
    """The rank's sub-meshes (None where the degree is 1 and nothing needs a mesh)."""

    world: Any
    tp: Any = None
    dp: Any = None
    """The mesh FSDP shards over: 1-D (dp) or 2-D (replicate, shard) for HSDP; plain DP uses it too."""
    pp_group: Any = None
    dp_group: Any = None


def build_meshes(parallel: ParallelConfig, device_type: str = "cpu") -> Meshes:
    """A (pp, dp, tp) — or (pp, dp_replicate, dp_shard, tp) for HSDP — mesh over the default group."""
    from torch.distributed.device_mesh import init_device_mesh

    if parallel.dp_replicate > 1:
        shape = (parallel.pp, parallel.dp_replicate, parallel.dp // parallel.dp_replicate, parallel.tp)
        names = ("pp", "dp_replicate", "dp_shard", "tp")
    else:
        shape = (parallel.pp, parallel.dp, parallel.tp)
        names = ("pp", "dp", "tp")
    world = init_device_mesh(device_type, shape, mesh_dim_names=names)
    meshes = Meshes(world=world, tp=world["tp"])
    if parallel.dp_replicate > 1:
        meshes.dp = world["dp_replicate", "dp_shard"]
        meshes.dp_group = world["dp_replicate", "dp_shard"]._flatten("dp_flat").get_group()
    else:
        meshes.dp = world["dp"]
        meshes.dp_group = world["dp"].get_group()
    meshes.pp_group = world["pp"].get_group()
    return meshes


# --------------------------------------------------------------------------------------------------
# tensor parallel
# --------------------------------------------------------------------------------------------------
_ATTN_COL = ("q_proj", "k_proj", "v_proj")
_ATTN_ROW = ("o_proj",)
_MLP_COL = ("gate_proj", "up_proj", "w1", "w3", "fc1")
_MLP_ROW = ("down_proj", "w2", "fc2")


def _check_tp(spec: ModelSpec, tp: int) -> None:
    if spec.fused_qkv or spec.fused_gate_up:
        raise SimulationUnsupported(
            f"--tp {tp}: {spec.name} has fused projections (qkv/gate_up); a column shard of a fused "
            f"projection is not a per-head shard and needs its own plan")
    if spec.is_moe:
        raise SimulationUnsupported(f"--tp {tp}: tensor-parallel MoE experts are not simulated")
    for what, n in (("attention heads", spec.num_heads), ("KV heads", spec.num_kv_heads),
                    ("FFN size", spec.intermediate_size)):
        if n % tp:
            raise SimulationUnsupported(f"--tp {tp} does not divide the {what} ({n}) of {spec.name}")


def apply_tp(model: nn.Module, spec: ModelSpec, parallel: ParallelConfig, tp_mesh) -> bool:
    """parallelize_module per DESIGN §3. Returns True when the loss must run under loss_parallel()."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)

    _check_tp(spec, parallel.tp)
    sp, layout = parallel.sp, parallel.tp_layout
    prefix = _layers_prefix(model)
    base_prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""
    plan: dict[str, Any] = {}
    for i, layer in enumerate(decoder_layers(model)):
        lp = f"{prefix}.{i}"
        names = dict(layer.named_modules())
        found = False
        for name, module in names.items():
            leaf = name.rsplit(".", 1)[-1]
            if not isinstance(module, nn.Linear):
                continue
            if leaf in _ATTN_COL or leaf in _MLP_COL:
                plan[f"{lp}.{name}"] = ColwiseParallel()
                found = True
            elif leaf in _ATTN_ROW or leaf in _MLP_ROW:
                plan[f"{lp}.{name}"] = RowwiseParallel(output_layouts=Shard(1) if sp else Replicate())
        if not found:
            raise SimulationUnsupported(f"--tp: no q/k/v/gate/up projections found in {type(layer).__name__}")
        if sp:
            for name, module in names.items():
                if name and "." not in name and "norm" in name.lower():
                    plan[f"{lp}.{name}"] = SequenceParallel()
            attn = next((n for n in ("self_attn", "attention", "attn") if n in names), None)
            mlp = next((n for n in ("mlp", "feed_forward", "block_sparse_moe") if n in names), None)
            if attn is None or mlp is None:
                raise SimulationUnsupported(f"--sp: cannot find attention/MLP in {type(layer).__name__}")
            plan[f"{lp}.{attn}"] = PrepareModuleInput(
                input_kwarg_layouts={"hidden_states": Shard(1)},
                desired_input_kwarg_layouts={"hidden_states": Replicate()})
            plan[f"{lp}.{mlp}"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))

    embed = model.get_input_embeddings()
    embed_name = _module_name(model, embed) if embed is not None else None
    head = model.get_output_embeddings()
    head_name = _module_name(model, head) if head is not None else None
    norm_name = f"{base_prefix}.norm" if base_prefix else "norm"
    modules = dict(model.named_modules())
    if sp and norm_name in modules and not isinstance(modules[norm_name], nn.Identity):
        plan[norm_name] = SequenceParallel()
    loss_parallel = False
    if layout == "megatron":
        plan[embed_name] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1) if sp else Replicate())
        plan[head_name] = ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(),
                                          output_layouts=Shard(-1), use_local_output=False)
        loss_parallel = True
    else:
        if sp and embed_name is not None:  # the replicated embedding gives the full sequence: split it
            plan[f"{prefix}.0"] = PrepareModuleInput(input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),),
                                                     use_local_output=True)
        if layout == "hf":
            plan[head_name] = ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(),
                                              output_layouts=Replicate())
        elif sp:  # layers: replicated head needs the whole sequence
            plan[head_name] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                                 use_local_output=True)
    if getattr(model.config, "tie_word_embeddings", False) and layout != "layers":
        raise SimulationUnsupported(
            f"--tp-layout {layout} with tied embeddings (embedding and head share one weight): use --tp-layout layers")
    plan = {k: v for k, v in plan.items() if k is not None}
    parallelize_module(model, tp_mesh, plan)
    return loss_parallel


def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


# --------------------------------------------------------------------------------------------------
# LoRA (hand-written adapters, PEFT's arithmetic: base(x) + B(A(x)) * alpha / r, dropout 0)
# --------------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device,
                                dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device,
                                dtype=base.weight.dtype)
        self.scaling = (alpha if alpha is not None else 2 * rank) / rank

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def apply_lora(model: nn.Module, workload: Workload) -> int:
    """Freeze every weight; wrap each target Linear of each decoder layer. Returns the adapter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    count = 0
    for layer in decoder_layers(model):
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if lora.is_target(name, workload.lora_targets) and isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, workload.lora_rank))
                    count += 1
    if not count:
        raise SimulationUnsupported(f"--lora-targets {','.join(workload.lora_targets)}: no such Linear modules")
    return count


# --------------------------------------------------------------------------------------------------
# activation checkpointing, FSDP2, DDP
# --------------------------------------------------------------------------------------------------
def apply_ac(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_fsdp(model: nn.Module, workload: Workload, parallel: ParallelConfig, dp_mesh) -> None:
    """fully_shard each decoder layer, then the root; zero 3 reshards after forward, zero 2 not."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if workload.precision == "bf16-mixed" else MixedPrecisionPolicy())
    reshard = parallel.zero == 3
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)


def make_optimizer(model: nn.Module, workload: Workload, *, zero1_group=None):
    """AdamW(foreach=False) — or SGD with momentum — over the trainable parameters;
    ZeroRedundancyOptimizer around it for ZeRO-1."""
    params = [p for p in model.parameters() if p.requires_grad]
    if workload.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, dict(lr=1e-3, momentum=0.9, foreach=False)
    else:
        cls, kwargs = torch.optim.AdamW, dict(lr=1e-4, foreach=False)
    if zero1_group is not None:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=cls, process_group=zero1_group, **kwargs)
    return cls(params, **kwargs)


# --------------------------------------------------------------------------------------------------
# pipeline stages
# --------------------------------------------------------------------------------------------------
class StageModule(nn.Module):
    """One pipeline stage of a transformers causal LM: [embedding] + layers[start:end] + [norm, head].

    Runs the model's own forward (masks, rotary, decoder loop); the first stage takes token ids,
    the others hidden states (`inputs_embeds`); the last returns logits, the others hidden states.
    """

    def __init__(self, causal_lm: nn.Module, start: int, end: int, first: bool, last: bool):
        super().__init__()
        base = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.base_model
        layers = decoder_layers(causal_lm)
        kept = nn.ModuleList(list(layers)[start:end])
        for name, module in list(base.named_children()):
            if module is layers:
                setattr(base, name, kept)
        if not first:
            setattr(base, _child_name(base, causal_lm.get_input_embeddings()), None)
        if not last:
            for name, module in list(base.named_children()):
                if name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
                    setattr(base, name, nn.Identity())
        self.model = base
        self.lm_head = causal_lm.get_output_embeddings() if last else None
        self.config = causal_lm.config
        self.first, self.last = first, last
        self.extra_kwargs = None
        """Callable(batch) -> extra forward kwargs (full-sequence positions under sequence parallel)."""
        self.forward_context = None
        """Callable() -> context manager around the forward (CPU autocast for bf16-mixed without FSDP)."""

    def forward(self, x):
        import contextlib

        kw = {"input_ids": x} if self.first else {"inputs_embeds": x}
        if self.extra_kwargs is not None:
            kw.update(self.extra_kwargs(x.shape[0]))
        with (self.forward_context or contextlib.nullcontext)():
            hidden = self.model(**kw, use_cache=False).last_hidden_state
            return self.lm_head(hidden) if self.last else hidden

    def get_input_embeddings(self):
        return getattr(self.model, "embed_tokens", None)

    def get_output_embeddings(self):
        return self.lm_head


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    for name, module in parent.named_children():
        if module is child:
            return name
    raise SimulationUnsupported("the input embedding is not a direct child of the base model")
