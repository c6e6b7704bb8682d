"""ModelSpec: the architecture numbers of a decoder-only LLM, and its exact parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field, asdict

from sharder.errors import SharderInputError


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture of a decoder-only transformer, as its Hugging Face config.json states it.

    Every count the cost model needs derives from these fields; nothing here holds weights.
    """

    name: str
    """Catalog name (lower case, hyphens) or the path the spec was read from."""
    model_type: str
    """transformers' `model_type` (llama, mistral, mixtral, qwen2, gemma2, phi3, gpt_neox, falcon)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    """Bias on the q/k/v projections (Qwen2, GPT-NeoX)."""
    o_bias: bool = False
    """Bias on the attention output projection (GPT-NeoX)."""
    mlp_bias: bool = False
    """Biases on the MLP projections (GPT-NeoX)."""
    mlp_gated: bool = True
    """SwiGLU/GeGLU with gate, up and down projections; False: up and down only (GPT-NeoX, Falcon)."""
    fused_qkv: bool = False
    """One qkv projection instead of q, k and v (Phi-3, GPT-NeoX, Falcon)."""
    fused_gate_up: bool = False
    """One gate_up projection instead of gate and up (Phi-3)."""
    norm_with_bias: bool = False
    """LayerNorm with a bias (GPT-NeoX, Falcon) instead of RMSNorm (weight only)."""
    norms_per_layer: int = 2
    """Norm modules per decoder layer (Gemma-2 has four)."""
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for a dense MLP."""
    experts_per_token: int = 0
    sliding_window: int | None = None
    """Window of sliding-window attention layers, in tokens; None for full attention everywhere."""
    sliding_window_layers: int = 0
    """How many of the layers use the sliding window (Gemma-2: every other one; Mistral v0.1: all)."""
    max_position_embeddings: int = 4096
    rotary_dim: int | None = None
    """Dimensions that get rotary embedding (partial rotary in GPT-NeoX, Phi); None: head_dim."""
    final_logit_softcapping: float | None = None
    """Gemma-2 caps its logits with tanh, which keeps one more (batch, seq, vocab) tensor in training."""
    qk_norm: str | None = None
    """RMSNorm on queries and keys inside attention: "head" (one over head_dim for q and one for k:
    Qwen3, Gemma-3), "projection" (over the whole q and k projections: OLMo-2); None: none."""
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)
    """The config.json dict the spec came from (for building the model with transformers)."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "norms_per_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SharderInputError(f"model {self.name}: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise SharderInputError(
                f"model {self.name}: num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.qk_norm not in (None, "head", "projection"):
            raise SharderInputError(
                f"model {self.name}: qk_norm must be None, 'head' or 'projection', got {self.qk_norm!r}")
        if self.num_experts and not 0 < self.experts_per_token <= self.num_experts:
            raise SharderInputError(
                f"model {self.name}: experts_per_token must be 1..{self.num_experts}, got {self.experts_per_token}")

    # --- parameter counts, exact, matching transformers' modules ---------------------------------
    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def attention_params(self) -> int:
        h = self.hidden_size
        qkv_out = self.q_size + 2 * self.kv_size
        bias = qkv_out if self.qkv_bias else 0
        o_bias = h if self.o_bias else 0
        return h * qkv_out + bias + self.q_size * h + o_bias + self.qk_norm_params()

    def qk_norm_params(self) -> int:
        if self.qk_norm == "head":
            return 2 * self.head_dim
        if self.qk_norm == "projection":
            return self.q_size + self.kv_size
        return 0

    def dense_mlp_params(self) -> int:
        h, f = self.hidden_size, self.intermediate_size
        if self.mlp_gated:
            return 3 * h * f + ((2 * f + h) if self.mlp_bias else 0)
        return 2 * h * f + ((f + h) if self.mlp_bias else 0)

    def router_params(self) -> int:
        return self.hidden_size * self.num_experts if self.is_moe else 0

    def mlp_params(self) -> int:
        """Dense MLP, or every expert plus the router for a MoE layer."""
        if self.is_moe:
            return self.num_experts * self.dense_mlp_params() + self.router_params()
        return self.dense_mlp_params()

    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm_with_bias else 1)

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + self.norms_per_layer * self.norm_params()

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self) -> int:
        """The LM head's own parameters; 0 when tied to the embedding."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        return (self.embedding_params() + self.num_layers * self.layer_params()
                + self.norm_params() + self.head_params())

    def active_params_per_token(self) -> int:
        """Parameters one token touches (MoE: only its experts)."""
        if not self.is_moe:
            return self.total_params()
        per_layer = (self.attention_params() + self.router_params()
                     + self.experts_per_token * self.dense_mlp_params()
                     + self.norms_per_layer * self.norm_params())
        return self.embedding_params() + self.num_layers * per_layer + self.norm_params() + self.head_params()

    def rotary_buffer_bytes(self) -> int:
        """The rotary embedding's fp32 buffers: transformers 5 registers `inv_freq` and a copy,
        `original_inv_freq`, each of rotary_dim / 2 floats (non-persistent; not in the checkpoint)."""
        return 2 * 4 * ((self.rotary_dim or self.head_dim) // 2)

    def with_layers(self, num_layers: int) -> "ModelSpec":
        """The same architecture with another depth (for quick checks: `--layers N`).

        hf_config follows: its layer count is set (added when the config left it to the default)
        and a per-layer `layer_types` list is cut, or repeated periodically when growing.
        """
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise SharderInputError(f"model {self.name}: --layers must be a positive integer, got {num_layers!r}")
        cfg = dict(self.hf_config)
        keys = [key for key in ("num_hidden_layers", "n_layer", "num_layers") if key in cfg]
        for key in keys or ["num_hidden_layers"]:
            cfg[key] = num_layers
        types = cfg.get("layer_types")
        if types:
            cfg["layer_types"] = [types[i % len(types)] for i in range(num_layers)]
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        fields.update(num_layers=num_layers, hf_config=cfg,
                      sliding_window_layers=_sliding_layers_in(self, num_layers, cfg))
        return ModelSpec(**fields)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("hf_config")
        return data


def _sliding_layers_in(spec: ModelSpec, num_layers: int, cfg: dict) -> int:
    """How many of the first `num_layers` layers slide, following the spec's own pattern."""
    if not spec.sliding_window_layers:
        return 0
    types = cfg.get("layer_types")
    if types:  # Gemma-2 and any config that lists its layers
        return sum(1 for t in types[:num_layers] if t == "sliding_attention")
    if spec.sliding_window_layers == spec.num_layers:  # Mistral v0.1, Phi-3: every layer
        return num_layers
    if isinstance(cfg.get("max_window_layers"), int):  # Qwen2/Qwen3: layers from max_window_layers on
        return max(0, num_layers - cfg["max_window_layers"])
    return (num_layers + 1) // 2  # alternating, even layers slide (Gemma-2's default)
