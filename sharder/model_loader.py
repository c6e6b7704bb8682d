"""Load a model's architecture as a ModelSpec: a catalog name or alias, a config.json, or a model folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sharder import model_catalog
from sharder.errors import SharderInputError, closest_names
from sharder.model_spec import ModelSpec

# Families read from the config dict in pure Python (no torch, no transformers). Every default below is
# transformers 5's own default for a key the config.json leaves out; tests/test_models.py checks each family
# against the model transformers builds on the meta device, with full and with minimal configs.
_DEFAULTS: dict[str, dict] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "granite": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    tie_word_embeddings=False, sliding_window=4096),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    tie_word_embeddings=False, sliding_window=None, num_local_experts=8, num_experts_per_tok=2),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  tie_word_embeddings=False, sliding_window=4096, use_sliding_window=False, max_window_layers=28),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  tie_word_embeddings=False, attention_bias=False, sliding_window=4096, use_sliding_window=False,
                  max_window_layers=28),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768,
                      tie_word_embeddings=False, attention_bias=False, sliding_window=4096,
                      use_sliding_window=False, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                      decoder_sparse_step=1, mlp_only_layers=None),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
                  tie_word_embeddings=True, attention_bias=False),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                   tie_word_embeddings=True, attention_bias=False, sliding_window=4096,
                   final_logit_softcapping=30.0, layer_types=None),
    "olmo2": dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                  tie_word_embeddings=False, attention_bias=False),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=4096,
                 tie_word_embeddings=False, sliding_window=None),
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, intermediate_size=24576, num_hidden_layers=44,
                     num_attention_heads=64, max_position_embeddings=2048, tie_word_embeddings=False,
                     attention_bias=True),
    "falcon": dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                   num_kv_heads=None, max_position_embeddings=2048, tie_word_embeddings=True,
                   new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                   num_ln_in_parallel_attn=None, ffn_hidden_size=None),
}

FAST_FAMILIES: tuple[str, ...] = tuple(_DEFAULTS)
"""model_types read without torch or transformers."""

# model_types that are encoders (or encoder-decoders) although transformers may give them an LM head.
_NOT_DECODERS = {
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "distilbert", "albert", "electra", "deberta",
    "deberta-v2", "mpnet", "ernie", "modernbert", "nomic_bert", "eurobert", "megatron-bert", "roc_bert",
    "rembert", "esm", "t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "whisper", "longt5",
    "switch_transformers", "vit", "clip", "siglip",
}


# --- entry point ---------------------------------------------------------------------------------

def load_model(name_or_path: str) -> ModelSpec:
    """A ModelSpec from a catalog name or alias (any case), a config.json, or a folder holding one.

    Bad input raises SharderInputError with one line saying what is wrong and how to fix it.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise SharderInputError(
            "no model given: pass a catalog name (see `sharder models`), a config.json or a model folder")
    text = str(name_or_path).strip()
    canonical = model_catalog.resolve_name(text)
    if canonical is not None:
        return spec_from_hf_config(model_catalog.catalog_config(canonical), canonical)
    path = Path(os.path.expanduser(text))
    if path.exists():
        return spec_from_hf_config(read_config(path), str(path))
    close = _closest_catalog_names(text)
    hint = f"closest catalog names: {', '.join(close)}; " if close else ""
    if "/" in text or os.sep in text or text.endswith(".json"):
        raise SharderInputError(
            f"model {text!r}: no such file or folder, and not a catalog name (sharder downloads nothing: save the "
            f"model's config.json and pass its path); {hint}run `sharder models` for the catalog")
    raise SharderInputError(
        f"unknown model {text!r}: not a catalog name nor an existing path; {hint}run `sharder models` for the list")


def _closest_catalog_names(text: str) -> list[str]:
    choices = list(model_catalog.CATALOG) + list(model_catalog.ALIASES)
    found: list[str] = []
    for hit in closest_names(text, choices, n=6):
        canonical = model_catalog.resolve_name(hit) or hit
        if canonical not in found:
            found.append(canonical)
    return found[:3]


def read_config(path: str | os.PathLike) -> dict:
    """The config dict of a config.json file, or of the config.json inside a model folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SharderInputError(
                f"{path}: folder has no config.json; pass a Hugging Face model folder or the config.json itself")
        path = path / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SharderInputError(f"{path}: not a text file; pass the model's config.json") from None
    except OSError as exc:
        raise SharderInputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SharderInputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"pass a Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise SharderInputError(
            f"{path}: expected a JSON object (a Hugging Face config.json), got a {type(cfg).__name__}")
    return cfg


# --- pure-Python fast path -----------------------------------------------------------------------

def spec_from_hf_config(cfg: dict, name: str) -> ModelSpec:
    """ModelSpec from a Hugging Face config dict.

    Families in FAST_FAMILIES are read in pure Python; other decoder-only model_types transformers knows
    are built on the meta device and walked (`spec_from_transformers`, imports torch and transformers).
    """
    if not isinstance(cfg, dict):
        raise SharderInputError(f"model {name}: config must be a JSON object, got a {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SharderInputError(
            f"model {name}: config has no \"model_type\"; is this a Hugging Face config.json?")
    _reject_non_decoders(cfg, name, model_type)
    reader = _READERS.get(model_type)
    if reader is None:
        return spec_from_transformers(cfg, name)
    return reader(_Config(cfg, name, model_type))


def _reject_non_decoders(cfg: dict, name: str, model_type: str) -> None:
    archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)]
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    masked = any(a.endswith("ForMaskedLM") for a in archs)
    if cfg.get("is_encoder_decoder"):
        raise SharderInputError(
            f"model {name}: {model_type!r} is an encoder-decoder model; sharder plans decoder-only causal LMs "
            f"(Llama, Mistral, Qwen, Gemma, ...)")
    if model_type in _NOT_DECODERS or (masked and not causal):
        raise SharderInputError(
            f"model {name}: {model_type!r} is an encoder-only model; sharder plans decoder-only causal LMs "
            f"(Llama, Mistral, Qwen, Gemma, ...)")
    if "vision_config" in cfg or "audio_config" in cfg:
        raise SharderInputError(
            f"model {name}: {model_type!r} is a multimodal model; sharder plans the text decoder alone: "
            f"save its \"text_config\" as a config.json and pass that")


class _Config:
    """A config dict with transformers' defaults for its family and checked integer reads."""

    def __init__(self, cfg: dict, name: str, model_type: str):
        self.cfg, self.name, self.model_type = cfg, name, model_type
        self.defaults = _DEFAULTS[model_type]

    def get(self, key: str, default=None):
        if key in self.cfg:
            return self.cfg[key]
        return self.defaults.get(key, default)

    def int(self, key: str, default=None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SharderInputError(
                f"model {self.name}: config {key!r} must be a positive integer, got {value!r}")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self.get(key)
        return None if value is None else self.int(key)

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(self.get(key, default))

    def rope(self) -> dict:
        for key in ("rope_parameters", "rope_scaling"):
            value = self.cfg.get(key)
            if isinstance(value, dict) and value:
                return value
        return {}

    def head_dim(self, hidden: int, heads: int, *, key_honoured: bool = True) -> int:
        value = self.get("head_dim") if key_honoured else None
        if value is None:
            if hidden % heads:
                raise SharderInputError(
                    f"model {self.name}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
            return hidden // heads
        return self.int("head_dim")

    def kv_heads(self, heads: int) -> int:
        value = self.get("num_key_value_heads")
        return heads if value is None else self.int("num_key_value_heads")


def _common(c: _Config) -> dict:
    hidden, heads = c.int("hidden_size"), c.int("num_attention_heads")
    return dict(name=c.name, model_type=c.model_type, hidden_size=hidden, num_layers=c.int("num_hidden_layers"),
                num_heads=heads, vocab_size=c.int("vocab_size"),
                max_position_embeddings=c.int("max_position_embeddings"),
                tie_word_embeddings=c.flag("tie_word_embeddings"), hf_config=c.cfg)


def _rotary_dim(c: _Config, head_dim: int, *, default_factor: float = 1.0, always: bool = False) -> int | None:
    """Rotary dimensions: transformers' default RoPE honours partial_rotary_factor only in some families
    (`always`); the other RoPE types (llama3, yarn, ...) take it from rope_parameters."""
    rope = c.rope()
    if not always and rope.get("rope_type", rope.get("type", "default")) == "default":
        return None
    factor = rope.get("partial_rotary_factor", c.cfg.get("partial_rotary_factor", default_factor))
    dim = int(head_dim * float(factor))
    return None if dim == head_dim else dim


def _sliding(c: _Config, num_layers: int, mode: str) -> tuple[int | None, int]:
    """(window, layers using it). mode: "all" (Mistral, Phi-3), "qwen" (use_sliding_window and
    max_window_layers or layer_types), "types" (layer_types, Gemma-2 alternation by default)."""
    window = c.get("sliding_window")
    if mode == "qwen" and not c.flag("use_sliding_window"):
        window = None
    if not window:
        return None, 0
    window = c.int("sliding_window")
    types = c.cfg.get("layer_types")
    if mode == "all":
        count = num_layers
    elif types and mode in ("qwen", "types"):
        count = sum(1 for t in types[:num_layers] if t == "sliding_attention")
    elif mode == "qwen":
        count = max(0, num_layers - c.int("max_window_layers") if c.get("max_window_layers") else num_layers)
    else:  # Gemma-2 default: even layers slide
        count = (num_layers + 1) // 2
    return (window, count) if count else (None, 0)


def _read_llama_like(c: _Config) -> ModelSpec:
    """llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma, gemma2, granite, olmo2."""
    mt = c.model_type
    fields = _common(c)
    hidden, heads = fields["hidden_size"], fields["num_heads"]
    head_dim = c.head_dim(hidden, heads)
    attention_bias = c.flag("attention_bias")
    fields.update(num_kv_heads=c.kv_heads(heads), head_dim=head_dim, intermediate_size=c.int("intermediate_size"),
                  rotary_dim=_rotary_dim(c, head_dim))
    if mt in ("llama", "granite"):
        fields.update(qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=c.flag("mlp_bias"))
    elif mt in ("qwen3", "qwen3_moe", "gemma", "gemma2", "olmo2"):
        fields.update(qkv_bias=attention_bias, o_bias=attention_bias)
    elif mt == "qwen2":
        fields.update(qkv_bias=True)
    if mt in ("qwen3", "qwen3_moe"):
        fields.update(qk_norm="head")
    elif mt == "olmo2":
        fields.update(qk_norm="projection")
    if mt == "gemma2":
        fields.update(norms_per_layer=4, final_logit_softcapping=c.get("final_logit_softcapping"))
    if mt == "mixtral":
        key = "num_experts" if "num_experts" in c.cfg and "num_local_experts" not in c.cfg else "num_local_experts"
        fields.update(num_experts=c.int(key),
                      experts_per_token=c.int("num_experts_per_tok"))
    elif mt == "qwen3_moe":
        experts = c.get("num_experts") or 0
        only_dense = c.get("mlp_only_layers") or []
        if experts:
            if only_dense or c.get("decoder_sparse_step") != 1:
                raise SharderInputError(
                    f"model {c.name}: qwen3_moe with dense layers among the MoE ones (mlp_only_layers / "
                    f"decoder_sparse_step) is not supported; sharder needs every decoder layer alike")
            fields.update(num_experts=c.int("num_experts"), experts_per_token=c.int("num_experts_per_tok"),
                          intermediate_size=c.int("moe_intermediate_size"))
    mode = {"mistral": "all", "mixtral": "all", "qwen2": "qwen", "qwen3": "qwen", "gemma2": "types"}.get(mt)
    if mt == "qwen3_moe":
        mode = "all" if c.flag("use_sliding_window") else None
    if mode:
        window, count = _sliding(c, fields["num_layers"], mode)
        fields.update(sliding_window=window, sliding_window_layers=count)
    return ModelSpec(**fields)


def _read_phi3(c: _Config) -> ModelSpec:
    fields = _common(c)
    hidden, heads = fields["hidden_size"], fields["num_heads"]
    head_dim = c.head_dim(hidden, heads)
    window, count = _sliding(c, fields["num_layers"], "all")
    fields.update(num_kv_heads=c.kv_heads(heads), head_dim=head_dim, intermediate_size=c.int("intermediate_size"),
                  fused_qkv=True, fused_gate_up=True, sliding_window=window, sliding_window_layers=count,
                  rotary_dim=_rotary_dim(c, head_dim, always=True))
    return ModelSpec(**fields)


def _read_gpt_neox(c: _Config) -> ModelSpec:
    fields = _common(c)
    hidden, heads = fields["hidden_size"], fields["num_heads"]
    head_dim = c.head_dim(hidden, heads, key_honoured=False)
    bias = c.flag("attention_bias")
    rope = c.rope()
    factor = float(rope.get("partial_rotary_factor", c.cfg.get("rotary_pct", 0.25)))
    rotary = int(head_dim * factor)
    fields.update(num_kv_heads=heads, head_dim=head_dim, intermediate_size=c.int("intermediate_size"),
                  qkv_bias=bias, o_bias=bias, mlp_bias=True, mlp_gated=False, fused_qkv=True,
                  norm_with_bias=True, rotary_dim=None if rotary == head_dim else rotary)
    return ModelSpec(**fields)


def _read_falcon(c: _Config) -> ModelSpec:
    fields = _common(c)
    if "n_embed" in c.cfg and "hidden_size" not in c.cfg:  # old Falcon configs; FalconConfig accepts it
        fields["hidden_size"] = c.int("n_embed")
    hidden, heads = fields["hidden_size"], fields["num_heads"]
    head_dim = c.head_dim(hidden, heads, key_honoured=False)
    new_arch = c.flag("new_decoder_architecture")
    if new_arch:
        kv = heads if c.get("num_kv_heads") is None else c.int("num_kv_heads")
    else:
        kv = 1 if c.flag("multi_query", True) else heads
    num_ln = c.get("num_ln_in_parallel_attn")
    if num_ln is None and new_arch:
        num_ln = 2
    norms = 2 if not c.flag("parallel_attn", True) or num_ln == 2 else 1
    bias = c.flag("bias")
    ffn = c.get("ffn_hidden_size")
    fields.update(num_kv_heads=kv, head_dim=head_dim,
                  intermediate_size=4 * hidden if ffn is None else c.int("ffn_hidden_size"),
                  qkv_bias=bias, o_bias=bias, mlp_bias=bias, mlp_gated=False, fused_qkv=True,
                  norm_with_bias=True, norms_per_layer=norms)
    return ModelSpec(**fields)


_READERS = {
    **{mt: _read_llama_like for mt in ("llama", "granite", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe",
                                         "gemma", "gemma2", "olmo2")},
    "phi3": _read_phi3,
    "gpt_neox": _read_gpt_neox,
    "falcon": _read_falcon,
}
assert set(_READERS) == set(_DEFAULTS)


# --- generic path: build on the meta device and walk the modules ---------------------------------

def build_meta_model(cfg: dict, name: str = "model"):
    """(transformers config, model on the meta device) for a config dict. Imports torch and transformers."""
    model_type = cfg.get("model_type")
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        raise SharderInputError(
            f"model {name}: model_type {model_type!r} is not one sharder reads by itself "
            f"({', '.join(FAST_FAMILIES)}); install torch and transformers (pip install 'sharder[verify]') "
            f"to read it") from None
    if model_type not in CONFIG_MAPPING_NAMES:
        close = closest_names(model_type, list(CONFIG_MAPPING_NAMES))
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise SharderInputError(
            f"model {name}: model_type {model_type!r} is unknown to transformers {transformers.__version__}"
            f"{hint}; sharder does not run remote code")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SharderInputError(
            f"model {name}: {model_type!r} has no causal-LM model in transformers; sharder plans decoder-only "
            f"causal LMs")
    from transformers import CONFIG_MAPPING
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            config = CONFIG_MAPPING[model_type].from_dict(dict(cfg))
        except Exception as exc:  # noqa: BLE001 - any rejection by transformers is bad input
            raise SharderInputError(f"model {name}: transformers rejects this config: {_first_line(exc)}") from None
        if getattr(config, "is_encoder_decoder", False):
            raise SharderInputError(
                f"model {name}: {model_type!r} is an encoder-decoder model; sharder plans decoder-only causal LMs")
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception as exc:  # noqa: BLE001
            raise SharderInputError(
                f"model {name}: transformers cannot build {model_type!r} from this config: {_first_line(exc)}"
            ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return config, model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def spec_from_transformers(cfg: dict, name: str) -> ModelSpec:
    """ModelSpec of a decoder-only model_type sharder has no reader for: build it with transformers on the
    meta device and walk its modules. The spec's total_params() equals the model's parameter count, or
    this raises SharderInputError saying which part sharder cannot describe."""
    config, model = build_meta_model(cfg, name)
    return spec_from_meta_model(model, config, cfg, name)


_O_NAMES = {"o_proj", "out_proj", "dense", "c_proj", "wo", "o", "proj", "out"}


def spec_from_meta_model(model, config, cfg: dict, name: str) -> ModelSpec:
    """Walk a transformers causal LM (any device) into a ModelSpec; see spec_from_transformers."""
    from torch import nn

    mt = getattr(config, "model_type", cfg.get("model_type"))

    def fail(what: str) -> SharderInputError:
        return SharderInputError(
            f"model {name}: sharder cannot describe {mt!r} exactly ({what}); families it reads: "
            f"{', '.join(FAST_FAMILIES)}")

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    total = count(model)
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise fail("no token embedding found")
    vocab, hidden = emb.weight.shape
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    if head is not None and getattr(head, "bias", None) is not None:
        raise fail("its LM head has a bias")

    n_layers = getattr(config, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    matching = [m for m in lists if len(m) == n_layers] or lists
    if not matching:
        raise fail("no list of decoder layers found")
    layers = max(matching, key=count)
    per_layer = [count(layer) for layer in layers]
    if len(set(per_layer)) != 1:
        raise fail(f"its decoder layers are not all alike ({min(per_layer):,} to {max(per_layer):,} parameters)")
    layer = layers[0]

    def is_linear(m) -> bool:
        w = getattr(m, "weight", None)
        return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and w is not None and w.dim() == 2)

    def in_out(m) -> tuple[int, int]:
        if isinstance(m, nn.Linear):
            return m.in_features, m.out_features
        return m.weight.shape[0], m.weight.shape[1]  # GPT-2 Conv1D stores (in, out)

    def is_norm(m) -> bool:
        return "norm" in type(m).__name__.lower() and any(True for _ in m.parameters(recurse=False))

    children = dict(layer.named_children())
    attn_key = next((k for k, m in children.items() if ("attn" in k.lower() or "attention" in k.lower())
                     and not is_norm(m) and any(is_linear(x) for x in m.modules())), None)
    if attn_key is None:
        raise fail("no attention module in its decoder layer")
    attn = children[attn_key]
    heads = int(config.num_attention_heads)

    attn_linears = [(n, m) for n, m in attn.named_modules() if is_linear(m)]
    o_candidates = [(n, m) for n, m in attn_linears if n.split(".")[-1] in _O_NAMES]
    if len(o_candidates) != 1:
        o_candidates = [(n, m) for n, m in attn_linears if in_out(m)[1] == hidden][-1:]
    if not o_candidates:
        raise fail("no attention output projection found")
    o_name, o_lin = o_candidates[0]
    qkv = [m for n, m in attn_linears if n != o_name]
    q_size = in_out(o_lin)[0]
    if not qkv or q_size % heads:
        raise fail("unrecognised attention projections")
    head_dim = q_size // heads
    config_head_dim = getattr(config, "head_dim", None)
    if isinstance(config_head_dim, int) and config_head_dim != head_dim:
        raise fail(f"its attention output projection takes {q_size} features, not heads x head_dim = "
                   f"{heads} x {config_head_dim}")
    qkv_out = sum(in_out(m)[1] for m in qkv)
    kv_total = qkv_out - q_size
    if kv_total <= 0 or kv_total % (2 * head_dim):
        raise fail("unrecognised q/k/v projection shapes")
    kv_heads = kv_total // (2 * head_dim)
    qkv_bias = any(getattr(m, "bias", None) is not None for m in qkv)
    o_bias = getattr(o_lin, "bias", None) is not None

    qk_norm = None
    attn_norms = [m for m in attn.modules() if is_norm(m)]
    if attn_norms:
        sizes = sorted(m.weight.numel() for m in attn_norms if getattr(m, "weight", None) is not None)
        if sizes == [head_dim, head_dim]:
            qk_norm = "head"
        elif sizes == sorted([q_size, kv_heads * head_dim]):
            qk_norm = "projection"
        else:
            raise fail("unrecognised norms inside attention")
    in_attn = {id(m) for m in attn.modules()}
    layer_norms = [m for m in layer.modules() if is_norm(m) and id(m) not in in_attn]
    if not layer_norms:
        raise fail("no norm in its decoder layer")
    norm_with_bias = any(getattr(m, "bias", None) is not None for m in layer_norms)

    mlp_key = next((k for k in children if k != attn_key and not is_norm(children[k]) and count(children[k])), None)
    if mlp_key is None:
        raise fail("no MLP in its decoder layer")
    mlp = children[mlp_key]
    experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    moe = experts > 0 and (any(p.dim() == 3 for p in mlp.parameters())
                           or any(isinstance(m, nn.ModuleList) and len(m) == experts for m in mlp.modules()))
    fields = dict(name=name, model_type=mt, hidden_size=int(hidden), num_layers=len(layers), num_heads=heads,
                  num_kv_heads=int(kv_heads), head_dim=int(head_dim), vocab_size=int(vocab),
                  tie_word_embeddings=bool(tied), qkv_bias=qkv_bias, o_bias=o_bias,
                  fused_qkv=len(qkv) == 1, norm_with_bias=norm_with_bias, norms_per_layer=len(layer_norms),
                  qk_norm=qk_norm)
    if moe:
        ffn = int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size)
        per_expert = (count(mlp) - hidden * experts) // experts
        gated = per_expert in (3 * hidden * ffn, 3 * hidden * ffn + 2 * ffn + hidden)
        fields.update(intermediate_size=ffn, num_experts=experts, mlp_gated=gated,
                      mlp_bias=per_expert in (3 * hidden * ffn + 2 * ffn + hidden, 2 * hidden * ffn + ffn + hidden),
                      experts_per_token=int(getattr(config, "num_experts_per_tok", 0) or 0) or 1)
    else:
        mlp_linears = [m for m in mlp.modules() if is_linear(m)]
        down = [m for m in mlp_linears if in_out(m)[1] == hidden]
        ups = [m for m in mlp_linears if in_out(m)[0] == hidden]
        if len(down) != 1 or not ups:
            raise fail("unrecognised MLP projections")
        ffn = in_out(down[0])[0]
        up_out = sum(in_out(m)[1] for m in ups)
        if up_out not in (ffn, 2 * ffn):
            raise fail("unrecognised MLP projection shapes")
        fields.update(intermediate_size=int(ffn), mlp_gated=up_out == 2 * ffn,
                      fused_gate_up=len(ups) == 1 and up_out == 2 * ffn,
                      mlp_bias=any(getattr(m, "bias", None) is not None for m in mlp_linears))

    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if isinstance(window, int) and window > 0:
        sliding = sum(1 for t in types if t == "sliding_attention") if types else len(layers)
        if sliding:
            fields.update(sliding_window=window, sliding_window_layers=sliding)
    max_pos = getattr(config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and max_pos > 0:
        fields["max_position_embeddings"] = max_pos
    inv_freq = [b for n, b in model.named_buffers() if n.endswith("inv_freq") and "original" not in n]
    if inv_freq and 2 * inv_freq[0].numel() != head_dim:
        fields["rotary_dim"] = 2 * inv_freq[0].numel()
    softcap = getattr(config, "final_logit_softcapping", None)
    if isinstance(softcap, (int, float)) and not isinstance(softcap, bool):
        fields["final_logit_softcapping"] = float(softcap)
    fields["hf_config"] = cfg
    try:
        spec = ModelSpec(**fields)
    except SharderInputError as exc:
        raise fail(str(exc).removeprefix(f"model {name}: ")) from None

    if spec.layer_params() != per_layer[0]:
        raise fail(f"a decoder layer has {per_layer[0]:,} parameters, sharder's reading of it {spec.layer_params():,}")
    outside = total - emb.weight.numel() - (0 if tied or head is None else head.weight.numel()) - sum(per_layer)
    if head is None and not tied:
        raise fail("no LM head found")
    if outside != spec.norm_params():
        raise fail(f"{outside:,} parameters outside the embedding, head and decoder layers, where sharder "
                   f"expects one final norm of {spec.norm_params():,} (e.g. learned position embeddings)")
    if spec.total_params() != total:  # pragma: no cover - the checks above add up to this
        raise fail(f"the model has {total:,} parameters, sharder's reading {spec.total_params():,}")
    return spec
