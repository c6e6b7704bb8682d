"""Exporters: every target's text is checked by the tool that will read it (DeepSpeed's config parser,
accelerate's device-map checks on a transformers model, tomllib + torchtitan's key names, Python's
compiler + torch's own TP/FSDP2/AC APIs on a fake process group), or, for vLLM (not installed),
against a data file of its engine arguments."""

from __future__ import annotations

import ast
import copy
import json
import os
import shlex
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest

from sharder import model_catalog
from sharder.errors import SharderInputError
from sharder.exporters import TARGETS, export_plan
from sharder.model_loader import spec_from_hf_config
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

GiB = 1024 ** 3
MiB = 1024 ** 2
A100 = 85_899_345_920  # 80 GiB
DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ plans
def make_plan(model: str = "tiny-llama", *, layers: int | None = None, gpus: str = "A100-80",
              nodes: list[int] | None = None, capacity: int = A100, use: float = 0.5,
              headroom: float = 0.05, **knobs) -> dict:
    """A valid plan dict (the shape `Plan.to_dict()` writes) made by hand: workload and parallel
    knobs go to Workload / ParallelConfig; every rank gets `use` × capacity as its reserved peak."""
    w_fields = set(Workload.__dataclass_fields__)
    workload = Workload(**{k: v for k, v in knobs.items() if k in w_fields})
    par = ParallelConfig(**{k: v for k, v in knobs.items() if k not in w_fields})
    cfg = model_catalog.catalog_config(model)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    spec = spec_from_hf_config(cfg, model)
    world = par.world_size
    nodes = nodes or [world]
    assert sum(nodes) == world
    stages = par.stage_layers(spec.num_layers)
    ranks = []
    node_of = [n for n, size in enumerate(nodes) for _ in range(size)]
    for r in range(world):
        pp_i, dp_i, tp_i = par.coords(r)
        reserved = int(capacity * use)
        tensor = int(reserved * 0.9)
        parts = {"parameters": 0.5, "gradients": 0.1 if workload.training else 0.0,
                 "optimizer_states": 0.2 if workload.training else 0.0, "activations": 0.1,
                 "kv_cache": 0.0 if workload.training else 0.3, "comm_buffers": 0.05, "temporaries": 0.05}
        breakdown = {k: int(tensor * f) for k, f in parts.items()}
        breakdown["other"] = tensor - sum(breakdown.values())
        ranks.append({
            "rank": r, "gpu": gpus, "node": node_of[r], "layers": list(stages[pp_i]),
            "coords": {"pp": pp_i, "dp": dp_i, "tp": tp_i}, "capacity_bytes": capacity,
            "peak_allocated_bytes": tensor + 1000, "peak_tensor_bytes": tensor, "peak_reserved_bytes": reserved,
            "fits": reserved <= capacity * (1 - headroom), "peak_phase": "prefill",
            "breakdown": breakdown, "verified": {k: True for k in breakdown}, "host_bytes": 0, "notes": [],
        })
    return {
        "schema": "sharder.plan/1",
        "versions": {"sharder": "0.1.0", "torch": None, "transformers": None},
        "model": {"name": model, "spec": spec.to_dict(), "hf_config": spec.hf_config},
        "workload": workload.to_dict(),
        "framework": par.framework,
        "parallel": par.to_dict(),
        "summary": par.summary(workload.precision),
        "global_batch": workload.batch * par.dp if workload.training else None,
        "cluster": {"spec": "+".join(f"{n}x{gpus}" for n in nodes),
                    "nodes": [{"index": i, "gpus": [gpus] * n, "host_memory_bytes": 512 * GiB,
                               "inter_node_bandwidth": 50e9} for i, n in enumerate(nodes)]},
        "headroom": headroom,
        "fits": all(r["fits"] for r in ranks),
        "step_time_s": None, "tokens_per_s": None, "step_time_parts_s": {},
        "ranks": ranks,
    }


def one_line_error(excinfo, starts: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith(starts), msg


# ------------------------------------------------------------------------------------------------ package
def test_targets_and_unknown_target():
    assert TARGETS == ("deepspeed", "accelerate", "vllm", "torchtitan", "fsdp2")
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(), "megatron")
    one_line_error(exc, "unknown export target 'megatron'")
    for t in TARGETS:
        assert t in str(exc.value)


def test_unknown_option_and_bad_plan():
    with pytest.raises(SharderInputError, match="takes no option"):
        export_plan(make_plan(), "vllm", gradient_clipping=1.0)
    with pytest.raises(SharderInputError, match="not 'sharder.plan/1'"):
        export_plan({**make_plan(), "schema": "other/2"}, "vllm")
    bad = make_plan()
    del bad["workload"]
    with pytest.raises(SharderInputError, match="lacks \"workload\""):
        export_plan(bad, "vllm")
    short = make_plan(pp=2)
    short["ranks"] = short["ranks"][:1]
    with pytest.raises(SharderInputError, match="1 ranks but its degrees make 2"):
        export_plan(short, "vllm")


def test_importing_and_exporting_loads_no_torch():
    """`import sharder.exporters` and every export stay free of torch / transformers / deepspeed."""
    code = textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_export import make_plan
        from sharder.exporters import export_plan
        export_plan(make_plan(pp=2), "vllm")
        export_plan(make_plan(pp=2), "accelerate")
        export_plan(make_plan(mode="train", dp=2, zero=3, framework="deepspeed"), "deepspeed")
        export_plan(make_plan(mode="train", dp=2, tp=2, zero=3), "torchtitan")
        export_plan(make_plan(mode="train", dp=2, tp=2, zero=3), "fsdp2")
        heavy = [m for m in ("torch", "transformers", "deepspeed", "accelerate", "pytest") if m in sys.modules]
        print(json.dumps(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["pytest"]  # make_plan's module imports pytest


# ------------------------------------------------------------------------------------------------ deepspeed
@pytest.fixture(scope="module")
def ds_config_module():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    pytest.importorskip("deepspeed")
    import deepspeed.runtime.config as ds_config

    return ds_config


def ds_parse(ds_config, cfg: dict, world: int, monkeypatch):
    """DeepSpeed's own parser and sanity checks (DeepSpeedConfig), on CPU, with the data-parallel
    world size the plan has (deepspeed.comm is not initialized: its rank/world-size lookups are stubbed)."""
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: world)
    return ds_config.DeepSpeedConfig(copy.deepcopy(cfg))


@pytest.mark.parametrize("knobs", [
    dict(framework="deepspeed", dp=4, zero=1, batch=8, micro_batches=2, precision="bf16-mixed"),
    dict(framework="deepspeed", dp=2, zero=2, offload="optimizer", batch=4, precision="bf16-true"),
    dict(framework="deepspeed", dp=8, zero=3, offload="params", batch=2, precision="32-true", optimizer="sgd"),
    dict(framework="deepspeed", dp=2, zero=3, offload="all", batch=6, micro_batches=3, mode="lora"),
    dict(framework="torch", dp=4, zero=3, offload="all", batch=2, mode="finetune"),
    dict(framework="torch", dp=1, zero=0, batch=1),
])
def test_deepspeed_config_passes_deepspeed_validation(knobs, ds_config_module, monkeypatch):
    knobs = {"mode": "train", **knobs}
    plan = make_plan(**knobs)
    cfg = json.loads(export_plan(plan, "deepspeed", gradient_clipping=1.0))
    ds = ds_parse(ds_config_module, cfg, knobs["dp"], monkeypatch)
    micro = knobs["batch"] // knobs.get("micro_batches", 1)
    assert ds.train_micro_batch_size_per_gpu == micro
    assert ds.gradient_accumulation_steps == knobs.get("micro_batches", 1)
    assert ds.train_batch_size == knobs["batch"] * knobs["dp"] == plan["global_batch"]
    assert ds.zero_optimization_stage == knobs["zero"]
    offload = knobs.get("offload", "none")
    opt_dev = ds.zero_config.offload_optimizer.device if ds.zero_config.offload_optimizer else None
    par_dev = ds.zero_config.offload_param.device if ds.zero_config.offload_param else None
    assert (str(opt_dev).endswith("cpu")) == (offload in ("optimizer", "all"))
    assert (str(par_dev).endswith("cpu")) == (offload in ("params", "all") and knobs["zero"] == 3)
    assert ds.bfloat16_config.enabled == (knobs.get("precision", "bf16-true") != "32-true")
    assert not ds.float16_config.enabled
    assert ds.gradient_clipping == 1.0
    assert ds.optimizer_name.lower() == ("sgd" if knobs.get("optimizer") == "sgd" else "adamw")


def test_deepspeed_validation_is_not_vacuous(ds_config_module, monkeypatch):
    """The same parser rejects a wrong batch product and an unknown ZeRO key: the check above bites."""
    cfg = json.loads(export_plan(make_plan(mode="train", framework="deepspeed", dp=4, zero=2, batch=4), "deepspeed"))
    ds_parse(ds_config_module, cfg, 4, monkeypatch)
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        ds_parse(ds_config_module, cfg, 2, monkeypatch)  # a world of 2 does not make 16
    bad = copy.deepcopy(cfg)
    bad["zero_optimization"]["no_such_knob"] = 1
    with pytest.raises(Exception, match="no_such_knob"):
        ds_parse(ds_config_module, bad, 4, monkeypatch)


def test_deepspeed_buckets_are_what_the_cost_model_assumed():
    from sharder.exporters import deepspeed as ds_export
    from sharder.strategies import deepspeed_zero

    for name in ("REDUCE_BUCKET_SIZE", "ALLGATHER_BUCKET_SIZE", "STAGE3_PREFETCH_BUCKET_SIZE",
                 "STAGE3_MAX_LIVE_PARAMETERS", "STAGE3_PARAM_PERSISTENCE_THRESHOLD"):
        assert getattr(ds_export, name) == getattr(deepspeed_zero, name)
    cfg = json.loads(export_plan(make_plan(mode="train", framework="deepspeed", dp=2, zero=3), "deepspeed"))
    assert cfg["zero_optimization"]["stage3_max_live_parameters"] == deepspeed_zero.STAGE3_MAX_LIVE_PARAMETERS


def test_deepspeed_refuses_plans_without_an_equivalent():
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(mode="inference"), "deepspeed")
    one_line_error(exc, "deepspeed export needs a training plan; ")
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(mode="train", tp=2), "deepspeed")
    one_line_error(exc, "deepspeed export covers ZeRO data parallel only")
    with pytest.raises(SharderInputError, match="HSDP"):
        export_plan(make_plan(mode="train", dp=4, dp_replicate=2, zero=3), "deepspeed")


# ------------------------------------------------------------------------------------------------ accelerate
def hf_model(plan: dict, *, meta: bool = True):
    """The plan's model built by transformers from plan["model"]["hf_config"]."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(plan["model"]["hf_config"])
    model_type = cfg.pop("model_type")
    for key in ("architectures", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    if meta:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def strict_check_device_map(model, device_map: dict) -> None:
    """accelerate's own check that a device_map covers every tensor, with its 'key matches no
    submodule' warning turned into an error."""
    from accelerate.utils.modeling import check_device_map

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_device_map(model, device_map)


def test_accelerate_device_map_follows_the_plan_stages():
    pytest.importorskip("accelerate")
    from accelerate.utils.modeling import convert_file_size_to_int

    plan = make_plan(layers=6, pp=3, split=(1, 3, 2), use=0.4)
    out = json.loads(export_plan(plan, "accelerate"))
    dm = out["device_map"]
    strict_check_device_map(hf_model(plan), dm)
    for r in plan["ranks"]:
        start, end = r["layers"]
        for i in range(start, end):
            assert dm[f"model.layers.{i}"] == r["rank"]
    assert dm["model.embed_tokens"] == 0 and dm["model.rotary_emb"] == 0
    assert dm["model.norm"] == 2 and dm["lm_head"] == 2
    assert sorted(out["max_memory"]) == ["0", "1", "2"]
    for key, text in out["max_memory"].items():
        budget = A100 * (1 - plan["headroom"])
        assert budget - MiB < convert_file_size_to_int(text) <= budget
    assert out["dtype"] == "bfloat16"


def test_accelerate_device_map_dispatches_and_runs():
    """accelerate's dispatch_model accepts the map and hooks every listed module; with each device
    replaced by "cpu" (no GPU here) the dispatched model computes what the plain one does."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from accelerate import dispatch_model

    plan = make_plan(layers=4, pp=2, split=(1, 3), precision="32-true")
    dm = json.loads(export_plan(plan, "accelerate"))["device_map"]
    model = hf_model(plan, meta=False)
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    dispatched = dispatch_model(model, {k: "cpu" for k in dm}, main_device="cpu", force_hooks=True)
    hooked = {name for name, m in dispatched.named_modules() if hasattr(m, "_hf_hook")}
    assert {"model.embed_tokens", "model.layers.0", "model.layers.3", "model.norm", "lm_head"} <= hooked
    with torch.no_grad():
        got = dispatched(input_ids=ids).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", [n for n in model_catalog.catalog_names() if n.startswith("tiny-")])
def test_accelerate_module_names_match_transformers(name):
    """For every family in the catalog the map names real submodules and covers every tensor;
    tied embeddings keep the head with the embedding."""
    pytest.importorskip("accelerate")
    plan = make_plan(name, pp=2)
    out = json.loads(export_plan(plan, "accelerate"))
    model = hf_model(plan)
    strict_check_device_map(model, out["device_map"])
    embed = next(k for k in out["device_map"] if k.endswith(("embed_tokens", "embed_in", "word_embeddings")))
    if plan["model"]["spec"]["tie_word_embeddings"]:
        assert out["device_map"]["lm_head"] == out["device_map"][embed] == 0
        assert any("tied" in n for n in out["notes"])
    else:
        assert out["device_map"]["lm_head"] == 1


def test_accelerate_replicas_cpu_ranks_and_refusals():
    plan = make_plan(pp=2, dp=2)  # ranks (pp, dp): stage 0 = ranks 0, 1; stage 1 = ranks 2, 3
    out = json.loads(export_plan(plan, "accelerate"))
    assert out["device_map"]["model.embed_tokens"] == 0 and out["device_map"]["lm_head"] == 2
    assert [r["device_map"]["lm_head"] for r in out["replicas"]] == [2, 3]
    cpu = make_plan(pp=2, gpus="cpu", capacity=64 * GiB)
    out = json.loads(export_plan(cpu, "accelerate"))
    assert set(out["device_map"].values()) == {"cpu"} and list(out["max_memory"]) == ["cpu"]
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(tp=2), "accelerate")
    one_line_error(exc, "accelerate export: tensor parallel (TP=2)")
    with pytest.raises(SharderInputError, match="data parallel"):
        export_plan(make_plan(mode="train", dp=2), "accelerate")
    with pytest.raises(SharderInputError, match="span nodes"):
        export_plan(make_plan(pp=2, nodes=[1, 1]), "accelerate")
    # node-local device numbering: replica 1 is rank 1, the first device of node 1
    out = json.loads(export_plan(make_plan(dp=2, nodes=[1, 1]), "accelerate"))
    assert out["replicas"][1]["device_map"]["model.embed_tokens"] == 0
    assert out["replicas"][0]["device_map"]["model.embed_tokens"] == 0


# ------------------------------------------------------------------------------------------------ vllm
VLLM_ARGS = json.loads((DATA / "vllm_engine_args.json").read_text())["args"]


def parse_vllm(text: str) -> tuple[dict[str, str], str, dict[str, str], list[str]]:
    """(environment, model, {flag: value}, comment lines) of the exported command."""
    comments = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    command = " ".join(ln.rstrip("\\").strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    argv = shlex.split(command)
    env = {}
    while "=" in argv[0] and not argv[0].startswith("-"):
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    assert argv[:2] == ["vllm", "serve"], argv
    model, rest = argv[2], argv[3:]
    flags: dict[str, str] = {}
    i = 0
    while i < len(rest):
        assert rest[i].startswith("--"), rest[i]
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            flags[rest[i]] = rest[i + 1]
            i += 2
        else:
            flags[rest[i]] = ""
            i += 1
    return env, model, flags, comments


def check_against_engine_args(flags: dict[str, str]) -> None:
    for flag, value in flags.items():
        assert flag in VLLM_ARGS, f"{flag} is not a vLLM engine argument"
        spec = VLLM_ARGS[flag]
        kind = spec["type"]
        if kind == "flag":
            assert value == ""
            continue
        typed = {"int": int, "float": float, "str": str}[kind](value)  # raises if the type is wrong
        if kind == "int":
            assert str(typed) == value
        if "choices" in spec:
            assert typed in spec["choices"], (flag, value)
        if "min" in spec:
            assert typed >= spec["min"], (flag, value)
        if "min_exclusive" in spec:
            assert typed > spec["min_exclusive"], (flag, value)
        if "max" in spec:
            assert typed <= spec["max"], (flag, value)


@pytest.mark.parametrize("knobs, expect", [
    (dict(model="llama-2-70b", tp=4, seq=2048, max_new_tokens=512, batch=8),
     {"--tensor-parallel-size": "4", "--pipeline-parallel-size": "1", "--max-model-len": "2560",
      "--max-num-seqs": "8", "--dtype": "bfloat16", "--kv-cache-dtype": "auto"}),
    (dict(model="llama-3-8b", pp=2, dp=2, kv_dtype="fp8", precision="32-true", quant="nf4"),
     {"--pipeline-parallel-size": "2", "--data-parallel-size": "2", "--kv-cache-dtype": "fp8",
      "--dtype": "float32", "--quantization": "bitsandbytes"}),
    (dict(model="tiny-llama", quant="int8", kv_dtype="fp16"),
     {"--quantization": "bitsandbytes", "--kv-cache-dtype": "float16"}),
])
def test_vllm_flags_are_vllm_engine_arguments(knobs, expect):
    plan = make_plan(**knobs)
    env, model, flags, comments = parse_vllm(export_plan(plan, "vllm"))
    check_against_engine_args(flags)
    for flag, value in expect.items():
        assert flags[flag] == value
    assert float(flags["--gpu-memory-utilization"]) == 0.5
    hf_id = model_catalog.CATALOG[knobs["model"]]["hf_id"]
    assert model == (hf_id or knobs["model"])
    assert any("profiling" in c and "unverified" in c for c in comments)
    if knobs.get("pp", 1) > 1:
        assert env["VLLM_PP_LAYER_PARTITION"] == "16,16"


def test_vllm_memory_utilization_rounds_up_and_caps():
    def util(fractions: list[float]) -> str:
        plan = make_plan(pp=len(fractions))
        for r, f in zip(plan["ranks"], fractions):
            r["peak_reserved_bytes"] = int(r["capacity_bytes"] * f)
        return parse_vllm(export_plan(plan, "vllm"))[2]["--gpu-memory-utilization"]

    assert util([0.8123, 0.5]) == "0.82"  # the largest rank, rounded up
    assert util([0.7, 0.81]) == "0.81"  # exact hundredths stay
    assert util([0.991, 0.2]) == "0.95"  # capped
    assert util([0.001, 0.001]) == "0.05"


def test_vllm_uneven_split_offload_and_refusals():
    plan = make_plan(layers=6, pp=2, split=(2, 4))
    env, _, flags, _ = parse_vllm(export_plan(plan, "vllm"))
    assert env == {"VLLM_PP_LAYER_PARTITION": "2,4"}
    off = make_plan(zero=3, offload="all")
    _, _, flags, comments = parse_vllm(export_plan(off, "vllm"))
    check_against_engine_args(flags)
    assert float(flags["--cpu-offload-gb"]) >= 1
    multi = make_plan(pp=2, nodes=[1, 1])
    _, _, flags, _ = parse_vllm(export_plan(multi, "vllm"))
    assert flags["--distributed-executor-backend"] == "ray"
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(mode="train"), "vllm")
    one_line_error(exc, "vllm export needs an inference plan;")
    with pytest.raises(SharderInputError, match="int8 KV"):
        export_plan(make_plan(kv_dtype="int8"), "vllm")
    with pytest.raises(SharderInputError, match="ZeRO-3"):
        export_plan(make_plan(dp=2, zero=3), "vllm")


# ------------------------------------------------------------------------------------------------ torchtitan
# torchtitan's JobConfig fields per section (torchtitan/config/job_config.py) that the exporter may write
TORCHTITAN_KEYS = {
    "model": {"name", "flavor"},
    "parallelism": {"data_parallel_replicate_degree", "data_parallel_shard_degree", "fsdp_reshard_after_forward",
                    "tensor_parallel_degree", "disable_loss_parallel", "enable_async_tensor_parallel",
                    "pipeline_parallel_degree", "pipeline_parallel_split_points", "pipeline_parallel_schedule",
                    "pipeline_parallel_microbatch_size", "context_parallel_degree"},
    "activation_checkpoint": {"mode", "selective_ac_option"},
    "training": {"local_batch_size", "global_batch_size", "seq_len", "mixed_precision_param",
                 "mixed_precision_reduce", "enable_cpu_offload"},
    "optimizer": {"name"},
}


@pytest.mark.parametrize("knobs", [
    dict(model="llama-3-8b", dp=8, zero=3, ac="full", batch=4, micro_batches=2, precision="bf16-mixed"),
    dict(model="llama-3-70b", dp=4, dp_replicate=2, zero=3, tp=2, sp=True, ac="selective"),
    dict(model="llama-2-7b", pp=4, dp=2, zero=2, batch=8, micro_batches=4, schedule="gpipe", split=(6, 10, 10, 6)),
    dict(model="tiny-llama", tp=2, tp_layout="hf", dp=2, zero=0, precision="32-true"),
    dict(model="tiny-llama", dp=2, zero=3, offload="all"),
])
def test_torchtitan_toml_parses_and_degrees_make_the_world(knobs):
    knobs = {"mode": "train", **knobs}
    plan = make_plan(**knobs)
    doc = tomllib.loads(export_plan(plan, "torchtitan"))
    for section, values in doc.items():
        assert set(values) <= TORCHTITAN_KEYS[section], (section, set(values) - TORCHTITAN_KEYS[section])
    p, t = doc["parallelism"], doc["training"]
    world = (p["data_parallel_replicate_degree"] * p["data_parallel_shard_degree"] * p["tensor_parallel_degree"]
             * p["pipeline_parallel_degree"])
    assert world == len(plan["ranks"]) == ParallelConfig.from_dict(plan["parallel"]).world_size
    assert p["tensor_parallel_degree"] == knobs.get("tp", 1)
    assert p["pipeline_parallel_degree"] == knobs.get("pp", 1)
    dp = knobs.get("dp", 1)
    assert t["global_batch_size"] == knobs.get("batch", 1) * dp
    if knobs.get("zero", 0) >= 2:
        assert p["data_parallel_replicate_degree"] == knobs.get("dp_replicate", 1)
        assert p["fsdp_reshard_after_forward"] == ("always" if knobs["zero"] == 3 else "never")
    else:
        assert (p["data_parallel_replicate_degree"], p["data_parallel_shard_degree"]) == (dp, 1)
    assert p["enable_async_tensor_parallel"] is False
    if knobs.get("tp", 1) > 1:
        assert p["disable_loss_parallel"] == (knobs.get("tp_layout", "megatron") != "megatron")
    if knobs.get("pp", 1) > 1:
        assert p["pipeline_parallel_schedule"] == {"1f1b": "1F1B", "gpipe": "GPipe"}[knobs.get("schedule", "1f1b")]
        assert p["pipeline_parallel_microbatch_size"] * knobs["micro_batches"] == t["local_batch_size"]
        assert p["pipeline_parallel_split_points"] == ["layers.6", "layers.16", "layers.26"]
    else:  # gradient accumulation: global / (local × dp) = micro_batches
        assert t["global_batch_size"] // (t["local_batch_size"] * dp) == knobs.get("micro_batches", 1)
    assert doc["activation_checkpoint"]["mode"] == knobs.get("ac", "none")
    assert t["seq_len"] == plan["workload"]["seq"]
    assert t["mixed_precision_param"] == ("float32" if knobs.get("precision") == "32-true" else "bfloat16")
    assert t["enable_cpu_offload"] == (knobs.get("offload") == "all")
    if knobs["model"] == "llama-3-8b":
        assert doc["model"] == {"name": "llama3", "flavor": "8B"}


def test_torchtitan_refusals():
    with pytest.raises(SharderInputError) as exc:
        export_plan(make_plan(), "torchtitan")
    one_line_error(exc, "torchtitan export needs a training plan;")
    with pytest.raises(SharderInputError, match="DeepSpeed"):
        export_plan(make_plan(mode="train", framework="deepspeed", dp=2, zero=2), "torchtitan")
    with pytest.raises(SharderInputError, match="ZeRO-1"):
        export_plan(make_plan(mode="train", dp=2, zero=1), "torchtitan")
    with pytest.raises(SharderInputError, match="LORA"):
        export_plan(make_plan(mode="lora"), "torchtitan")


# ------------------------------------------------------------------------------------------------ fsdp2
def script_constants(text: str) -> dict:
    tree = ast.parse(text)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("knobs", [
    dict(mode="train", dp=4, tp=2, zero=3, ac="full", precision="bf16-mixed"),
    dict(mode="train", pp=2, dp=2, dp_replicate=2, zero=3, offload="all"),
    dict(mode="inference", tp=4),
    dict(mode="lora", dp=2, zero=3),
])
def test_fsdp2_script_compiles_with_the_plan_degrees(knobs):
    plan = make_plan(**knobs)
    text = export_plan(plan, "fsdp2")
    compile(text, "<fsdp2 export>", "exec")
    c = script_constants(text)
    for key in ("pp", "dp", "tp", "dp_replicate", "zero"):
        assert c[key.upper()] == plan["parallel"][key]
    assert c["WORLD_SIZE"] == c["PP"] * c["DP"] * c["TP"] == len(plan["ranks"])
    assert c["STAGE_LAYERS"] == [r["layers"] for r in plan["ranks"][:: c["DP"] * c["TP"]]]
    for api in ("init_device_mesh", "parallelize_module", "checkpoint_wrapper", "fully_shard",
                "MixedPrecisionPolicy", "CPUOffloadPolicy"):
        assert api in text


def test_fsdp2_refusals():
    with pytest.raises(SharderInputError, match="DeepSpeed"):
        export_plan(make_plan(mode="train", framework="deepspeed", dp=2, zero=2), "fsdp2")
    with pytest.raises(SharderInputError, match="fused"):
        export_plan(make_plan("tiny-phi3", mode="train", tp=2), "fsdp2")
    with pytest.raises(SharderInputError, match="tied"):
        export_plan(make_plan("tiny-qwen2", mode="train", tp=2), "fsdp2")


_FAKE_PG_RUNNER = r'''
import json, sys
import torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from transformers import AutoConfig, AutoModelForCausalLM

cases = json.loads(sys.stdin.read())
results = []
for case in cases:
    ns = {"__name__": "sharder_fsdp2_export"}
    exec(compile(case["script"], "<fsdp2 export>", "exec"), ns)
    world, rank = ns["WORLD_SIZE"], case["rank"]
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    cfg = dict(case["hf_config"]); model_type = cfg.pop("model_type")
    for key in ("architectures", "torch_dtype"):
        cfg.pop(key, None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
    mesh = ns["build_mesh"]("cpu")
    module = ns["parallelize"](model, mesh)
    layers = ns["decoder_layers"](module)
    placements = {}
    for name, p in module.named_parameters():
        if hasattr(p, "placements"):
            placements[name] = [f"{type(x).__name__.lstrip('_')}({getattr(x, 'dim', '')})" for x in p.placements]
    results.append({
        "mesh": list(mesh.mesh_dim_names), "shape": list(mesh.shape),
        "layers": len(layers),
        "layer_types": sorted({type(l).__name__ for l in layers}),
        "root_type": type(module).__name__,
        "placements": placements,
        "has_embed": module.get_input_embeddings() is not None,
        "has_head": module.get_output_embeddings() is not None,
    })
    dist.destroy_process_group()
print("RESULTS " + json.dumps(results))
'''


def test_fsdp2_script_parallelizes_a_real_model_under_a_fake_process_group():
    """The exported functions run torch's real init_device_mesh / parallelize_module /
    checkpoint_wrapper / fully_shard / pipeline-stage split on the transformers model of the plan,
    for one rank of the plan's world (fake process group, meta tensors: no GPU, no communication)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    specs = [
        ("tp-megatron-sp + fsdp + ac", dict(mode="train", layers=4, dp=2, tp=2, zero=3, sp=True, ac="full",
                                            precision="bf16-mixed"), 3),
        ("hsdp + pp stage 1", dict(mode="train", layers=4, pp=2, dp=4, dp_replicate=2, zero=3, split=(1, 3),
                                   micro_batches=2, batch=2), 7),
        ("tp-hf inference", dict(mode="inference", layers=2, tp=2, tp_layout="hf"), 1),
        ("ddp + selective ac", dict(mode="train", layers=2, dp=2, zero=0, ac="selective"), 0),
    ]
    cases = []
    for _, knobs, rank in specs:
        plan = make_plan(**knobs)
        cases.append({"script": export_plan(plan, "fsdp2"), "rank": rank, "hf_config": plan["model"]["hf_config"]})
    proc = subprocess.run([sys.executable, "-c", _FAKE_PG_RUNNER], input=json.dumps(cases), capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))
    tp_sp, hsdp_pp, tp_hf, ddp = json.loads(line[len("RESULTS "):])

    # TP 2 (megatron, SP) inside FSDP over dp 2: q is column-sharded over tp and sharded over dp
    assert tp_sp["mesh"] == ["pp", "dp", "tp"] and tp_sp["shape"] == [1, 2, 2]
    assert tp_sp["layers"] == 4 and tp_sp["layer_types"] == ["FSDPCheckpointWrapper"]
    q = next(v for k, v in tp_sp["placements"].items() if k.endswith("layers.0._checkpoint_wrapped_module"
                                                                       ".self_attn.q_proj.weight"))
    assert q == ["StridedShard(0)", "Shard(0)"]  # dim 0 over tp (column-wise), then over dp (FSDP)
    o = next(v for k, v in tp_sp["placements"].items() if k.endswith("self_attn.o_proj.weight"))
    assert o == ["Shard(0)", "Shard(1)"]  # row-wise over tp
    assert tp_sp["placements"]["model.embed_tokens.weight"] == ["StridedShard(0)", "Shard(0)"]  # vocab rows
    norm = next(v for k, v in tp_sp["placements"].items() if k.endswith("input_layernorm.weight"))
    assert norm == ["Shard(0)", "Replicate()"]  # sequence parallel keeps norms whole over tp
    assert tp_sp["root_type"].startswith("FSDP")

    # rank 7 of pp 2 x (2 x 2) HSDP: last stage holds layers 1..3, head, no embedding
    assert hsdp_pp["mesh"] == ["pp", "dp_replicate", "dp_shard", "tp"] and hsdp_pp["shape"] == [2, 2, 2, 1]
    assert hsdp_pp["layers"] == 3 and not hsdp_pp["has_embed"] and hsdp_pp["has_head"]
    assert hsdp_pp["root_type"] == "FSDPStage" and hsdp_pp["layer_types"] == ["FSDPLlamaDecoderLayer"]
    assert all(v == ["Replicate()", "Shard(0)"] for v in hsdp_pp["placements"].values())

    # TP with transformers' layout: embedding stays a plain tensor, head column-sharded
    assert "model.embed_tokens.weight" not in tp_hf["placements"]
    assert tp_hf["placements"]["lm_head.weight"] == ["Shard(0)"]
    assert tp_hf["placements"]["model.layers.1.mlp.down_proj.weight"] == ["Shard(1)"]

    # DDP (zero 0): no DTensors before DistributedDataParallel wraps it; layers checkpoint-wrapped
    assert ddp["placements"] == {} and ddp["layer_types"] == ["CheckpointWrapper"]


def run_fsdp2_script(plan: dict, tmp_path: Path) -> str:
    """Run the exported script's main() for real: torchrun, one CPU process per rank, gloo, random weights
    (SHARDER_DEVICE=cpu), the model read from the plan's config saved in tmp_path."""
    import re

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(plan["model"]["hf_config"]))
    text = re.sub(r"^MODEL = .*$", f"MODEL = {str(model_dir)!r}", export_plan(plan, "fsdp2"), flags=re.M)
    script = tmp_path / "apply_plan.py"
    script.write_text(text)
    world = len(plan["ranks"])
    env = {**os.environ, "SHARDER_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                           str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # one line per rank; ranks share stdout, so their lines may interleave: count, don't split
    assert proc.stdout.count(" done, peak allocated") == world, proc.stdout[-2000:]
    return proc.stdout


def test_fsdp2_script_runs_a_training_step_on_cpu(tmp_path):
    """4 ranks = DP 2 (FSDP2, bf16 mixed precision) × TP 2 (megatron layout, sequence parallel, loss
    parallel), activation checkpointing: the whole script, forward + backward + AdamW step."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    run_fsdp2_script(make_plan(mode="train", layers=2, dp=2, tp=2, sp=True, zero=3, ac="full", batch=2,
                               micro_batches=2, seq=16, precision="bf16-mixed"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("knobs", [
    dict(mode="train", layers=2, pp=2, tp=2, sp=True, batch=2, micro_batches=2, precision="32-true"),
    dict(mode="train", layers=4, pp=2, dp=2, zero=3, split=(1, 3), batch=2, micro_batches=2, schedule="gpipe"),
    dict(mode="train", layers=2, dp=2, dp_replicate=2, zero=3, batch=2, ac="selective"),
    dict(mode="train", layers=2, dp=2, zero=0, batch=2),
    dict(mode="train", layers=2, dp=2, zero=1, batch=2),
    dict(mode="train", layers=2, tp=2, sp=True, tp_layout="hf", attention="eager", batch=2, precision="32-true"),
    dict(mode="inference", layers=2, pp=2, batch=2),
    dict(mode="inference", layers=2, tp=2, batch=2),
], ids=["pp2-tp2-sp", "pp2-fsdp2-gpipe", "hsdp-selective-ac", "ddp", "zero1", "tp-hf-sp-eager", "pp-infer",
        "tp-infer"])
def test_fsdp2_script_runs_more_layouts_on_cpu(knobs, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    run_fsdp2_script(make_plan(seq=16, **knobs), tmp_path)


def test_exports_of_plans_written_by_the_planner():
    """Contract with sharder.plan_file: plans made by the cost model and Plan.to_dict() export to
    every target that has an equivalent, and the exported numbers are the plan's."""
    from sharder.cost_model import estimate
    from sharder.model_loader import load_model
    from sharder.plan_file import Plan
    from sharder.pool_spec import parse_gpus

    def plan(model, gpus, workload, parallel):
        m, c = load_model(model), parse_gpus(gpus)
        return Plan(model=m, workload=workload, parallel=parallel, cluster=c,
                    ranks=estimate(m, workload, parallel, c)).to_dict()

    infer = plan("llama-2-70b", "4xA100-80", Workload(mode="inference", batch=4, seq=2048, max_new_tokens=256),
                 ParallelConfig(pp=4))
    dm = json.loads(export_plan(infer, "accelerate"))["device_map"]
    assert [dm[f"model.layers.{i}"] for i in (0, 19, 20, 79)] == [0, 0, 1, 3]
    env, model, flags, _ = parse_vllm(export_plan(infer, "vllm"))
    check_against_engine_args(flags)
    assert model == "meta-llama/Llama-2-70b-hf" and env["VLLM_PP_LAYER_PARTITION"] == "20,20,20,20"
    worst = max(r["peak_reserved_bytes"] / r["capacity_bytes"] for r in infer["ranks"])
    assert worst <= float(flags["--gpu-memory-utilization"]) < worst + 0.01 + 1e-9
    for target in ("deepspeed", "torchtitan"):
        with pytest.raises(SharderInputError, match="training plan"):
            export_plan(infer, target)

    train = plan("llama-3-8b", "8xH100-80-SXM", Workload(mode="train", batch=2, seq=2048, ac="full",
                                                          precision="bf16-mixed"),
                 ParallelConfig(dp=4, tp=2, zero=3))
    doc = tomllib.loads(export_plan(train, "torchtitan"))
    assert doc["parallelism"]["data_parallel_shard_degree"] * doc["parallelism"]["tensor_parallel_degree"] == 8
    compile(export_plan(train, "fsdp2"), "<fsdp2>", "exec")
    ds = plan("llama-2-7b", "4xA100-80", Workload(mode="train", batch=2, seq=1024, precision="bf16-mixed"),
              ParallelConfig(framework="deepspeed", dp=4, zero=2, offload="optimizer"))
    cfg = json.loads(export_plan(ds, "deepspeed"))
    assert cfg["train_batch_size"] == 8 and cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
