"""Model catalog and loader: every ModelSpec counts exactly the parameters transformers builds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from sharder.errors import SharderInputError
from sharder.model_catalog import ALIASES, CATALOG, catalog_names, resolve_name
from sharder.model_loader import FAST_FAMILIES, load_model, spec_from_hf_config
from sharder.model_spec import ModelSpec

REQUIRED = [
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b", "llama-3.1-70b",
    "llama-3.1-405b", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b",
    "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "phi-3-mini", "gpt-neox-20b", "falcon-40b",
    "tiny-llama", "tiny-qwen2", "tiny-mixtral", "tiny-gemma2", "tiny-phi3",
]
SLOW_BUILD_S = 3.0  # a meta build slower than this is checked on 2 layers instead (per-layer exactness)


# --- helpers: transformers on the meta device ------------------------------------------------------

@pytest.fixture(scope="module")
def meta():
    """build(cfg) -> (config, model on meta, seconds); imports torch and transformers once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from sharder.model_loader import build_meta_model

    def build(cfg: dict, name: str = "test"):
        start = time.perf_counter()
        config, model = build_meta_model(cfg, name)
        return config, model, time.perf_counter() - start

    return build


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter: counted once


def rotary_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("inv_freq"))


def fields(spec: ModelSpec) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__ if f not in ("hf_config", "name")}


# --- the catalog ----------------------------------------------------------------------------------

def test_catalog_has_the_required_models():
    names = catalog_names()
    for name in REQUIRED:
        assert name in names
    real = catalog_names(include_tests=False)
    assert len(real) >= 18
    assert all(not n.startswith("tiny-") for n in real)
    for name, entry in CATALOG.items():
        assert name == name.lower() and " " not in name and "_" not in name
        assert isinstance(entry["description"], str) and "\n" not in entry["description"]
        assert entry["config"]["model_type"]
        assert entry["test"] == name.startswith("tiny-")
        assert entry["test"] == entry["description"].startswith("[test]")
        assert entry["test"] or entry["hf_id"].count("/") == 1


def test_aliases_resolve():
    for alias, target in ALIASES.items():
        assert target in CATALOG, alias
        assert alias not in CATALOG
    assert load_model("llama-70b") == load_model("llama-2-70b")
    assert load_model("llama2-70b").name == "llama-2-70b"
    assert load_model("llama-405b").name == "llama-3.1-405b"
    assert load_model("  LLaMA-2-70B ").name == "llama-2-70b"
    assert load_model("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert resolve_name("no-such-model") is None


def test_catalog_configs_are_not_shared():
    spec = load_model("llama-2-7b")
    spec.hf_config["num_hidden_layers"] = 1
    assert CATALOG["llama-2-7b"]["config"]["num_hidden_layers"] == 32
    assert load_model("llama-2-7b").hf_config == CATALOG["llama-2-7b"]["config"]


# --- exact counts ---------------------------------------------------------------------------------

def test_llama_2_counts():
    spec = load_model("llama-2-70b")
    assert spec.total_params() == 68_976_648_192
    assert spec.embedding_params() == spec.head_params() == 262_144_000
    assert spec.layer_params() == 855_654_400
    assert spec.norm_params() == 8_192
    assert spec.rotary_buffer_bytes() == 2 * 256  # inv_freq and original_inv_freq
    assert load_model("llama-2-7b").total_params() == 6_738_415_616
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 2
    assert kv == 327_680


def test_llama_2_70b_full_size_on_meta(meta):
    spec = load_model("llama-2-70b")
    _, model, _ = meta(spec.hf_config)
    assert n_params(model) == spec.total_params() == 68_976_648_192


@pytest.mark.parametrize("name", catalog_names())
def test_catalog_model_matches_transformers(name, meta):
    """Total, per-part and buffer counts equal the meta model's; the generic walker reads the same spec."""
    from sharder.model_loader import spec_from_meta_model

    spec = load_model(name)
    config, model, seconds = meta(spec.hf_config, name)
    if seconds > SLOW_BUILD_S:  # too slow for the everyday suite: check the same layers on 2 of them
        spec = spec.with_layers(2)
        config, model, _ = meta(spec.hf_config, name)
    assert n_params(model) == spec.total_params()
    assert model.get_input_embeddings().weight.numel() == spec.embedding_params()
    head = model.get_output_embeddings()
    assert (head.weight is model.get_input_embeddings().weight) == spec.tie_word_embeddings
    assert rotary_bytes(model) == spec.rotary_buffer_bytes()
    walked = spec_from_meta_model(model, config, spec.hf_config, name)
    assert fields(walked) == fields(spec)


@pytest.mark.parametrize("name", catalog_names())
def test_with_layers_matches_transformers(name, meta):
    spec = load_model(name)
    for layers in (1, 3):
        small = spec.with_layers(layers)
        assert small.num_layers == layers
        assert small.total_params() == (spec.embedding_params() + layers * spec.layer_params()
                                        + spec.norm_params() + spec.head_params())
        assert fields(spec_from_hf_config(small.hf_config, name)) == fields(small)
    _, model, _ = meta(spec.with_layers(3).hf_config, name)
    assert n_params(model) == spec.with_layers(3).total_params()


def test_with_layers_sliding_windows():
    gemma = load_model("gemma-2-9b")
    assert gemma.sliding_window_layers == 21
    assert gemma.with_layers(3).sliding_window_layers == 2
    assert gemma.with_layers(3).hf_config.get("layer_types") is None  # the public config lists no types
    typed = spec_from_hf_config({**gemma.hf_config, "layer_types": ["sliding_attention", "full_attention"] * 21},
                                "typed")
    grown = typed.with_layers(50)
    assert grown.hf_config["layer_types"][:4] == ["sliding_attention", "full_attention"] * 2
    assert len(grown.hf_config["layer_types"]) == 50 and grown.sliding_window_layers == 25
    assert load_model("mistral-7b").with_layers(4).sliding_window_layers == 4
    assert load_model("tiny-llama").with_layers(40).sliding_window_layers == 0
    qwen = spec_from_hf_config({**CATALOG["tiny-qwen2"]["config"], "use_sliding_window": True,
                                "sliding_window": 32, "max_window_layers": 1}, "q")
    assert (qwen.sliding_window, qwen.sliding_window_layers) == (32, 1)
    assert qwen.with_layers(3).sliding_window_layers == 2
    bare = spec_from_hf_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                "num_attention_heads": 4, "vocab_size": 256}, "bare")
    assert bare.num_layers == 32 and bare.with_layers(2).hf_config["num_hidden_layers"] == 2
    with pytest.raises(SharderInputError):
        bare.with_layers(0)


def test_active_params_per_token():
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.active_params_per_token() == 12_879_925_248
    assert mixtral.total_params() == 46_702_792_704
    dense = load_model("llama-3-8b")
    assert dense.active_params_per_token() == dense.total_params()
    tied = spec_from_hf_config({**CATALOG["tiny-mixtral"]["config"], "tie_word_embeddings": True}, "tied-moe")
    unused = (tied.num_experts - tied.experts_per_token) * tied.dense_mlp_params() * tied.num_layers
    assert tied.active_params_per_token() == tied.total_params() - unused  # the tied head is not counted twice


# --- transformers' defaults, and config variants the fast path reads ------------------------------

@pytest.mark.parametrize("model_type", FAST_FAMILIES)
def test_fast_path_defaults_match_transformers(model_type, meta):
    """A config that leaves everything to transformers' defaults (2 layers, to stay quick)."""
    from sharder.model_loader import spec_from_meta_model

    cfg = {"model_type": model_type, "num_hidden_layers": 2}
    spec = spec_from_hf_config(cfg, model_type)
    config, model, _ = meta(cfg)
    assert n_params(model) == spec.total_params()
    assert rotary_bytes(model) == spec.rotary_buffer_bytes()
    assert fields(spec_from_meta_model(model, config, cfg, model_type)) == fields(spec)


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 256}
VARIANTS = {
    "llama-biases-head-dim": {"model_type": "llama", **TINY, "attention_bias": True, "mlp_bias": True,
                              "head_dim": 32, "tie_word_embeddings": True},
    "llama-yarn-partial": {"model_type": "llama", **TINY, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5}},
    "granite": {"model_type": "granite", **TINY, "attention_bias": True},
    "mistral-head-dim-no-window": {"model_type": "mistral", **TINY, "head_dim": 24, "sliding_window": None},
    "mixtral-num-experts-key": {"model_type": "mixtral", **TINY, "num_experts": 3, "num_experts_per_tok": 1},
    "qwen2-sliding": {"model_type": "qwen2", **TINY, "use_sliding_window": True, "sliding_window": 16,
                      "max_window_layers": 1, "num_hidden_layers": 3},
    "qwen3-bias": {"model_type": "qwen3", **TINY, "attention_bias": True, "head_dim": 8},
    "qwen3-moe": {"model_type": "qwen3_moe", **TINY, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "head_dim": 16, "use_sliding_window": True, "sliding_window": 8},
    "qwen3-moe-dense": {"model_type": "qwen3_moe", **TINY, "num_experts": 0, "head_dim": 16},
    "gemma": {"model_type": "gemma", **TINY, "head_dim": 8},
    "gemma2-types": {"model_type": "gemma2", **TINY, "num_hidden_layers": 3, "head_dim": 16,
                     "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]},
    "gemma2-no-window": {"model_type": "gemma2", **TINY, "sliding_window": None, "final_logit_softcapping": None},
    "olmo2": {"model_type": "olmo2", **TINY, "tie_word_embeddings": True},
    "phi3-partial-window": {"model_type": "phi3", **TINY, "pad_token_id": 0, "partial_rotary_factor": 0.5, "sliding_window": 32},
    "phi3-longrope": {"model_type": "phi3", **TINY, "pad_token_id": 0, "original_max_position_embeddings": 128, "rope_scaling": {
        "type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}},
    "gpt-neox-no-bias-half-rotary": {"model_type": "gpt_neox", **TINY, "attention_bias": False,
                                     "rotary_pct": 0.5, "tie_word_embeddings": True},
    "falcon-7b-style": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 256,
                        "num_hidden_layers": 2, "multi_query": True, "parallel_attn": True, "bias": True},
    "falcon-sequential": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
                          "vocab_size": 256, "num_hidden_layers": 2, "multi_query": False,
                          "parallel_attn": False, "ffn_hidden_size": 96, "tie_word_embeddings": False},
    "falcon-new-one-norm": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
                            "vocab_size": 256, "num_hidden_layers": 2, "new_decoder_architecture": True,
                            "num_ln_in_parallel_attn": 1, "bias": True},
    "falcon-n-embed": {"model_type": "falcon", "n_embed": 64, "num_attention_heads": 4, "vocab_size": 256,
                       "num_hidden_layers": 2},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_path_variants_match_transformers(variant, meta):
    from sharder.model_loader import spec_from_meta_model

    cfg = VARIANTS[variant]
    spec = spec_from_hf_config(cfg, variant)
    config, model, _ = meta(cfg)
    assert n_params(model) == spec.total_params()
    assert rotary_bytes(model) == spec.rotary_buffer_bytes()
    assert fields(spec_from_meta_model(model, config, cfg, variant)) == fields(spec)


def test_variant_details():
    assert spec_from_hf_config(VARIANTS["qwen3-moe"], "m").num_experts == 4
    assert spec_from_hf_config(VARIANTS["qwen3-moe-dense"], "d").num_experts == 0
    assert spec_from_hf_config(VARIANTS["gemma2-types"], "g").sliding_window_layers == 2
    assert spec_from_hf_config(VARIANTS["gemma2-no-window"], "g").sliding_window is None
    assert spec_from_hf_config(VARIANTS["phi3-partial-window"], "p").rotary_dim == 8
    assert spec_from_hf_config(VARIANTS["falcon-sequential"], "f").norms_per_layer == 2
    assert spec_from_hf_config(VARIANTS["falcon-new-one-norm"], "f").norms_per_layer == 1
    assert spec_from_hf_config(VARIANTS["falcon-7b-style"], "f").num_kv_heads == 1
    neox = load_model("gpt-neox-20b")
    assert (neox.rotary_dim, neox.fused_qkv, neox.qkv_bias, neox.o_bias, neox.mlp_bias, neox.mlp_gated,
            neox.norm_with_bias, neox.tie_word_embeddings) == (24, True, True, True, True, False, True, False)
    falcon = load_model("falcon-40b")
    assert (falcon.num_kv_heads, falcon.norms_per_layer, falcon.norm_with_bias, falcon.qkv_bias,
            falcon.tie_word_embeddings, falcon.intermediate_size) == (8, 2, True, False, True, 32768)
    gemma = load_model("gemma-2-2b")
    assert (gemma.head_dim, gemma.norms_per_layer, gemma.tie_word_embeddings, gemma.final_logit_softcapping,
            gemma.sliding_window, gemma.sliding_window_layers) == (256, 4, True, 30.0, 4096, 13)
    phi = load_model("phi-3-mini")
    assert phi.fused_qkv and phi.fused_gate_up and phi.sliding_window == 2047
    assert load_model("mistral-7b").sliding_window_layers == 32
    qwen = load_model("qwen2.5-0.5b")
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings and qwen.sliding_window is None
    assert load_model("qwen3-8b").qk_norm == "head"


# --- config.json files and folders ----------------------------------------------------------------

def test_config_json_file_and_folder(tmp_path):
    cfg = CATALOG["llama-3-8b"]["config"]
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    from_file = load_model(str(folder / "config.json"))
    from_folder = load_model(str(folder))
    assert fields(from_file) == fields(from_folder) == fields(load_model("llama-3-8b"))
    assert from_file.name == str(folder / "config.json") and from_folder.name == str(folder)
    assert from_folder.hf_config == cfg
    other = tmp_path / "my.json"
    other.write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    assert load_model(other).num_layers == 2  # a PathLike works too


def test_generic_walker_family_from_file(tmp_path, meta):
    """model_types without a pure-Python reader go through transformers and must still count exactly."""
    for cfg in (
        {"model_type": "stablelm", **TINY, "use_qkv_bias": True},
        {"model_type": "starcoder2", **TINY},
        {"model_type": "gemma3_text", **TINY, "head_dim": 16, "num_hidden_layers": 6},
        {"model_type": "cohere", **TINY},
    ):
        path = tmp_path / f"{cfg['model_type']}.json"
        path.write_text(json.dumps(cfg))
        spec = load_model(str(path))
        assert cfg["model_type"] not in FAST_FAMILIES
        _, model, _ = meta(cfg)
        assert spec.total_params() == n_params(model), cfg["model_type"]
        assert spec.hf_config == cfg
    gemma3 = load_model(str(tmp_path / "gemma3_text.json"))
    assert gemma3.qk_norm == "head" and gemma3.norms_per_layer == 4 and gemma3.sliding_window_layers == 5
    starcoder = load_model(str(tmp_path / "starcoder2.json"))
    assert starcoder.norm_with_bias and starcoder.mlp_bias and not starcoder.mlp_gated and starcoder.o_bias


@pytest.mark.parametrize("cfg, words", [
    ({"model_type": "olmo", **TINY}, "no norm"),  # LayerNorm without weights
    ({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256}, "position"),
    ({"model_type": "qwen2_moe", **TINY, "num_experts": 4, "moe_intermediate_size": 32}, "decoder layer"),
])
def test_generic_walker_refuses_what_it_cannot_count(cfg, words, meta):
    with pytest.raises(SharderInputError) as err:
        spec_from_hf_config(cfg, "x")
    message = str(err.value)
    assert "\n" not in message and "cannot describe" in message and words in message


# --- bad input: one clear line each ---------------------------------------------------------------

def one_line_error(arg) -> str:
    with pytest.raises(SharderInputError) as err:
        load_model(arg)
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_unknown_name_lists_close_names():
    message = one_line_error("llama-2-70")
    assert "llama-2-70b" in message and "sharder models" in message
    message = one_line_error("mixtrall-8x7b")
    assert "mixtral-8x7b" in message
    message = one_line_error("qwen-72b")
    assert "qwen2.5-72b" in message
    message = one_line_error("someorg/some-model")
    assert "config.json" in message and "sharder models" in message
    one_line_error("")


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama", "hidden_size": 4096,,}')
    assert "not valid JSON" in one_line_error(str(bad)) and "line 1" in one_line_error(str(bad))
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    assert "no config.json" in one_line_error(str(empty_folder))
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    assert "JSON object" in one_line_error(str(array))
    no_type = tmp_path / "no_type.json"
    no_type.write_text(json.dumps({"hidden_size": 64}))
    assert "model_type" in one_line_error(str(no_type))
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    one_line_error(str(binary))
    assert "no such file" in one_line_error(str(tmp_path / "missing" / "config.json"))


def test_bad_architectures(tmp_path):
    cases = {
        "bert": ({"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 768}, "encoder-only"),
        "t5": ({"model_type": "t5", "is_encoder_decoder": True, "d_model": 512}, "encoder-decoder"),
        "masked": ({"model_type": "newthing", "architectures": ["NewThingForMaskedLM"]}, "encoder-only"),
        "llava": ({"model_type": "llava", "vision_config": {}, "text_config": {}}, "multimodal"),
        "bad-number": ({**CATALOG["tiny-llama"]["config"], "hidden_size": "64"}, "hidden_size"),
        "bad-heads": ({**CATALOG["tiny-llama"]["config"], "num_key_value_heads": 3}, "num_kv_heads"),
    }
    for label, (cfg, words) in cases.items():
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(cfg))
        assert words in one_line_error(str(path)), label


def test_unknown_model_type(tmp_path, meta):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llamma", **TINY}))
    message = one_line_error(str(tmp_path))
    assert "unknown to transformers" in message and "llama" in message


# --- the planning path stays light ----------------------------------------------------------------

def test_loading_a_catalog_model_imports_no_heavy_modules(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CATALOG["mixtral-8x7b"]["config"]))
    code = (
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        "from sharder.model_loader import load_model\n"
        "spec = load_model('llama-2-70b')\n"
        f"load_model({str(path)!r})\n"
        "seconds = time.perf_counter() - start\n"
        "heavy = [m for m in ('torch', 'transformers', 'networkx', 'ray') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'seconds': seconds, 'params': spec.total_params()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert result["params"] == 68_976_648_192
    assert result["seconds"] < 0.5
