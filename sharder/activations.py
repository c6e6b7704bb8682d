"""Activation bytes per token: what autograd saves in each block, tensor by tensor, as transformers runs it.

Each term names a tensor that autograd keeps for backward (SDPA, eager attention, training) or that is
alive at once in a no-grad forward (inference). The rules come from reading transformers' modeling code
and PyTorch's derivative formulas (mul saves only the operand whose partner needs a gradient; `.to()`,
`view`, `transpose`, `cat` and residual adds save nothing), and are checked by `sharder verify`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharder.model_spec import ModelSpec

FP32 = 4
LOSS_SCALARS = 8
"""nll_loss (mean) keeps the loss and its total weight, one fp32 scalar each."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Per-rank sizes of one decoder layer under tensor parallelism (t) and sequence parallelism."""

    h: int
    q: int
    kv: int
    heads: int
    f: int
    t: int
    sp: bool


def layer_shape(m: ModelSpec, tp: int, sp: bool) -> Shape:
    return Shape(h=m.hidden_size, q=m.q_size // tp, kv=m.kv_size // tp, heads=m.num_heads // tp,
                 f=m.intermediate_size // tp, t=tp, sp=sp)


def rmsnorm_saved(h: float, c: int, output_saved: bool = True) -> float:
    """Llama-style RMSNorm: x.to(fp32) (the input itself in fp32, else a copy) saved by pow and mul,
    rsqrt (1 fp32), the normalized product cast back (saved by `weight *`), and the output when a
    Linear consumes it. The residual stream is kept only through this fp32 input."""
    return FP32 * h + FP32 + c * h + (c * h if output_saved else 0)


def gemma_rmsnorm_saved(h: float, c: int, output_saved: bool) -> float:
    """Gemma's RMSNorm: fp32 input, rsqrt, the fp32 normalized tensor (saved by `* (1 + w)`),
    and the output cast back with type_as when a Linear consumes it."""
    return FP32 * h + FP32 + FP32 * h + (c * h if output_saved else 0)


def layernorm_saved(h: float, c: int, output_saved: bool = True) -> float:
    """nn.LayerNorm: mean and rstd (input dtype, one each); its input is counted by the caller."""
    return 2 * c + (c * h if output_saved else 0)


def autocast_norm_extra(m: ModelSpec, h: float, c: int, readers: int) -> float:
    """What a Llama-style RMSNorm keeps beyond `rmsnorm_saved` under torch.autocast: the residual stream
    is fp32, so the normalized product is kept in fp32 (not c), and every Linear that reads the fp32
    output makes and keeps its own c-byte cast (autocast caches casts of weights, not of activations)."""
    # Gemma keeps it in fp32 anyway; LayerNorm saves no normalized product
    normalized = 0 if (m.model_type == "gemma2" or m.norm_with_bias) else (FP32 - c) * h
    return normalized + (readers - 1) * c * h


def attention_readers(m: ModelSpec) -> int:
    return 1 if (m.fused_qkv or m.model_type == "falcon") else 3


def mlp_readers(m: ModelSpec) -> int:
    return 2 if (m.mlp_gated and not m.fused_gate_up and not m.is_moe) else 1


# the layer's Linears by role, under sharder.param_layout's names (a fused qkv is qkv_proj, a fused gate/up
# gate_up_proj, whatever transformers calls them)
ATTENTION_INPUTS = {"q_proj", "k_proj", "v_proj", "qkv_proj"}
ATTENTION_OUTPUTS = {"o_proj"}
MLP_INPUTS = {"gate_proj", "up_proj", "gate_up_proj"}
MLP_OUTPUTS = {"down_proj"}


def frozen_base_unsaved(m: ModelSpec, s: Shape, c: int, targets) -> float:
    """What full training saves per token that a frozen base model (LoRA) does not: a Linear whose weight is
    frozen keeps no input (only an adapted one does, through its lora_A), and a norm with a frozen weight
    keeps no normalized product. SiLU, the gated product, attention and the norms' inputs are unchanged."""
    targets = set(targets)
    out = 0.0
    if m.model_type == "gemma2":
        out += 4 * FP32 * s.h  # the fp32 normalized product of all four norms
    elif not m.norm_with_bias:
        out += 2 * c * s.h
    if m.qk_norm == "head":
        out += c * (s.q + s.kv)  # q_norm / k_norm: their normalized products
    if not targets & ATTENTION_INPUTS:
        out += c * s.h
    if not targets & MLP_INPUTS and not m.is_moe:
        out += c * s.h
    if not targets & ATTENTION_OUTPUTS and (m.fused_qkv or m.model_type == "falcon"):
        out += c * s.q  # o_proj's input copy
    if not targets & MLP_OUTPUTS and not m.is_moe:
        out += c * s.f  # down's input (the gated product, or the GELU output)
    return out


def frozen_edges_unsaved(m: ModelSpec, c: int, first: bool, last: bool, targets=()) -> float:
    """Per token, what a frozen base model (LoRA) does not save at its edges: the final norm's normalized
    product and its output (the frozen head keeps no input), and in the first layer the input norm's
    fp32 input and rstd (the frozen embedding's output needs no gradient). With a parallel residual
    (GPT-NeoX, Falcon) the first layer's LayerNorms save nothing, and without an adapted MLP input its
    whole MLP branch needs no gradient (GELU keeps no input)."""
    out = 0.0
    h = m.hidden_size
    if last:
        if m.model_type == "gemma2":
            out += FP32 * h + c * h
        elif not m.norm_with_bias:
            out += 2 * c * h
        else:
            out += c * h
    if first and not m.norm_with_bias:
        out += FP32 * h + FP32
    elif first:
        out += c * h + 2 * 2 * c
        if not set(targets) & MLP_INPUTS and not m.mlp_gated and not m.is_moe:
            out += c * m.intermediate_size
    return out


def decoder_layer_saved_per_token(m: ModelSpec, c: int, tp: int = 1, sp: bool = False,
                                  attention: str = "sdpa", seq: int = 0, lora_rank: int = 0,
                                  lora_targets: tuple[str, ...] = (), autocast: bool = False) -> float:
    """Bytes autograd keeps per token for one decoder layer in training (no checkpointing).

    `seq` matters only for eager attention (its scores are seq × seq per head). `autocast`: bf16-mixed
    under torch.autocast (fp32 parameters, fp32 residual stream); the layer's weight casts are counted by
    `autocast_weight_copies`.
    """
    s = layer_shape(m, tp, sp)
    split = s.t if sp else 1  # with SP the norms see 1/t of the tokens; their outputs are all-gathered
    gathered = c * s.h if sp else 0  # the all-gathered norm output, saved by the column Linears
    total = 0.0
    if m.model_type == "gemma2":
        total += 2 * (gemma_rmsnorm_saved(s.h, c, output_saved=not sp) / split + gathered)
        total += 2 * gemma_rmsnorm_saved(s.h, c, output_saved=False) / split  # post-attention, post-FFN
    elif m.norm_with_bias:  # GPT-NeoX / Falcon: parallel residual, both LayerNorms read the same input
        total += (c * s.h + 2 * layernorm_saved(s.h, c, output_saved=not sp)) / split + 2 * gathered
    else:
        total += 2 * (rmsnorm_saved(s.h, c, output_saved=not sp) / split + gathered)
    total += _attention_saved(m, s, c, attention, seq)
    if m.is_moe:
        k = m.experts_per_token
        total += c * m.num_experts + FP32 * m.num_experts  # router logits, fp32 softmax
        total += k * (c * s.h + 4 * c * s.f + c * s.h)     # gathered input, gate_up/act/product, weighted output
    elif m.mlp_gated:
        total += 4 * c * s.f  # gate (or fused gate_up: 2f), act(gate), up, act*up
    else:
        total += 2 * c * s.f  # up (saved by GELU), GELU output (saved by down)
    if lora_rank and lora_targets:
        total += c * lora_rank * len(lora_targets) - frozen_base_unsaved(m, s, c, lora_targets)
    if autocast and c != FP32 and not sp and lora_rank and lora_targets:
        # frozen norms keep no normalized product; only adapted Linears keep (their lora_A's) cast input
        for group in (ATTENTION_INPUTS, MLP_INPUTS):
            adapted = len(set(lora_targets) & group)
            total += (adapted - 1) * c * s.h if adapted else 0
        if m.norm_with_bias:
            total += (FP32 - c) * s.h + 2 * 2 * (FP32 - c)
    elif autocast and c != FP32 and not sp:
        total += autocast_norm_extra(m, s.h, c, attention_readers(m)) + autocast_norm_extra(m, s.h, c, mlp_readers(m))
        if m.norm_with_bias:  # the shared LayerNorm input is the fp32 residual; mean and rstd in fp32
            total += (FP32 - c) * s.h + 2 * 2 * (FP32 - c)
    return total


def _attention_saved(m: ModelSpec, s: Shape, c: int, attention: str, seq: int) -> float:
    """What attention keeps, by how each family builds q, k and v.

    - Llama-like: q/k after rotary are new (B, S, n, d)-ordered tensors, v is the projection output;
      SDPA's output shares that order, so o_proj reads it without a copy.
    - Phi-3 / GPT-NeoX: the fused qkv output stays alive through the v view; rotary ends in
      `torch.cat`, so q/k are (B, n, S, d)-contiguous and o_proj's input is a transposed copy.
    - Falcon (new decoder architecture): k and v are indexed out of the fused output and broadcast to
      every query head (copies), and o_proj's input is a copy.
    """
    heads_kv = s.kv // max(1, m.head_dim)
    qk_norm = 0.0
    if m.qk_norm == "head":  # Qwen3: RMSNorm over head_dim of q and k
        qk_norm = (FP32 + c) * (s.q + s.kv) + FP32 * (s.heads + heads_kv)
    copy_out = 0
    if m.model_type == "falcon":
        qkv = c * 3 * s.q
        copy_out = c * s.q
    elif m.fused_qkv:
        qkv = c * (s.q + 2 * s.kv) + c * (s.q + s.kv)
        copy_out = c * s.q
    else:
        qkv = c * (s.q + 2 * s.kv)
    if attention == "eager" or m.model_type == "gemma2":
        # eager: K and V repeated to every query head, scores (n × seq per token), softmax in fp32 cast
        # back (a copy unless fp32), optional tanh soft-capping, and o_proj's input as a copy
        if m.model_type != "falcon" and s.q != s.kv:
            qkv += c * 2 * (s.q - s.kv)
        scores = s.heads * seq
        softcap = m.hf_config.get("attn_logit_softcapping", 50.0 if m.model_type == "gemma2" else None)
        kept = FP32 * scores + (c * scores if c != FP32 else 0) + (c * scores if softcap else 0)
        return qkv + qk_norm + kept + c * s.q
    out = c * s.q + FP32 * s.heads  # SDPA output and log-sum-exp
    return qkv + qk_norm + out + copy_out


def attention_mask_bytes(m: ModelSpec, batch: int, seq: int) -> int:
    """Falcon passes SDPA an explicit fp32 (batch, 1, seq, seq) mask, built once per forward."""
    return FP32 * batch * seq * seq if m.model_type == "falcon" else 0


def layer_input_per_token(m: ModelSpec, c: int, tp: int = 1, sp: bool = False) -> float:
    """What a checkpointed layer keeps: its input hidden states."""
    return c * m.hidden_size / (tp if sp else 1)


def mlp_backward_transient_per_token(m: ModelSpec, c: int, tp: int = 1) -> float:
    """Gradients alive at once in the MLP's backward, beyond the saved tensors: the residual's
    gradient (h), and at the gated product's backward its incoming gradient and the two it makes
    (3f) while the product's own saved output (f) is already freed."""
    s = layer_shape(m, tp, False)
    k = m.experts_per_token if m.is_moe else 1
    if m.mlp_gated:
        return c * (s.h + 2 * k * s.f)
    return c * (s.h + s.f)


def layer_backward_end_per_token(m: ModelSpec, c: int, tp: int = 1, sp: bool = False) -> list[tuple[float, float]]:
    """(forward tensors, gradients) per token alive at the two candidate peaks that end a layer's backward.

    1. The input-gradient sum of the projections that read the input norm's output (q, k and v, or one
       fused qkv): the norm's saved tensors and its output, next to the residual's gradient and one
       gradient per reader.
    2. Inside the input norm's backward: only its fp32 input is left; RMSNorm computed in fp32 for a
       16-bit model holds five fp32 gradients (the cast-back, rstd and pow paths) next to one 16-bit
       gradient (the residual's); the fused LayerNorm kernel holds its gradient in and out.
    The input norm's weight gradient is counted by the caller (made in 2, not yet in 1).
    """
    h = m.hidden_size / (tp if sp else 1)
    readers = 1 if (m.fused_qkv or m.model_type == "falcon") else 3
    if m.norm_with_bias:
        saved = c * h + layernorm_saved(h, c, output_saved=True)
        return [(saved, c * h * (1 + readers)), (c * h + 2 * c, 3 * c * h)]
    if m.model_type == "gemma2":
        saved = gemma_rmsnorm_saved(h, c, output_saved=True)
    else:
        saved = rmsnorm_saved(h, c, output_saved=True)
    inside = 5 * FP32 * h + c * h if c != FP32 else 4 * FP32 * h
    return [(saved, c * h * (1 + readers)), (FP32 * h, inside)]


def head_saved_per_token(m: ModelSpec, c: int, vocab_local: int, sp: bool = False, tp: int = 1,
                         autocast: bool = False) -> float:
    """The final norm, the head's input and the fp32 log-softmax the loss keeps."""
    h, split = m.hidden_size, (tp if sp else 1)
    if autocast and c != FP32 and not sp:
        return (head_saved_per_token(m, c, vocab_local, sp, tp) + autocast_norm_extra(m, h, c, 1)
                + ((FP32 - c) * h if m.norm_with_bias else 0))
    gathered = c * h if sp else 0
    if m.model_type == "gemma2":
        total = gemma_rmsnorm_saved(h, c, output_saved=not sp) / split + gathered
    elif m.norm_with_bias:
        total = (c * h + layernorm_saved(h, c, output_saved=not sp)) / split + gathered
    else:
        total = rmsnorm_saved(h, c, output_saved=not sp) / split + gathered
    if m.final_logit_softcapping:
        total += c * vocab_local  # tanh output
    total += FP32 * vocab_local  # log_softmax output (fp32)
    return total


def norm_constant_bytes(m: ModelSpec, num_layers: int, has_final_norm: bool) -> int:
    """Gemma's `(1 + weight).float()` is a new fp32 tensor per norm, saved by the multiply."""
    if m.model_type != "gemma2":
        return 0
    return FP32 * m.hidden_size * (m.norms_per_layer * num_layers + (1 if has_final_norm else 0))


def loss_backward_temporaries_per_token(vocab_local: int, loss_parallel: bool = False) -> float:
    """nll_loss backward's gradient and log_softmax backward's result, both fp32, alive together.

    With loss_parallel (megatron TP layout) DTensor's distributed log-softmax/nll backward keeps a third
    fp32 logits-sized tensor plus per-token masks and targets (33 B per token, measured on two shapes)."""
    if loss_parallel:
        return 3 * FP32 * vocab_local + LOSS_PARALLEL_PER_TOKEN
    return 2 * FP32 * vocab_local


LOSS_PARALLEL_PER_TOKEN = 33
"""Per-token int64 target, masks and fp32 scalars of DTensor's loss_parallel backward."""
LOSS_PARALLEL_SAVED_PER_TOKEN = 8
"""loss_parallel's forward keeps the (masked, local) int64 target per token."""


def rotary_bytes(m: ModelSpec, seq: int, c: int) -> int:
    """cos and sin for one forward, (1, seq, head_dim) in the compute dtype, shared by every layer."""
    return 2 * seq * (m.rotary_dim or m.head_dim) * c


def inference_transient_per_token(m: ModelSpec, c: int, tp: int = 1) -> float:
    """No-grad working set per prompt token at the last decoder layer's MLP (the prefill peak):
    act(gate), up and their product (3f), next to four hidden-size tensors the Python frames still
    hold — the embedding output (LlamaModel keeps `inputs_embeds`), the layer's input (held by the
    caller), the post-attention residual and the norm output."""
    s = layer_shape(m, tp, False)
    k = m.experts_per_token if m.is_moe else 1
    mlp = k * (3 if m.mlp_gated else 2) * c * s.f
    hidden = (4 if m.num_layers > 1 else 3) * c * s.h
    return hidden + mlp


def inference_fixed_bytes(m: ModelSpec, batch: int, seq: int, c: int, vocab_parallel_embedding: bool) -> int:
    """Per-forward tensors besides the per-token ones: cos/sin, int64 position ids, the cache's scalar
    counters, and under tensor parallelism a second int64 copy of the input ids (the DTensor input
    handling of the embedding, seen in every TP layout)."""
    masked_ids = 8 * batch * seq if vocab_parallel_embedding else 0
    return rotary_bytes(m, seq, c) + 8 * seq + 16 + masked_ids


def eager_attention_prefill_bytes(m: ModelSpec, batch: int, seq: int, context: int, c: int, tp: int = 1) -> int:
    """Eager attention's prefill working set: scores (batch, heads, seq, context) in the compute dtype
    and their fp32 softmax, query, and K/V repeated to every head when grouped."""
    heads = m.num_heads // tp
    scores = batch * heads * seq * context * (c + FP32)
    repeat = 2 * batch * heads * context * m.head_dim * c if m.num_heads != m.num_kv_heads else 0
    return scores + repeat + batch * seq * (m.q_size // tp) * c + 3 * batch * seq * m.hidden_size * c
