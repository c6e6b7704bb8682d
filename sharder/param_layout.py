"""Parameter tensors of each block (name, shape, TP style), as transformers creates them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sharder.model_spec import ModelSpec


@dataclass(frozen=True, slots=True)
class ParamTensor:
    """One parameter tensor of a block. `tp` says how tensor parallelism splits it."""

    name: str
    shape: tuple[int, ...]
    tp: str = "replicate"
    """'colwise' (dim 0 split), 'rowwise' (dim 1 split; a bias stays whole), 'replicate', 'vocab' (dim 0)."""
    lora_target: str | None = None
    """The LoRA target name this weight answers to (q_proj, ..., down_proj), if any."""
    expert: bool = False
    """Belongs to a routed expert (split by expert parallelism)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def layer_tensors(m: ModelSpec) -> list[ParamTensor]:
    """The parameter tensors of one decoder layer, in module order."""
    h, q, kv, f = m.hidden_size, m.q_size, m.kv_size, m.intermediate_size
    out: list[ParamTensor] = []
    if m.fused_qkv:
        out.append(ParamTensor("qkv_proj.weight", (q + 2 * kv, h), "colwise", "q_proj"))
        if m.qkv_bias:
            out.append(ParamTensor("qkv_proj.bias", (q + 2 * kv,), "colwise"))
    else:
        for name, size in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out.append(ParamTensor(f"{name}.weight", (size, h), "colwise", name))
            if m.qkv_bias:
                out.append(ParamTensor(f"{name}.bias", (size,), "colwise"))
    if m.qk_norm == "head":  # Qwen3 / Gemma-3: an RMSNorm over each head's dims
        out += [ParamTensor("q_norm.weight", (m.head_dim,)), ParamTensor("k_norm.weight", (m.head_dim,))]
    elif m.qk_norm == "projection":  # OLMo-2: over the whole q and k projections
        out += [ParamTensor("q_norm.weight", (q,), "colwise"), ParamTensor("k_norm.weight", (kv,), "colwise")]
    out.append(ParamTensor("o_proj.weight", (h, q), "rowwise", "o_proj"))
    if m.o_bias:
        out.append(ParamTensor("o_proj.bias", (h,), "rowwise"))
    out.extend(_mlp_tensors(m))
    for i in range(m.norms_per_layer):
        out.append(ParamTensor(f"norm{i}.weight", (h,)))
        if m.norm_with_bias:
            out.append(ParamTensor(f"norm{i}.bias", (h,)))
    return out


def _mlp_tensors(m: ModelSpec) -> list[ParamTensor]:
    h, f = m.hidden_size, m.intermediate_size
    dense: list[ParamTensor] = []
    if m.mlp_gated and m.fused_gate_up:
        dense.append(ParamTensor("gate_up_proj.weight", (2 * f, h), "colwise", "gate_proj"))
    elif m.mlp_gated:
        dense.append(ParamTensor("gate_proj.weight", (f, h), "colwise", "gate_proj"))
        dense.append(ParamTensor("up_proj.weight", (f, h), "colwise", "up_proj"))
    else:
        dense.append(ParamTensor("up_proj.weight", (f, h), "colwise", "up_proj"))
    if m.mlp_bias:
        dense.extend(ParamTensor(f"{t.name[:-7]}.bias", (t.shape[0],), "colwise") for t in list(dense))
    dense.append(ParamTensor("down_proj.weight", (h, f), "rowwise", "down_proj"))
    if m.mlp_bias:
        dense.append(ParamTensor("down_proj.bias", (h,), "rowwise"))
    if not m.is_moe:
        return dense
    # transformers 5 stores experts as two 3-D tensors (MixtralExperts): dim 0 is the expert.
    e = m.num_experts
    return [ParamTensor("router.weight", (e, h)),
            ParamTensor("experts.gate_up_proj", (e, 2 * f, h), "colwise", expert=True),
            ParamTensor("experts.down_proj", (e, h, f), "rowwise", expert=True)]


def embedding_tensor(m: ModelSpec) -> ParamTensor:
    return ParamTensor("embed_tokens.weight", (m.vocab_size, m.hidden_size), "vocab")


def head_tensor(m: ModelSpec) -> ParamTensor | None:
    """The LM head weight, or None when it is tied to the embedding."""
    if m.tie_word_embeddings:
        return None
    return ParamTensor("lm_head.weight", (m.vocab_size, m.hidden_size), "vocab")


def final_norm_tensors(m: ModelSpec) -> list[ParamTensor]:
    out = [ParamTensor("norm.weight", (m.hidden_size,))]
    if m.norm_with_bias:
        out.append(ParamTensor("norm.bias", (m.hidden_size,)))
    return out


def tp_local_shape(t: ParamTensor, tp: int, layout: str, is_embedding_or_head: bool, which: str = "") -> tuple[int, ...]:
    """The local shape of `t` on one tensor-parallel rank (torch.chunk sizes: ceil, rank 0's share)."""
    if tp == 1:
        return t.shape
    if is_embedding_or_head:
        if layout == "layers" or (layout == "hf" and which == "embedding"):
            return t.shape
        return (_ceil_div(t.shape[0], tp),) + t.shape[1:]
    if t.tp == "colwise":
        return (_ceil_div(t.shape[0], tp),) + t.shape[1:]
    if t.tp == "rowwise" and len(t.shape) == 2:
        return (t.shape[0], _ceil_div(t.shape[1], tp))
    return t.shape


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
