"""The accuracy matrix as data: one dict per case, read by benchmarks/accuracy.py and tests/test_accuracy_fast.py.

Fields of a case:
    name        unique id (used by `--case NAME`)
    model       a catalog name (sharder/model_catalog.py)
    layers      optional: simulate and predict with this many decoder layers (ModelSpec.with_layers)
    hf          optional: keys laid over the catalog config.json (a width-shrunk custom hf_config)
    workload    Workload keyword arguments
    parallel    ParallelConfig keyword arguments
    pool        pool spec for sharder.pool_spec.parse_gpus ("4xcpu"); world size = pp × dp × tp
    ranks       global ranks to simulate (each is one measurement)
    fast        True: part of the fast subset (`--fast`, tests/test_accuracy_fast.py)
    what        one line: what the case covers

Depth and width are shrunk where the case is about a strategy, not a size, so that the full matrix runs
in about half an hour on two cores; the `llama-2-70b-*` cases are full size (80 layers, hidden 8192).
Nothing here is tuned to the cost model: cases are chosen for coverage and kept whatever they measure.
"""

from __future__ import annotations

T32 = dict(mode="train", precision="32-true")
TBF = dict(mode="train", precision="bf16-true")
TMX = dict(mode="train", precision="bf16-mixed")
INF = dict(mode="inference", precision="bf16-true")

# a Mixtral with its own (smaller) width: a custom hf_config laid over the catalog entry
_MIXTRAL_SMALL = dict(hidden_size=1024, intermediate_size=3584, num_attention_heads=8, num_key_value_heads=2)
# a Llama-2-7B block at a quarter of the width
_LLAMA2_QUARTER = dict(hidden_size=1024, intermediate_size=2752, num_attention_heads=8, num_key_value_heads=8)


def _case(name, model, workload, parallel=None, *, pool="1xcpu", ranks=(0,), layers=None, hf=None, fast=False,
          what=""):
    return dict(name=name, model=model, layers=layers, hf=hf or None, workload=dict(workload),
                parallel=dict(parallel or {}), pool=pool, ranks=list(ranks), fast=fast, what=what)


CASES: list[dict] = [
    # ---------------------------------------------------------------- single rank
    _case("tiny-llama-single-fp32", "tiny-llama", dict(T32, batch=2, seq=128), fast=True,
          what="single rank, fp32 AdamW"),
    _case("tiny-llama-single-bf16true-ac", "tiny-llama", dict(TBF, batch=4, seq=256, ac="full"), fast=True,
          what="single rank, bf16-true, activation checkpointing"),
    _case("llama-3-8b-L2-single-bf16true", "llama-3-8b", dict(TBF, batch=1, seq=1024), layers=2,
          what="single rank, real width, 128K vocabulary"),
    _case("llama-3.2-1b-L2-single-bf16true-s4096", "llama-3.2-1b", dict(TBF, batch=1, seq=4096), layers=2,
          what="single rank, seq 4096, tied embeddings"),
    _case("mistral-7b-L2-single-fp32", "mistral-7b", dict(T32, batch=2, seq=512), layers=2,
          what="Mistral, fp32, sliding window"),
    _case("llama-2-7b-L2-gradacc4-bf16true", "llama-2-7b", dict(TBF, batch=4, seq=256, micro_batches=4), layers=2,
          what="gradient accumulation: 4 micro-batches, pp 1"),
    _case("tiny-llama-single-bf16mixed", "tiny-llama", dict(TMX, batch=2, seq=128), fast=True,
          what="single rank, bf16-mixed (autocast)"),
    # ---------------------------------------------------------------- families
    _case("qwen2.5-0.5b-L4-fsdp4-bf16mixed", "qwen2.5-0.5b", dict(TMX, batch=2, seq=512),
          dict(dp=4, zero=3), pool="4xcpu", layers=4, what="Qwen2: q/k/v bias, tied embeddings, FSDP"),
    _case("tiny-qwen2-fsdp2-fp32", "tiny-qwen2", dict(T32, batch=2, seq=128), dict(dp=2, zero=3), pool="2xcpu",
          fast=True, what="tiny Qwen2 FSDP fp32 (tied embeddings)"),
    _case("gemma-2-2b-L2-single-eager-bf16true", "gemma-2-2b", dict(TBF, batch=1, seq=512, attention="eager"),
          layers=2, what="Gemma-2: head_dim 256, eager attention, softcapping, 256K vocabulary"),
    _case("tiny-gemma2-fsdp2-eager-fp32", "tiny-gemma2", dict(T32, batch=2, seq=256, attention="eager"),
          dict(dp=2, zero=3), pool="2xcpu", what="Gemma-2 eager, sliding window 64 < seq, FSDP"),
    _case("phi-3-mini-L2-fsdp4-bf16mixed", "phi-3-mini", dict(TMX, batch=1, seq=512), dict(dp=4, zero=3),
          pool="4xcpu", layers=2, what="Phi-3: fused qkv_proj / gate_up_proj (no TP), FSDP"),
    _case("tiny-phi3-single-fp32-ac", "tiny-phi3", dict(T32, batch=2, seq=128, ac="full"),
          what="Phi-3 fused projections, AC"),
    _case("tiny-mixtral-single-fp32", "tiny-mixtral", dict(T32, batch=2, seq=128),
          what="Mixtral MoE, single rank"),
    _case("mixtral-w1024-L2-fsdp2-bf16mixed", "mixtral-8x7b", dict(TMX, batch=1, seq=512), dict(dp=2, zero=3),
          pool="2xcpu", layers=2, hf=_MIXTRAL_SMALL, what="Mixtral MoE (width 1024), FSDP bf16-mixed"),
    _case("tiny-gpt-neox-single-fp32", "tiny-gpt-neox", dict(T32, batch=2, seq=128),
          what="GPT-NeoX: parallel residual, LayerNorm, fused qkv"),
    _case("gpt-neox-20b-L2-fsdp8-bf16mixed", "gpt-neox-20b", dict(TMX, batch=1, seq=512), dict(dp=8, zero=3),
          pool="8xcpu", layers=2, what="GPT-NeoX 20B width, FSDP 8"),
    # ---------------------------------------------------------------- FSDP / ZeRO / DDP
    _case("llama-2-7b-L4-fsdp4-fp32", "llama-2-7b", dict(T32, batch=2, seq=512), dict(dp=4, zero=3), pool="4xcpu",
          layers=4, what="FSDP (zero 3) fp32"),
    _case("llama-2-7b-L4-fsdp4-fp32-ac", "llama-2-7b", dict(T32, batch=2, seq=512, ac="full"), dict(dp=4, zero=3),
          pool="4xcpu", layers=4, what="FSDP fp32 + AC full"),
    _case("llama-2-7b-L4-fsdp8-bf16mixed", "llama-2-7b", dict(TMX, batch=1, seq=1024), dict(dp=8, zero=3),
          pool="8xcpu", layers=4, what="FSDP bf16-mixed"),
    _case("llama-2-7b-L4-fsdp8-bf16mixed-ac", "llama-2-7b", dict(TMX, batch=1, seq=1024, ac="full"),
          dict(dp=8, zero=3), pool="8xcpu", layers=4, what="FSDP bf16-mixed + AC full"),
    _case("tiny-llama-fsdp4-fp32-b8", "tiny-llama", dict(T32, batch=8, seq=128), dict(dp=4, zero=3), pool="4xcpu",
          fast=True, what="FSDP fp32, batch 8"),
    _case("tiny-llama-fsdp3-uneven", "tiny-llama", dict(T32, batch=2, seq=128), dict(dp=3, zero=3), pool="3xcpu",
          ranks=(0, 2), what="FSDP over 3 ranks: uneven dim-0 chunks (first and last rank)"),
    _case("llama-2-7b-L4-zero2-bf16mixed", "llama-2-7b", dict(TMX, batch=1, seq=512), dict(dp=4, zero=2),
          pool="4xcpu", layers=4, what="ZeRO-2 (FSDP2 reshard_after_forward=False)"),
    _case("llama-3.2-1b-L4-hsdp2x4-bf16mixed", "llama-3.2-1b", dict(TMX, batch=2, seq=512),
          dict(dp=8, dp_replicate=2, zero=3), pool="8xcpu", layers=4, what="HSDP: 2 replicas × 4 shards"),
    _case("qwen2.5-0.5b-L2-zero1-dp4-fp32", "qwen2.5-0.5b", dict(T32, batch=2, seq=256), dict(dp=4, zero=1),
          pool="4xcpu", layers=2, ranks=(0, 3), what="ZeRO-1 (ZeroRedundancyOptimizer + DDP), first and last rank"),
    _case("llama-3.2-1b-L2-ddp2-bf16true", "llama-3.2-1b", dict(TBF, batch=2, seq=512), dict(dp=2, zero=0),
          pool="2xcpu", layers=2, what="plain DDP (zero 0, dp 2)"),
    _case("tiny-llama-fsdp2-gradacc2", "tiny-llama", dict(T32, batch=4, seq=128, micro_batches=2),
          dict(dp=2, zero=3), pool="2xcpu", what="FSDP + gradient accumulation (2 micro-batches)"),
    # ---------------------------------------------------------------- tensor parallel
    _case("tiny-llama-tp2-megatron-fp32", "tiny-llama", dict(T32, batch=2, seq=128), dict(tp=2), pool="2xcpu",
          fast=True, what="TP 2, megatron layout (loss_parallel)"),
    _case("llama-3-8b-L2-tp4-megatron-bf16true", "llama-3-8b", dict(TBF, batch=1, seq=1024), dict(tp=4),
          pool="4xcpu", layers=2, what="TP 4 megatron"),
    _case("llama-3-8b-L2-tp4-hf-bf16true", "llama-3-8b", dict(TBF, batch=1, seq=1024), dict(tp=4, tp_layout="hf"),
          pool="4xcpu", layers=2, what="TP 4 hf layout (head column-wise, logits gathered)"),
    _case("llama-3-8b-L2-tp4-layers-bf16true", "llama-3-8b", dict(TBF, batch=1, seq=1024),
          dict(tp=4, tp_layout="layers"), pool="4xcpu", layers=2, what="TP 4 layers layout (edges replicated)"),
    _case("llama-2-7b-L2-tp2-megatron-sp-bf16true", "llama-2-7b", dict(TBF, batch=2, seq=512),
          dict(tp=2, sp=True), pool="2xcpu", layers=2, what="TP 2 megatron + sequence parallel"),
    _case("llama-2-7b-L2-tp2-hf-sp-bf16true", "llama-2-7b", dict(TBF, batch=2, seq=512),
          dict(tp=2, tp_layout="hf", sp=True), pool="2xcpu", layers=2, what="TP 2 hf + sequence parallel"),
    _case("llama-2-7b-L2-tp2-layers-sp-fp32", "llama-2-7b", dict(T32, batch=1, seq=512),
          dict(tp=2, tp_layout="layers", sp=True), pool="2xcpu", layers=2, what="TP 2 layers + SP, fp32"),
    _case("llama-3.2-1b-L2-dp2tp2-fsdp-bf16mixed", "llama-3.2-1b", dict(TMX, batch=2, seq=512),
          dict(dp=2, tp=2, zero=3), pool="4xcpu", layers=2, what="DP×TP: FSDP 2 × TP 2 (2-D mesh)"),
    _case("llama-2-7b-w1024-L2-dp2tp2-fsdp-bf16mixed", "llama-2-7b", dict(TMX, batch=2, seq=512),
          dict(dp=2, tp=2, zero=3), pool="4xcpu", layers=2, hf=_LLAMA2_QUARTER,
          what="DP×TP: FSDP 2 × TP 2 (2-D mesh), untied embeddings"),
    _case("mistral-7b-L2-dp2tp4-sp-fsdp-bf16mixed", "mistral-7b", dict(TMX, batch=1, seq=1024),
          dict(dp=2, tp=4, zero=3, sp=True), pool="8xcpu", layers=2, what="DP×TP+SP: FSDP 2 × TP 4"),
    # ---------------------------------------------------------------- pipeline parallel
    _case("tiny-llama-pp2-gpipe-m2", "tiny-llama", dict(T32, batch=4, seq=128, micro_batches=2),
          dict(pp=2, schedule="gpipe"), pool="2xcpu", ranks=(0, 1), fast=True, what="PP 2 GPipe, 2 micro-batches"),
    _case("llama-2-7b-L4-pp2-1f1b-m4-bf16true", "llama-2-7b", dict(TBF, batch=4, seq=256, micro_batches=4),
          dict(pp=2), pool="2xcpu", layers=4, ranks=(0, 1), what="PP 2 1F1B, 4 micro-batches"),
    _case("llama-2-7b-L8-pp4-1f1b-m8-bf16true", "llama-2-7b", dict(TBF, batch=8, seq=256, micro_batches=8),
          dict(pp=4), pool="4xcpu", layers=8, ranks=(0, 1, 2, 3), what="PP 4 1F1B, 8 micro-batches, every stage"),
    _case("llama-2-7b-L8-pp4-gpipe-m4-bf16true", "llama-2-7b", dict(TBF, batch=4, seq=256, micro_batches=4),
          dict(pp=4, schedule="gpipe"), pool="4xcpu", layers=8, ranks=(0, 3), what="PP 4 GPipe, 4 micro-batches"),
    _case("llama-2-7b-L6-pp2-split42-1f1b-m2-fp32", "llama-2-7b", dict(T32, batch=2, seq=256, micro_batches=2),
          dict(pp=2, split=(4, 2)), pool="2xcpu", layers=6, ranks=(0, 1), what="PP 2 uneven split 4+2"),
    _case("tiny-llama-pp2-gpipe-m1-fp32", "tiny-llama", dict(T32, batch=2, seq=256, micro_batches=1),
          dict(pp=2, schedule="gpipe"), pool="2xcpu", ranks=(0, 1), what="PP 2 GPipe, 1 micro-batch"),
    _case("llama-2-7b-w1024-L4-pp2dp2-fsdp-1f1b-m2", "llama-2-7b", dict(TMX, batch=2, seq=256, micro_batches=2),
          dict(pp=2, dp=2, zero=3), pool="4xcpu", layers=4, hf=_LLAMA2_QUARTER, ranks=(0, 2),
          what="PP 2 × FSDP 2 (width 1024), bf16-mixed"),
    # ---------------------------------------------------------------- LoRA
    _case("llama-2-7b-L2-lora-qkvo-bf16true", "llama-2-7b", dict(mode="lora", precision="bf16-true", batch=2,
          seq=512), layers=2, what="LoRA r16 on q/k/v/o, single rank"),
    _case("tiny-llama-lora-fsdp2-fp32", "tiny-llama", dict(mode="lora", precision="32-true", batch=2, seq=128),
          dict(dp=2, zero=3), pool="2xcpu", fast=True, what="LoRA + FSDP"),
    # ---------------------------------------------------------------- inference (prefill + decode, StaticCache)
    _case("tiny-llama-infer-single", "tiny-llama", dict(INF, batch=2, seq=128, max_new_tokens=32), fast=True,
          what="inference single rank"),
    _case("tiny-llama-infer-tp2-megatron", "tiny-llama", dict(INF, batch=2, seq=128, max_new_tokens=16),
          dict(tp=2), pool="2xcpu", fast=True, what="inference TP 2, megatron layout"),
    _case("tiny-qwen2-infer-tp2-megatron", "tiny-qwen2", dict(INF, batch=2, seq=128, max_new_tokens=16),
          dict(tp=2), pool="2xcpu", what="inference TP 2 megatron with tied embeddings (the cost model accepts it)"),
    _case("tiny-qwen2-infer-tp2-layers", "tiny-qwen2", dict(INF, batch=2, seq=128, max_new_tokens=16),
          dict(tp=2, tp_layout="layers"), pool="2xcpu", what="inference TP 2 layers layout, tied embeddings"),
    _case("llama-3-8b-L4-infer-single-b4", "llama-3-8b", dict(INF, batch=4, seq=1024, max_new_tokens=128), layers=4,
          what="inference single rank, batch 4"),
    _case("gemma-2-2b-L4-infer-eager", "gemma-2-2b", dict(INF, batch=1, seq=512, max_new_tokens=64,
          attention="eager"), layers=4, what="Gemma-2 inference, eager attention"),
    _case("mistral-7b-L2-infer-tp2-hf", "mistral-7b", dict(INF, batch=2, seq=1024, max_new_tokens=64),
          dict(tp=2, tp_layout="hf"), pool="2xcpu", layers=2, what="inference TP 2, hf layout"),
    # ---------------------------------------------------------------- full size, 70B class
    _case("llama-2-70b-fsdp8-bf16mixed-s2048", "llama-2-70b", dict(TMX, batch=1, seq=2048), dict(dp=8, zero=3),
          pool="8xcpu", what="FULL SIZE: Llama-2-70B, FSDP rank 0 of 8, bf16-mixed, seq 2048"),
    _case("llama-2-70b-infer-tp4-s2048", "llama-2-70b", dict(INF, batch=1, seq=2048, max_new_tokens=128),
          dict(tp=4), pool="4xcpu", what="FULL SIZE: Llama-2-70B inference, TP 4 (megatron), prefill + decode"),
]

FAST = [c["name"] for c in CASES if c["fast"]]
BY_NAME = {c["name"]: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"
