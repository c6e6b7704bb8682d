"""Catalog of real decoder-only LLMs (and tiny test models), each kept as its public Hugging Face config.json."""

from __future__ import annotations

import copy

# Every entry: "config" is the architecture part of the model's public config.json on the Hugging Face
# Hub, written out in full so that transformers can build the model from it (`verify`) and sharder can
# read it without transformers (`plan`). "hf_id" names the repository the numbers come from,
# "description" is one line for `sharder models`, and "test": True marks tiny models that exist only
# for tests and quick simulations (no checkpoint anywhere).
#
# Keys are kept as the public files spell them (rope_theta / rope_scaling, rotary_pct, ...);
# transformers 5 converts them to `rope_parameters` itself.

_LLAMA2_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 4096,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 32000,
}

_LLAMA3_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 8192,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

_LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

_LLAMA31_BASE = {**_LLAMA3_BASE, "max_position_embeddings": 131072, "mlp_bias": False,
                 "rope_scaling": _LLAMA31_ROPE}

_MIXTRAL_BASE = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "num_experts_per_tok": 2,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 32000,
}

_QWEN25_BASE = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
}

_QWEN3_BASE = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

_GEMMA2_BASE = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
    "max_position_embeddings": 8192,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 256000,
}

_TINY = {  # shared shape of the test models: hidden 64, 2 layers, 4 heads, 2 KV heads, FFN 128, vocab 256
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "initializer_range": 0.02,
    "use_cache": True,
}


def _entry(hf_id: str, description: str, config: dict, test: bool = False) -> dict:
    return {"hf_id": hf_id, "description": description, "test": test, "config": config}


CATALOG: dict[str, dict] = {
    # --- Llama 2 -------------------------------------------------------------------------------
    "llama-2-7b": _entry(
        "meta-llama/Llama-2-7b-hf", "Llama 2 7B: 32 layers, MHA (32 KV heads), 4K context",
        {**_LLAMA2_BASE, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
         "num_hidden_layers": 32, "num_key_value_heads": 32}),
    "llama-2-13b": _entry(
        "meta-llama/Llama-2-13b-hf", "Llama 2 13B: 40 layers, MHA (40 KV heads), 4K context",
        {**_LLAMA2_BASE, "hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
         "num_hidden_layers": 40, "num_key_value_heads": 40}),
    "llama-2-70b": _entry(
        "meta-llama/Llama-2-70b-hf", "Llama 2 70B: 80 layers, GQA (64 heads, 8 KV heads), 4K context",
        {**_LLAMA2_BASE, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
         "num_hidden_layers": 80, "num_key_value_heads": 8}),
    # --- Llama 3 / 3.1 / 3.2 -------------------------------------------------------------------
    "llama-3-8b": _entry(
        "meta-llama/Meta-Llama-3-8B", "Llama 3 8B: 32 layers, GQA 32/8, 128K vocabulary, 8K context",
        {**_LLAMA3_BASE, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
         "num_hidden_layers": 32, "num_key_value_heads": 8}),
    "llama-3-70b": _entry(
        "meta-llama/Meta-Llama-3-70B", "Llama 3 70B: 80 layers, GQA 64/8, 128K vocabulary, 8K context",
        {**_LLAMA3_BASE, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
         "num_hidden_layers": 80, "num_key_value_heads": 8}),
    "llama-3.1-8b": _entry(
        "meta-llama/Llama-3.1-8B", "Llama 3.1 8B: 32 layers, GQA 32/8, 128K context (llama3 RoPE scaling)",
        {**_LLAMA31_BASE, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
         "num_hidden_layers": 32, "num_key_value_heads": 8}),
    "llama-3.1-70b": _entry(
        "meta-llama/Llama-3.1-70B", "Llama 3.1 70B: 80 layers, GQA 64/8, 128K context",
        {**_LLAMA31_BASE, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
         "num_hidden_layers": 80, "num_key_value_heads": 8}),
    "llama-3.1-405b": _entry(
        "meta-llama/Llama-3.1-405B", "Llama 3.1 405B: 126 layers, GQA 128/8, hidden 16384, 128K context",
        {**_LLAMA31_BASE, "hidden_size": 16384, "intermediate_size": 53248, "num_attention_heads": 128,
         "num_hidden_layers": 126, "num_key_value_heads": 8}),
    "llama-3.2-1b": _entry(
        "meta-llama/Llama-3.2-1B", "Llama 3.2 1B: 16 layers, GQA 32/8, tied embeddings, 128K context",
        {**_LLAMA31_BASE, "head_dim": 64, "hidden_size": 2048, "intermediate_size": 8192,
         "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
         "rope_scaling": {**_LLAMA31_ROPE, "factor": 32.0}, "tie_word_embeddings": True}),
    "llama-3.2-3b": _entry(
        "meta-llama/Llama-3.2-3B", "Llama 3.2 3B: 28 layers, GQA 24/8, tied embeddings, 128K context",
        {**_LLAMA31_BASE, "head_dim": 128, "hidden_size": 3072, "intermediate_size": 8192,
         "num_attention_heads": 24, "num_hidden_layers": 28, "num_key_value_heads": 8,
         "rope_scaling": {**_LLAMA31_ROPE, "factor": 32.0}, "tie_word_embeddings": True}),
    # --- Mistral / Mixtral ---------------------------------------------------------------------
    "mistral-7b": _entry(
        "mistralai/Mistral-7B-v0.1", "Mistral 7B v0.1: 32 layers, GQA 32/8, sliding-window attention (4096)",
        {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1,
         "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
         "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
         "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
         "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
         "vocab_size": 32000}),
    "mixtral-8x7b": _entry(
        "mistralai/Mixtral-8x7B-v0.1", "Mixtral 8x7B: MoE, 8 experts (top 2) in each of 32 layers, GQA 32/8",
        {**_MIXTRAL_BASE, "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
         "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
         "router_aux_loss_coef": 0.02}),
    "mixtral-8x22b": _entry(
        "mistralai/Mixtral-8x22B-v0.1", "Mixtral 8x22B: MoE, 8 experts (top 2) in each of 56 layers, GQA 48/8",
        {**_MIXTRAL_BASE, "hidden_size": 6144, "intermediate_size": 16384, "max_position_embeddings": 65536,
         "num_attention_heads": 48, "num_hidden_layers": 56, "num_key_value_heads": 8,
         "router_aux_loss_coef": 0.001}),
    # --- Qwen ----------------------------------------------------------------------------------
    "qwen2.5-0.5b": _entry(
        "Qwen/Qwen2.5-0.5B", "Qwen2.5 0.5B: 24 layers, GQA 14/2, q/k/v biases, tied embeddings",
        {**_QWEN25_BASE, "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768,
         "max_window_layers": 24, "num_attention_heads": 14, "num_hidden_layers": 24,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "sliding_window": 32768,
         "tie_word_embeddings": True, "vocab_size": 151936}),
    "qwen2.5-7b": _entry(
        "Qwen/Qwen2.5-7B", "Qwen2.5 7B: 28 layers, GQA 28/4, q/k/v biases, 152K vocabulary",
        {**_QWEN25_BASE, "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 131072,
         "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28,
         "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "sliding_window": 131072,
         "tie_word_embeddings": False, "vocab_size": 152064}),
    "qwen2.5-72b": _entry(
        "Qwen/Qwen2.5-72B", "Qwen2.5 72B: 80 layers, GQA 64/8, q/k/v biases, 152K vocabulary",
        {**_QWEN25_BASE, "hidden_size": 8192, "intermediate_size": 29568, "max_position_embeddings": 131072,
         "max_window_layers": 80, "num_attention_heads": 64, "num_hidden_layers": 80,
         "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "sliding_window": 131072,
         "tie_word_embeddings": False, "vocab_size": 152064}),
    "qwen3-8b": _entry(
        "Qwen/Qwen3-8B", "Qwen3 8B: 36 layers, GQA 32/8, per-head q/k RMSNorm",
        {**_QWEN3_BASE, "hidden_size": 4096, "intermediate_size": 12288, "max_window_layers": 36,
         "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8}),
    "qwen3-32b": _entry(
        "Qwen/Qwen3-32B", "Qwen3 32B: 64 layers, GQA 64/8, per-head q/k RMSNorm",
        {**_QWEN3_BASE, "hidden_size": 5120, "intermediate_size": 25600, "max_window_layers": 64,
         "num_attention_heads": 64, "num_hidden_layers": 64, "num_key_value_heads": 8}),
    "qwen3-30b-a3b": _entry(
        "Qwen/Qwen3-30B-A3B", "Qwen3 30B-A3B: MoE, 128 experts (top 8) in each of 48 layers, GQA 32/4",
        {**_QWEN3_BASE, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
         "decoder_sparse_step": 1, "hidden_size": 2048, "intermediate_size": 6144, "max_window_layers": 48,
         "mlp_only_layers": [], "moe_intermediate_size": 768, "norm_topk_prob": True,
         "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
         "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
         "router_aux_loss_coef": 0.001}),
    # --- Gemma 2 -------------------------------------------------------------------------------
    "gemma-2-2b": _entry(
        "google/gemma-2-2b", "Gemma 2 2B: 26 layers, GQA 8/4, head_dim 256, local/global attention, tied",
        {**_GEMMA2_BASE, "hidden_size": 2304, "intermediate_size": 9216, "num_attention_heads": 8,
         "num_hidden_layers": 26, "num_key_value_heads": 4}),
    "gemma-2-9b": _entry(
        "google/gemma-2-9b", "Gemma 2 9B: 42 layers, GQA 16/8, head_dim 256, local/global attention, tied",
        {**_GEMMA2_BASE, "hidden_size": 3584, "intermediate_size": 14336, "num_attention_heads": 16,
         "num_hidden_layers": 42, "num_key_value_heads": 8}),
    "gemma-2-27b": _entry(
        "google/gemma-2-27b", "Gemma 2 27B: 46 layers, GQA 32/16, head_dim 128, local/global attention, tied",
        {**_GEMMA2_BASE, "head_dim": 128, "hidden_size": 4608, "intermediate_size": 36864,
         "num_attention_heads": 32, "num_hidden_layers": 46, "num_key_value_heads": 16,
         "query_pre_attn_scalar": 144}),
    # --- Phi-3 ---------------------------------------------------------------------------------
    "phi-3-mini": _entry(
        "microsoft/Phi-3-mini-4k-instruct", "Phi-3 mini (3.8B, 4K): 32 layers, fused qkv_proj and gate_up_proj",
        {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_bias": False,
         "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000,
         "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
         "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
         "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "pad_token_id": 32000,
         "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
         "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
         "vocab_size": 32064}),
    # --- GPT-NeoX / Falcon ---------------------------------------------------------------------
    "gpt-neox-20b": _entry(
        "EleutherAI/gpt-neox-20b",
        "GPT-NeoX 20B: 44 layers, parallel residual, LayerNorm, fused qkv with biases, 25% rotary",
        {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "bos_token_id": 0,
         "eos_token_id": 0, "hidden_act": "gelu_fast", "hidden_size": 6144, "initializer_range": 0.02,
         "intermediate_size": 24576, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
         "num_attention_heads": 64, "num_hidden_layers": 44, "rotary_emb_base": 10000, "rotary_pct": 0.25,
         "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
         "use_parallel_residual": True, "vocab_size": 50432}),
    "falcon-40b": _entry(
        "tiiuae/falcon-40b",
        "Falcon 40B: 60 layers, new decoder architecture (GQA 128/8, 2 LayerNorms, parallel attention), tied",
        {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "alibi": False,
         "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "bias": False,
         "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 8192,
         "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "new_decoder_architecture": True,
         "num_attention_heads": 128, "num_hidden_layers": 60, "num_kv_heads": 8, "parallel_attn": True,
         "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 65024}),
    "falcon-7b": _entry(
        "tiiuae/falcon-7b", "Falcon 7B: 32 layers, multi-query attention (71 heads, 1 KV head), 1 LayerNorm",
        {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "alibi": False,
         "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "bias": False,
         "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 4544,
         "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "multi_query": True,
         "new_decoder_architecture": False, "num_attention_heads": 71, "num_hidden_layers": 32,
         "parallel_attn": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 65024}),
    # --- tiny test models (no checkpoint; for tests and quick simulations) ----------------------
    "tiny-llama": _entry(
        "", "[test] tiny Llama: hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 128, vocab 256",
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **_TINY, "hidden_act": "silu",
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False}, test=True),
    "tiny-qwen2": _entry(
        "", "[test] tiny Qwen2: q/k/v biases, tied embeddings",
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **_TINY, "hidden_act": "silu",
         "max_window_layers": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": None,
         "tie_word_embeddings": True, "use_sliding_window": False}, test=True),
    "tiny-qwen3": _entry(
        "", "[test] tiny Qwen3: per-head q/k RMSNorm, head_dim 32 (not hidden / heads)",
        {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **_TINY, "attention_bias": False,
         "head_dim": 32, "hidden_act": "silu", "max_window_layers": 2, "rms_norm_eps": 1e-06,
         "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
         "use_sliding_window": False}, test=True),
    "tiny-mixtral": _entry(
        "", "[test] tiny Mixtral: 4 experts (top 2) per layer",
        {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **_TINY, "hidden_act": "silu",
         "num_experts_per_tok": 2, "num_local_experts": 4, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
         "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False}, test=True),
    "tiny-gemma2": _entry(
        "", "[test] tiny Gemma 2: head_dim 32, 4 norms per layer, local/global attention, softcapping, tied",
        {**_GEMMA2_BASE, **_TINY, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 64,
         "torch_dtype": "float32"}, test=True),
    "tiny-phi3": _entry(
        "", "[test] tiny Phi-3: fused qkv_proj and gate_up_proj",
        {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", **_TINY, "attention_bias": False,
         "hidden_act": "silu", "original_max_position_embeddings": 512, "pad_token_id": 0,
         "eos_token_id": 1, "bos_token_id": 1, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
         "sliding_window": None, "tie_word_embeddings": False}, test=True),
    "tiny-gpt-neox": _entry(
        "", "[test] tiny GPT-NeoX: parallel residual, LayerNorm, fused qkv with biases, 25% rotary",
        {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64,
         "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
         "max_position_embeddings": 512, "hidden_act": "gelu", "layer_norm_eps": 1e-05,
         "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
         "use_parallel_residual": True, "bos_token_id": 0, "eos_token_id": 0}, test=True),
    "tiny-falcon": _entry(
        "", "[test] tiny Falcon (new decoder architecture): GQA 4/2, 2 LayerNorms, tied",
        {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "alibi": False, "bias": False,
         "hidden_size": 64, "ffn_hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_kv_heads": 2, "new_decoder_architecture": True, "parallel_attn": True, "vocab_size": 256,
         "max_position_embeddings": 512, "layer_norm_epsilon": 1e-05, "bos_token_id": 1,
         "eos_token_id": 1}, test=True),
}

ALIASES: dict[str, str] = {
    "llama-70b": "llama-2-70b",
    "llama2-70b": "llama-2-70b",
    "llama-7b": "llama-2-7b",
    "llama2-7b": "llama-2-7b",
    "llama-13b": "llama-2-13b",
    "llama2-13b": "llama-2-13b",
    "llama3-8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
    "llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama-3.1-70b-instruct": "llama-3.1-70b",
    "llama-405b": "llama-3.1-405b",
    "llama3.1-405b": "llama-3.1-405b",
    "mistral-7b-v0.1": "mistral-7b",
    "mixtral": "mixtral-8x7b",
    "phi-3-mini-4k": "phi-3-mini",
    "phi3-mini": "phi-3-mini",
    "neox-20b": "gpt-neox-20b",
}


def catalog_names(include_tests: bool = True) -> list[str]:
    """Catalog names in catalog order (real models first, then the tiny test models)."""
    return [name for name, entry in CATALOG.items() if include_tests or not entry["test"]]


def resolve_name(name: str) -> str | None:
    """The catalog name for a name, an alias or a Hub repository id (any case); None if unknown."""
    key = name.strip().lower()
    if key in CATALOG:
        return key
    if key in ALIASES:
        return ALIASES[key]
    for canonical, entry in CATALOG.items():
        if entry["hf_id"] and entry["hf_id"].lower() == key:
            return canonical
    return None


def catalog_config(name: str) -> dict:
    """A fresh copy of a catalog model's config dict (callers may change it)."""
    return copy.deepcopy(CATALOG[resolve_name(name) or name]["config"])
