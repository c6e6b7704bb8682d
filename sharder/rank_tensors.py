"""The parameter tensors one rank holds: its stage's blocks, split by TP/EP, marked trainable or frozen."""

from __future__ import annotations

from dataclasses import dataclass

from sharder import param_layout as pl
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload
from sharder.strategies import lora, quantization
from sharder.strategies.tensor_parallel import local_rows

QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class LocalTensor:
    """One parameter on this rank, before FSDP/ZeRO sharding."""

    block: str
    """'embedding', 'layer', 'norm' or 'head'."""
    name: str
    shape: tuple[int, ...]
    trainable: bool
    quantized: bool = False
    full_shape: tuple[int, ...] = ()
    """The unsplit shape (megatron TP returns the embedding gradient at this size)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def tp_split(t: pl.ParamTensor, tp: int, tp_index: int, vocab_split: bool) -> tuple[int, ...]:
    if tp == 1:
        return t.shape
    if t.tp == "vocab":
        return ((local_rows(t.shape[0], tp, tp_index),) + t.shape[1:]) if vocab_split else t.shape
    if t.tp == "colwise":
        if len(t.shape) == 3:  # stacked experts: split the output features
            return (t.shape[0], local_rows(t.shape[1], tp, tp_index), t.shape[2])
        return (local_rows(t.shape[0], tp, tp_index),) + t.shape[1:]
    if t.tp == "rowwise" and len(t.shape) >= 2:
        return t.shape[:-1] + (local_rows(t.shape[-1], tp, tp_index),)
    return t.shape


def layer_local_tensors(model: ModelSpec, workload: Workload, par: ParallelConfig, tp_index: int,
                        ep_index: int = 0) -> list[LocalTensor]:
    """One decoder layer's tensors on this rank (all layers of a model are alike)."""
    out = []
    train_all = workload.full_training
    for t in pl.layer_tensors(model):
        shape = tp_split(t, par.tp, tp_index, True)
        if t.expert and par.ep > 1:
            shape = (shape[0] // par.ep,) + shape[1:]
        quantized = workload.quant != "none" and t.lora_target in QUANTIZED_LINEARS and t.name.endswith("weight")
        out.append(LocalTensor("layer", t.name, shape, train_all, quantized, t.shape))
        if workload.adapters and t.lora_target in workload.lora_targets and t.name.endswith("weight"):
            rows, cols = shape[0], shape[-1]
            r = workload.lora_rank
            out.append(LocalTensor("layer", t.name + ".lora_A", (r, cols), True))
            out.append(LocalTensor("layer", t.name + ".lora_B", (rows, r), True))
    return out


def edge_local_tensors(model: ModelSpec, workload: Workload, par: ParallelConfig, tp_index: int,
                       first_stage: bool, last_stage: bool) -> list[LocalTensor]:
    """Embedding (first stage), final norm and head (last stage) on this rank."""
    out = []
    train_all = workload.full_training
    vocab_split_embed = par.tp > 1 and par.tp_layout == "megatron"
    vocab_split_head = par.tp > 1 and par.tp_layout in ("megatron", "hf")
    emb = pl.embedding_tensor(model)
    if first_stage:
        out.append(LocalTensor("embedding", emb.name, tp_split(emb, par.tp, tp_index, vocab_split_embed),
                               train_all, False, emb.shape))
    if last_stage:
        for t in pl.final_norm_tensors(model):
            out.append(LocalTensor("norm", t.name, t.shape, train_all, False, t.shape))
        head = pl.head_tensor(model)
        if head is None and par.pp > 1:  # tied, but the last stage needs its own copy
            head = pl.ParamTensor("lm_head.weight", emb.shape, "vocab")
        if head is not None:
            out.append(LocalTensor("head", head.name, tp_split(head, par.tp, tp_index, vocab_split_head),
                                   train_all, False, head.shape))
    return out


def stored_bytes(t: LocalTensor, numel: int, workload: Workload) -> int:
    """Bytes a parameter's storage takes: quantized, or the precision's parameter dtype (a frozen LoRA base
    too: fp32 under bf16-mixed, as the referee builds it; a bf16 base is --precision bf16-true)."""
    if t.quantized:
        return quantization.quantized_bytes(numel, workload.quant)
    return numel * workload.param_bytes


__all__ = ["LocalTensor", "layer_local_tensors", "edge_local_tensors", "stored_bytes", "lora"]
