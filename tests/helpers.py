"""Shared test helpers: a tiny Llama spec and a cpu pool, built without torch."""

from sharder.hardware import GiB
from sharder.model_spec import ModelSpec
from sharder.pool_spec import parse_gpus


def tiny_llama(layers: int = 2, **over) -> ModelSpec:
    fields = dict(name="tiny", model_type="llama", hidden_size=64, num_layers=layers, num_heads=4, num_kv_heads=2,
                  head_dim=16, intermediate_size=128, vocab_size=256)
    fields.update(over)
    return ModelSpec(**fields)


def cpu_pool(n: int = 1):
    return parse_gpus(f"{n}xcpu", host_memory_bytes=64 * GiB)
