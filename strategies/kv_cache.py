"""KV cache for inference: transformers StaticCache sizing with GQA, cache dtype and sliding windows."""

from __future__ import annotations

from sharder.model_spec import ModelSpec

VERIFIED = True


def kv_bytes_per_token_per_layer(model: ModelSpec, kv_bytes: int, tp: int = 1) -> int:
    """K and V for one token in one layer: 2 × KV heads / TP × head_dim × bytes."""
    return 2 * (model.num_kv_heads // tp) * model.head_dim * kv_bytes


def layer_cache_len(model: ModelSpec, layer: int, context: int) -> int:
    """Tokens a layer's cache holds: sliding-window layers are capped at their window."""
    if model.sliding_window and _is_sliding(model, layer):
        return min(context, model.sliding_window)
    return context


def kv_cache_bytes(model: ModelSpec, layers: range, batch: int, context: int, kv_bytes: int, tp: int = 1) -> int:
    per = kv_bytes_per_token_per_layer(model, kv_bytes, tp)
    return sum(batch * layer_cache_len(model, i, context) * per for i in layers)


def _is_sliding(model: ModelSpec, layer: int) -> bool:
    if model.sliding_window_layers >= model.num_layers:
        return True
    if model.sliding_window_layers == 0:
        return False
    return layer % 2 == 0  # Gemma-2: even layers slide
