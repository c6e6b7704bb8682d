"""The referee (cluster/simulate.py) on a tiny Llama: exact byte counts that follow from the shapes,
and fake tensors against real CPU tensors for the same rank."""

from __future__ import annotations

import functools
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sharder.model_spec import ModelSpec  # noqa: E402
from sharder.parallel import ParallelConfig  # noqa: E402
from sharder.workload import Workload  # noqa: E402
from sharder.cluster.simulate import SimulationUnsupported, simulate_rank  # noqa: E402

H, HEADS, KV, HD, FFN, V, L = 64, 4, 2, 16, 128, 256, 2
HF_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": H,
    "intermediate_size": FFN, "num_hidden_layers": L, "num_attention_heads": HEADS,
    "num_key_value_heads": KV, "head_dim": HD, "hidden_act": "silu", "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "bos_token_id": 1, "eos_token_id": 2,
}
TINY = ModelSpec(name="tiny", model_type="llama", hidden_size=H, num_layers=L, num_heads=HEADS,
                 num_kv_heads=KV, head_dim=HD, intermediate_size=FFN, vocab_size=V, hf_config=HF_CONFIG)
P = TINY.total_params()  # 106,816

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (rows, cols) of every parameter tensor, in order: embedding, per layer (q k v o gate up down, 2 norms), norm, head
LAYER_SHAPES = [(HEADS * HD, H), (KV * HD, H), (KV * HD, H), (H, HEADS * HD), (FFN, H), (FFN, H), (H, FFN),
                (H, 1), (H, 1)]
SHAPES = [(V, H)] + LAYER_SHAPES * L + [(H, 1), (V, H)]
N_TENSORS = len(SHAPES)
SEQ, BATCH = 64, 2


def train(**kw) -> Workload:
    kw.setdefault("precision", "32-true")
    return Workload(mode=kw.pop("mode", "train"), batch=kw.pop("batch", BATCH), seq=kw.pop("seq", SEQ), **kw)


@functools.lru_cache(maxsize=None)
def sim(workload: Workload, parallel: ParallelConfig = ParallelConfig(), rank: int = 0, fake: bool = True,
        spec: ModelSpec = TINY):
    result = simulate_rank(spec, workload, parallel, rank, fake=fake)
    assert sum(result.breakdown.values()) == result.peak_bytes
    assert sum(result.raw.values()) == result.peak_bytes
    return result


def adamw_bytes(numel: int, tensors: int, state_bytes: int = 4) -> int:
    """exp_avg + exp_avg_sq in the parameter dtype, plus one fp32 `step` scalar per tensor (foreach=False)."""
    return 2 * state_bytes * numel + 4 * tensors


# -- (a) single rank ------------------------------------------------------------------------------------
def test_single_rank_fp32_model_states_exact():
    r = sim(train())
    assert P == 106_816
    assert r.breakdown["parameters"] == 4 * P
    assert r.breakdown["optimizer_states"] == adamw_bytes(P, N_TENSORS)
    assert r.breakdown["other"] == 2 * 4 * (HD // 2)  # inv_freq + original_inv_freq, fp32
    assert r.breakdown["comm_buffers"] == 0 and r.breakdown["kv_cache"] == 0
    assert r.peak_phase == "backward"
    assert r.torch_version and r.transformers_version and r.wall_s > 0


def test_single_rank_activation_checkpointing_saves_activations():
    plain, ac = sim(train()), sim(train(ac="full"))
    assert ac.breakdown["parameters"] == plain.breakdown["parameters"]
    assert ac.peak_bytes < plain.peak_bytes
    assert ac.breakdown["activations"] < plain.breakdown["activations"]


def test_bf16_true_halves_weights_and_adam_state():
    r = sim(train(precision="bf16-true"))
    assert r.breakdown["parameters"] == 2 * P
    assert r.breakdown["optimizer_states"] == adamw_bytes(P, N_TENSORS, state_bytes=2)


def test_sgd_momentum_is_one_buffer_per_parameter():
    r = sim(train(optimizer="sgd"))
    assert r.breakdown["optimizer_states"] == 4 * P


def test_layers_override_shrinks_the_model():
    r = simulate_rank(TINY, train(), ParallelConfig(), 0, layers=1)
    assert r.breakdown["parameters"] == 4 * TINY.with_layers(1).total_params()


# -- (b) FSDP2 --------------------------------------------------------------------------------------------
def fsdp_shard_bytes(world: int, elem: int = 4) -> int:
    """FSDP2 shards dim 0 into ceil(rows / W)-row chunks, padded: every rank stores that many rows."""
    return sum(math.ceil(rows / world) * cols for rows, cols in SHAPES) * elem


ROOT_PARAMS = 2 * V * H + H  # embedding + head + final norm: the root module's own parameters
LAYER_PARAMS = TINY.layer_params()


def test_fsdp_zero3_w4_sharded_states_exact():
    r = sim(train(), ParallelConfig(dp=4, zero=3), rank=1)
    assert fsdp_shard_bytes(4) == 4 * P // 4  # the tiny shapes divide by 4: no padding
    assert r.breakdown["parameters"] == 4 * P // 4
    assert r.breakdown["optimizer_states"] == adamw_bytes(P // 4, N_TENSORS)
    # the root's embedding + head + norm stay unsharded from forward to backward
    assert r.raw["Unsharded Param"] == 4 * ROOT_PARAMS
    assert r.raw["All Gather"] in (0, 4 * LAYER_PARAMS)  # at most one layer's all-gather buffer
    assert r.breakdown["comm_buffers"] == r.raw["Unsharded Param"] + r.raw["All Gather"] + \
        r.raw["Reduce Scatter"] + r.raw["Unsharded Grad"]


def test_fsdp_padding_w3():
    r = sim(train(), ParallelConfig(dp=3, zero=3), rank=2)
    assert r.breakdown["parameters"] == fsdp_shard_bytes(3)


def test_fsdp_zero2_keeps_every_layer_unsharded():
    r = sim(train(), ParallelConfig(dp=4, zero=2), rank=0)
    assert r.breakdown["parameters"] == 4 * P // 4
    assert r.raw["Unsharded Param"] == 4 * P
    assert r.peak_bytes > sim(train(), ParallelConfig(dp=4, zero=3), rank=1).peak_bytes


def test_fsdp_bf16_mixed_gathers_bf16():
    r = sim(train(precision="bf16-mixed"), ParallelConfig(dp=4, zero=3), rank=3)
    assert r.breakdown["parameters"] == 4 * P // 4  # fp32 masters
    assert r.raw["Unsharded Param"] == 2 * ROOT_PARAMS
    assert r.breakdown["optimizer_states"] == adamw_bytes(P // 4, N_TENSORS)


def test_hsdp_shards_within_the_group_only():
    r = sim(train(), ParallelConfig(dp=4, zero=3, dp_replicate=2), rank=3)
    assert r.breakdown["parameters"] == 4 * P // 2
    assert r.breakdown["optimizer_states"] == adamw_bytes(P // 2, N_TENSORS)


# -- (c) tensor parallel ------------------------------------------------------------------------------------
def tp_param_bytes(tp: int, layout: str) -> int:
    split = L * (TINY.attention_params() + TINY.mlp_params()) // tp
    replicated_norms = L * 2 * H + H
    edge = 2 * V * H // tp if layout == "megatron" else V * H + V * H // tp if layout == "hf" else 2 * V * H
    return 4 * (split + replicated_norms + edge)


@pytest.mark.parametrize("layout", ["megatron", "hf", "layers"])
def test_tp2_parameters_per_layout(layout):
    r = sim(train(), ParallelConfig(tp=2, tp_layout=layout), rank=1)
    assert r.breakdown["parameters"] == tp_param_bytes(2, layout)


@pytest.mark.parametrize("layout", ["megatron", "hf", "layers"])
def test_tp2_sequence_parallel_cuts_activations(layout):
    plain = sim(train(), ParallelConfig(tp=2, tp_layout=layout), rank=1)
    sp = sim(train(), ParallelConfig(tp=2, tp_layout=layout, sp=True), rank=1)
    assert plain.breakdown["parameters"] == sp.breakdown["parameters"] == tp_param_bytes(2, layout)
    assert sp.peak_bytes < plain.peak_bytes


def test_dp_x_tp_fsdp_on_the_dp_mesh():
    r = sim(train(), ParallelConfig(dp=2, tp=2, zero=3, tp_layout="megatron", sp=True), rank=3)
    assert r.breakdown["parameters"] == tp_param_bytes(2, "megatron") // 2


# -- (d) inference ----------------------------------------------------------------------------------------------
def kv_bytes(seq: int, new: int, batch: int, tp: int = 1, elem: int = 2) -> int:
    return 2 * L * (KV // tp) * HD * (seq + new) * batch * elem


def test_inference_static_cache_is_kv_cache():
    w = Workload(mode="inference", batch=2, seq=32, max_new_tokens=8, precision="bf16-true")
    r = sim(w)
    assert r.breakdown["kv_cache"] == kv_bytes(32, 8, 2)
    assert r.breakdown["parameters"] == 2 * P
    assert r.breakdown["gradients"] == r.breakdown["optimizer_states"] == 0
    assert r.peak_phase in ("prefill", "decode")


def test_inference_tp_splits_the_kv_heads():
    w = Workload(mode="inference", batch=2, seq=32, max_new_tokens=8, precision="bf16-true")
    r = sim(w, ParallelConfig(tp=2, tp_layout="megatron"), rank=1)
    assert r.breakdown["kv_cache"] == kv_bytes(32, 8, 2, tp=2)
    assert r.breakdown["parameters"] == tp_param_bytes(2, "megatron") // 2


# -- (e) pipeline ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_stages_hold_their_layers(schedule):
    spec = TINY.with_layers(4)
    w = train(micro_batches=2)
    par = ParallelConfig(pp=2, schedule=schedule)
    first, last = sim(w, par, rank=0, spec=spec), sim(w, par, rank=1, spec=spec)
    assert first.layers == (0, 2) and last.layers == (2, 4)
    assert first.breakdown["parameters"] == 4 * (V * H + 2 * LAYER_PARAMS)
    assert last.breakdown["parameters"] == 4 * (2 * LAYER_PARAMS + H + V * H)
    # M receive buffers of (micro-batch, seq, hidden) fp32: activations in for the last stage,
    # output gradients for the first
    buffers = 2 * (BATCH // 2) * SEQ * H * 4
    assert first.raw["Pipeline Buffer"] == last.raw["Pipeline Buffer"] == buffers


# -- (f) DDP, ZeRO-1, accumulation, LoRA ---------------------------------------------------------------------------------
def test_ddp_buckets_hold_a_copy_of_the_gradients():
    r = sim(train(), ParallelConfig(dp=2, zero=0), rank=1)
    assert r.breakdown["parameters"] == 4 * P
    assert r.breakdown["comm_buffers"] == 4 * P
    assert r.breakdown["optimizer_states"] == adamw_bytes(P, N_TENSORS)


def test_zero1_shards_the_optimizer_only():
    r = sim(train(), ParallelConfig(dp=4, zero=1), rank=3)
    assert r.breakdown["parameters"] == 4 * P
    assert 0 < r.breakdown["optimizer_states"] < adamw_bytes(P, N_TENSORS) // 2


def test_gradient_accumulation_keeps_gradients_between_micro_batches():
    r = sim(train(batch=4, micro_batches=2))
    assert r.breakdown["gradients"] == 4 * P


def test_lora_trains_adapters_only():
    r = sim(train(mode="lora", lora_rank=8))
    adapters = L * sum(8 * (H + out) for out in (HEADS * HD, KV * HD, KV * HD, H))
    assert r.breakdown["parameters"] == 4 * (P + adapters)
    assert r.breakdown["optimizer_states"] == adamw_bytes(adapters, 2 * 4 * L)
    assert r.breakdown["gradients"] <= 4 * adapters


# -- the referee against real tensors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("workload,parallel,rank,layers", [
    (train(ac="full"), ParallelConfig(), 0, L),
    (train(precision="bf16-mixed"), ParallelConfig(dp=2, tp=2, zero=3, tp_layout="megatron", sp=True), 3, L),
    (Workload(mode="inference", batch=2, seq=32, max_new_tokens=8, precision="bf16-true"),
     ParallelConfig(tp=2, tp_layout="hf"), 1, L),
    (train(micro_batches=2), ParallelConfig(pp=2, schedule="1f1b"), 1, 4),
])
def test_fake_tensors_agree_with_real_cpu_tensors(workload, parallel, rank, layers):
    """DESIGN §4: after the warm-up iteration the fake-tensor referee and real CPU tensors agree to the byte."""
    spec = TINY if layers == L else TINY.with_layers(layers)
    fake = sim(workload, parallel, rank, True, spec)
    real = sim(workload, parallel, rank, False, spec)
    assert not real.fake
    assert fake.peak_bytes == real.peak_bytes
    assert fake.raw == real.raw


def test_unsupported_combinations_say_so():
    with pytest.raises(SimulationUnsupported):
        simulate_rank(TINY, Workload(mode="qlora", seq=SEQ), ParallelConfig(), 0)
    with pytest.raises(SimulationUnsupported):
        simulate_rank(TINY, train(), ParallelConfig(tp=8), 0)  # 8 does not divide 4 heads
