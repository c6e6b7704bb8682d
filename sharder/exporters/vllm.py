"""A `vllm serve` command line for an inference plan.

Flags (names and value types as vLLM's engine-argument documentation states them):
--tensor-parallel-size, --pipeline-parallel-size, --data-parallel-size (DP > 1),
--gpu-memory-utilization (the plan's largest predicted peak_reserved / capacity, rounded up to two
decimals, capped at 0.95), --max-model-len (seq + max_new_tokens), --max-num-seqs (batch per
replica), --dtype, --kv-cache-dtype, --quantization bitsandbytes (int8 / nf4 / int4),
--cpu-offload-gb (offload). Uneven pipeline splits go in VLLM_PP_LAYER_PARTITION.

vLLM does not take the plan's KV-cache size: at start-up it profiles one forward pass and gives
the KV cache whatever is left of gpu_memory_utilization × total. The command says so in a comment.
"""

from __future__ import annotations

import math
import shlex

from sharder.errors import SharderInputError
from sharder.exporters._common import GiB, ceil_to, view

MAX_UTILIZATION = 0.95
MIN_UTILIZATION = 0.05


def args(plan: dict) -> tuple[list[str], dict[str, str], list[str]]:
    """(argv after `vllm serve`, environment, comment lines)."""
    v = view(plan, need_ranks=True)
    w, par = v.workload, v.parallel
    if w.training:
        raise SharderInputError(
            f"vllm export needs an inference plan; this plan is --mode {w.mode} "
            f"(try --to deepspeed, torchtitan or fsdp2)")
    if par.zero == 3 and par.dp > 1:
        raise SharderInputError(
            f"vllm export: ZeRO-3 sharded inference over {par.dp} ranks has no vLLM equivalent "
            f"(vLLM shards with --tensor-parallel-size / --pipeline-parallel-size); plan with --zero 0")
    if any(v.is_cpu(r) for r in v.ranks):
        raise SharderInputError("vllm export is for GPU ranks; this plan runs on cpu ranks")
    if w.kv_dtype == "int8":
        raise SharderInputError("vllm export: vLLM has no plain int8 KV cache; plan with --kv-dtype fp8")

    model, caveat = v.hf_reference()
    comments: list[str] = [f"vLLM command for the sharder plan: {v.summary} ({v.model_name})"]
    if caveat:
        comments.append(caveat)

    fractions = [r["peak_reserved_bytes"] / r["capacity_bytes"] for r in v.ranks if r["capacity_bytes"] > 0]
    raw = max(fractions) if fractions else MAX_UTILIZATION
    util = min(MAX_UTILIZATION, max(MIN_UTILIZATION, ceil_to(raw, 2)))
    if raw > MAX_UTILIZATION:
        comments.append(f"the plan predicts {raw:.3f} of a GPU; capped at {MAX_UTILIZATION} (vLLM may not start)")

    argv = [model,
            "--tensor-parallel-size", str(par.tp),
            "--pipeline-parallel-size", str(par.pp)]
    if par.dp > 1:
        argv += ["--data-parallel-size", str(par.dp)]
    argv += ["--gpu-memory-utilization", f"{util:.2f}",
             "--max-model-len", str(w.context),
             "--max-num-seqs", str(w.batch),
             "--dtype", "float32" if w.precision == "32-true" else "bfloat16",
             "--kv-cache-dtype", _kv_cache_dtype(w)]
    if w.quant != "none":
        argv += ["--quantization", "bitsandbytes"]
        if w.quant == "int8":
            comments.append("int8: vLLM quantizes with bitsandbytes in flight to 4 bits only; for 8 bits serve a "
                            "checkpoint saved in bitsandbytes 8-bit (its config.json selects it)")
        else:
            comments.append(f"{w.quant}: bitsandbytes 4-bit in-flight quantization (unverified against the plan)")
    if par.offload != "none":
        host = max((int(r.get("host_bytes") or 0) for r in v.ranks), default=0)
        if host <= 0:  # the plan modelled no host bytes: offload the weights it placed on the GPU
            host = max(int((r.get("breakdown") or {}).get("parameters", 0)) for r in v.ranks)
        argv += ["--cpu-offload-gb", str(max(1, math.ceil(host / GiB)))]
        comments.append("--cpu-offload-gb: vLLM streams those weights over PCIe every forward (slow; unverified)")

    env: dict[str, str] = {}
    if par.pp > 1:
        stages = v.stage_layers()
        sizes = [end - start for start, end in stages]
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(n) for n in sizes)
    if len({int(r.get("node", 0)) for r in v.ranks}) > 1:
        argv += ["--distributed-executor-backend", "ray"]
        comments.append("multi-node: start a Ray cluster over the nodes first and run this on the head node")
    if len({r.get("gpu") for r in v.ranks}) > 1:
        comments.append("mixed GPU types: vLLM applies one --gpu-memory-utilization to every GPU "
                        "(the largest fraction the plan needs)")

    comments.append("KV cache: vLLM sizes it by its own start-up profiling (whatever gpu_memory_utilization x "
                    "total leaves after weights and a profiled forward), not from the plan's kv_cache bytes; "
                    "unverified against the plan")
    comments.append(f"the plan needs {w.batch} sequence(s) x {w.context} tokens of KV cache per replica; "
                    f"vLLM refuses to start if its budget cannot hold one --max-model-len sequence")
    return argv, env, comments


def _kv_cache_dtype(w) -> str:
    """vLLM's --kv-cache-dtype for the plan's --kv-dtype ("auto" = the model dtype)."""
    model_dtype = "fp32" if w.precision == "32-true" else "bf16"
    if w.kv_dtype in ("auto", model_dtype):
        return "auto"
    if w.kv_dtype == "fp8":
        return "fp8"
    if w.kv_dtype == "bf16":
        return "bfloat16"
    if w.kv_dtype == "fp16":
        return "float16"
    raise SharderInputError(f"vllm export: vLLM has no {w.kv_dtype} KV cache for a {model_dtype} model; "
                            f"plan with --kv-dtype auto or fp8")


def export(plan: dict) -> str:
    argv, env, comments = args(plan)
    lines = [f"# {c}" for c in comments]
    prefix = " ".join(f"{k}={shlex.quote(val)}" for k, val in env.items())
    head = (prefix + " " if prefix else "") + "vllm serve " + shlex.quote(argv[0])
    body, rest = [head], argv[1:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            body.append(f"  {flag} {shlex.quote(rest[i + 1])}")
            i += 2
        else:
            body.append(f"  {flag}")
            i += 1
    lines.append(" \\\n".join(body))
    return "\n".join(lines) + "\n"
