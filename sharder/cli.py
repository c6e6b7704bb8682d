"""The `sharder` command: estimate, plan, verify, run, export, models, gpus, pool. Exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from sharder.errors import DoesNotFitError, SharderInputError

GIB = 1024 ** 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line (exit 2), no usage dump."""

    def error(self, message: str):  # noqa: D401
        raise SharderInputError(f"{message} (see `{self.prog} --help`)")


def _workload_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--model", help="catalog name (sharder models), config.json or model folder")
    g.add_argument("--mode", default="inference", choices=["train", "finetune", "lora", "qlora", "inference"])
    g.add_argument("--batch", type=int, default=None,
                   help="sequences per data-parallel replica (inference: concurrent sequences); default 1")
    g.add_argument("--seq", type=int, default=None, help="tokens per sequence (inference: prompt); default 4096")
    g.add_argument("--max-new-tokens", type=int, default=0, help="inference: tokens generated after the prompt")
    g.add_argument("--context", type=int, default=None, help="inference: total tokens the KV cache holds")
    g.add_argument("--micro-batches", type=int, default=None,
                   help="pipeline micro-batches (PP>1) or gradient-accumulation steps (PP=1)")
    g.add_argument("--precision", default=None, choices=["32-true", "bf16-mixed", "bf16-true"],
                   help="default bf16-true for inference/LoRA, bf16-mixed for train/finetune")
    g.add_argument("--quant", default="none", choices=["none", "int8", "nf4", "int4"])
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    g.add_argument("--lora-rank", type=int, default=16)
    g.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    g.add_argument("--ac", default=None, choices=["none", "full", "selective"], help="activation checkpointing")
    g.add_argument("--kv-dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "fp8", "int8"])
    g.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    g.add_argument("--layers", type=int, default=None, help="shrink the model to N decoder layers (quick checks)")


def _pool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pool")
    g.add_argument("--gpus", help="e.g. 4xA100-80, 2xA100-80+2xRTX4090, 2x8xH100, 4xcpu")
    g.add_argument("--headroom", type=float, default=0.05, help="fraction of each device kept free (0.05)")
    g.add_argument("--host-mem", type=float, default=None, help="host memory per node, GiB")
    g.add_argument("--inter-node-bw", type=float, default=None, help="network bandwidth per node, GB/s")


def _parallel_flags(p: argparse.ArgumentParser, solver: bool = False) -> None:
    g = p.add_argument_group("parallelism" + (" (pin a choice; the solver searches the rest)" if solver else ""))
    g.add_argument("--framework", default=None, choices=["torch", "deepspeed"])
    g.add_argument("--tp", type=int, default=None)
    g.add_argument("--pp", type=int, default=None)
    g.add_argument("--dp", type=int, default=None)
    g.add_argument("--dp-replicate", type=int, default=None, help="HSDP replica groups")
    g.add_argument("--ep", type=int, default=None, help="expert parallel degree (MoE)")
    g.add_argument("--zero", type=int, default=None, choices=[0, 1, 2, 3])
    g.add_argument("--fsdp", action="store_true", help="same as --zero 3")
    g.add_argument("--tp-layout", default=None, choices=["megatron", "hf", "layers"])
    g.add_argument("--sp", action="store_true", default=None, help="sequence parallel (needs --tp > 1)")
    g.add_argument("--offload", default=None, choices=["none", "optimizer", "params", "all"])
    g.add_argument("--schedule", default=None, choices=["1f1b", "gpipe"])
    g.add_argument("--split", default=None, help="layers per pipeline stage, e.g. 26,28,26")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sharder", description="Plan, verify and run LLMs sharded over many GPUs.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    est = sub.add_parser("estimate", help="per-rank memory of one fixed plan")
    _workload_flags(est), _pool_flags(est), _parallel_flags(est)
    est.add_argument("plan_file", nargs="?", help="a plan JSON instead of the flags")
    est.add_argument("--json", action="store_true")
    pl = sub.add_parser("plan", help="search the best plan for a pool")
    _workload_flags(pl), _pool_flags(pl), _parallel_flags(pl, solver=True)
    pl.add_argument("--global-batch", type=int, default=None, help="training: sequences per optimizer step, whole job")
    pl.add_argument("--top", type=int, default=5)
    pl.add_argument("--min", action="store_true", help="find the fewest GPUs of the given type that fit")
    pl.add_argument("--json", action="store_true")
    pl.add_argument("-o", "--output", help="write the chosen plan JSON here")
    pl.add_argument("--plot", help="write per-rank stacked bars (.png or .html)")
    ver = sub.add_parser("verify", help="simulate ranks in PyTorch on fake tensors and compare")
    _workload_flags(ver), _pool_flags(ver), _parallel_flags(ver)
    ver.add_argument("plan_file", nargs="?")
    ver.add_argument("--rank", type=int, default=None)
    ver.add_argument("--all-ranks", action="store_true")
    ver.add_argument("--tolerance", type=float, default=0.03)
    ver.add_argument("--json", action="store_true")
    run = sub.add_parser("run", help="start the plan on a Ray pool and measure every rank")
    _workload_flags(run), _pool_flags(run), _parallel_flags(run)
    run.add_argument("plan_file", nargs="?")
    run.add_argument("--address", default=None, help="Ray address (auto or host:port); default: a local Ray")
    run.add_argument("--steps", type=int, default=3)
    run.add_argument("--timeout", type=float, default=600.0)
    run.add_argument("--tolerance", type=float, default=0.03)
    run.add_argument("--json", action="store_true")
    exp = sub.add_parser("export", help="export a plan to deepspeed|accelerate|vllm|torchtitan|fsdp2")
    exp.add_argument("plan_file")
    exp.add_argument("--to", required=True)
    exp.add_argument("-o", "--output")
    mod = sub.add_parser("models", help="list the model catalog")
    mod.add_argument("--json", action="store_true")
    gp = sub.add_parser("gpus", help="list the GPU catalog")
    gp.add_argument("--json", action="store_true")
    pool = sub.add_parser("pool", help="read a Ray cluster into the pool the planner uses")
    pool.add_argument("--address", default="auto")
    pool.add_argument("--json", action="store_true")
    return p


# ------------------------------------------------------------------------------------------ inputs
def _model(args):
    from sharder.model_loader import load_model

    if not args.model:
        raise SharderInputError("--model is required, e.g. --model llama-70b (list: `sharder models`)")
    model = load_model(args.model)
    if args.layers is not None:
        if args.layers < 1:
            raise SharderInputError(f"--layers must be >= 1, got {args.layers}")
        model = model.with_layers(args.layers)
    return model


def _cluster(args):
    from sharder.pool_spec import parse_gpus

    if not args.gpus:
        raise SharderInputError("--gpus is required, e.g. --gpus 4xA100-80 (list: `sharder gpus`)")
    if not 0 <= args.headroom < 1:
        raise SharderInputError(f"--headroom must be in [0, 1), got {args.headroom}")
    host = int(args.host_mem * GIB) if args.host_mem is not None else None
    bw = args.inter_node_bw * 1e9 if args.inter_node_bw is not None else None
    return parse_gpus(args.gpus, host_memory_bytes=host, inter_node_bandwidth=bw)


def _workload(args, model):
    from sharder.workload import Workload

    training = args.mode != "inference"
    precision = args.precision or ("bf16-mixed" if args.mode in ("train", "finetune") else "bf16-true")
    seq = args.seq if args.seq is not None else 4096
    new = args.max_new_tokens
    if args.context is not None:
        if training:
            raise SharderInputError("--context is for --mode inference; training uses --seq")
        if args.seq is None and args.context < seq:
            seq = args.context
        if args.context < seq:
            raise SharderInputError(f"--context {args.context} is shorter than the prompt --seq {seq}")
        new = args.context - seq
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    quant = args.quant
    if args.mode == "qlora" and quant == "none":
        quant = "nf4"
    w = Workload(mode=args.mode, batch=1 if args.batch is None else args.batch, seq=seq, max_new_tokens=new,
                 micro_batches=1 if args.micro_batches is None else args.micro_batches, precision=precision, quant=quant,
                 optimizer=args.optimizer, lora_rank=args.lora_rank, lora_targets=targets,
                 ac=args.ac or "none", kv_dtype=args.kv_dtype, attention=args.attention)
    if model.model_type == "gemma2" and w.attention == "sdpa":
        w = replace(w, attention="eager")  # transformers runs Gemma-2 with eager attention only
    return w


def _split(text):
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SharderInputError(f"--split must be comma-separated layer counts, e.g. 26,28,26; got {text!r}") from None


def _parallel(args, n_devices: int):
    from sharder.parallel import ParallelConfig

    zero = 3 if args.fsdp else args.zero
    tp, pp = args.tp or 1, args.pp or 1
    for flag, value in (("--tp", tp), ("--pp", pp), ("--dp", args.dp)):
        if value is not None and value < 1:
            raise SharderInputError(f"{flag} must be a whole number >= 1, got {value}")
    if args.dp is None:
        if n_devices % (tp * pp):
            raise SharderInputError(
                f"tp {tp} × pp {pp} = {tp * pp} does not divide the pool's {n_devices} devices; "
                f"choose degrees whose product divides {n_devices}")
        dp = n_devices // (tp * pp)
    else:
        dp = args.dp
    if zero is None:
        zero = 0
    return ParallelConfig(framework=args.framework or "torch", tp=tp, pp=pp, dp=dp,
                          dp_replicate=args.dp_replicate or 1, ep=args.ep or 1, zero=zero,
                          tp_layout=args.tp_layout or "megatron", sp=bool(args.sp),
                          offload=args.offload or "none", schedule=args.schedule or "1f1b",
                          split=_split(args.split))


def _inputs(args):
    """(model, workload, parallel, cluster, headroom) from a plan file or the flags."""
    if getattr(args, "plan_file", None):
        from sharder.plan_file import plan_inputs, read_plan_dict

        return plan_inputs(read_plan_dict(args.plan_file))
    model = _model(args)
    cluster = _cluster(args)
    return model, _workload(args, model), _parallel(args, cluster.num_devices), cluster, args.headroom


def _warnings(model, workload, par, cluster) -> list[str]:
    from sharder.strategies.registry import unverified_parts

    gpu = cluster.devices[0].gpu
    parts = unverified_parts(workload, par, model, gpu)
    return [f"this plan relies on unverified parts: {', '.join(parts)}"] if parts else []


# ---------------------------------------------------------------------------------------- commands
def cmd_estimate(args, console) -> int:
    from sharder.plan_file import estimate_plan

    model, workload, par, cluster, headroom = _inputs(args)
    plan = estimate_plan(model, workload, par, cluster, headroom)
    ranks = plan.ranks
    warnings = _warnings(model, workload, par, cluster)
    if args.json:
        out = plan.to_dict()
        out["warnings"] = warnings
        print(json.dumps(out, indent=2))
    else:
        from sharder.report import print_estimate

        print_estimate(console, _header(model, workload, cluster), plan.summary(), ranks, warnings, headroom)
    return 0 if plan.fits else 1


def _header(model, workload, cluster) -> str:
    params = model.total_params()
    if workload.training:
        shape = f"{workload.mode}, batch {workload.batch}/replica × seq {workload.seq}"
    else:
        shape = f"inference, batch {workload.batch} × context {workload.context}"
    return (f"{model.name} ({params / 1e9:.2f} B params) on {cluster.spec or cluster.num_devices} — "
            f"{shape}, {workload.precision}" + (f", {workload.quant}" if workload.quant != "none" else ""))


def cmd_plan(args, console) -> int:
    from sharder.plan_file import write_plan
    from sharder.solver import SolveOptions, solve

    model = _model(args)
    cluster = _cluster(args)
    # plan: the solver sets the per-replica batch; a pinned --micro-batches applies to that, not --batch
    micro_batches, args.micro_batches = args.micro_batches, None
    workload = _workload(args, model)
    args.micro_batches = micro_batches
    pinned = {k: getattr(args, k) for k in ("tp", "pp", "dp", "dp_replicate", "ep", "zero", "tp_layout", "offload",
                                             "schedule") if getattr(args, k) is not None}
    if args.fsdp:
        pinned["zero"] = 3
    if args.sp is not None:
        pinned["sp"] = bool(args.sp)
    if args.split:
        pinned["split"] = _split(args.split)
    pinned_w = {}
    if args.ac is not None:
        pinned_w["ac"] = args.ac
    if args.micro_batches is not None:
        pinned_w["micro_batches"] = args.micro_batches
    if args.global_batch is not None and args.global_batch < 1:
        raise SharderInputError(f"--global-batch must be >= 1, got {args.global_batch}")
    if args.top < 1:
        raise SharderInputError(f"--top must be >= 1, got {args.top}")
    opts = SolveOptions(global_batch=args.global_batch, headroom=args.headroom, top=args.top,
                        framework=args.framework or "torch", pinned=pinned, pinned_workload=pinned_w)
    if args.min:
        return _cmd_plan_min(args, console, model, workload, opts)
    result = solve(model, workload, cluster, opts)
    if not result.plans:
        return _report_no_fit(args, console, model, workload, cluster, opts, result)
    best = result.best
    if args.output:
        write_plan(best, args.output)
    if args.plot:
        from sharder.plot import plot_plan

        plot_plan(best.to_dict(), args.plot)
    warnings = _warnings(model, best.workload, best.parallel, cluster)
    if args.json:
        out = best.to_dict()
        out["alternatives"] = [_alt(p) for p in result.plans]
        out["considered"] = result.considered
        out["warnings"] = warnings
        print(json.dumps(out, indent=2))
        return 0
    from sharder.report import plans_table, print_estimate

    console.print(plans_table(result.plans))
    console.print(f"({result.considered} candidates considered; step-time model assumptions: "
                  f"see `sharder.step_time`)")
    print_estimate(console, _header(model, best.workload, cluster), best.summary(), best.ranks, warnings,
                   args.headroom)
    if args.output:
        console.print(f"plan written to {args.output}")
    return 0


def _alt(p) -> dict:
    worst = max(p.ranks, key=lambda r: r.peak_reserved_bytes / r.capacity_bytes)
    return {"summary": p.summary(), "parallel": p.parallel.to_dict(), "micro_batches": p.workload.micro_batches,
            "ac": p.workload.ac, "tokens_per_s": p.tokens_per_s, "step_time_s": p.step_time_s,
            "worst_peak_reserved_bytes": worst.peak_reserved_bytes, "global_batch": p.global_batch}


def _gpu_type_spec(cluster) -> str | None:
    names = {g.name for n in cluster.nodes for g in n.gpus}
    return names.pop() if len(names) == 1 else None


def _report_no_fit(args, console, model, workload, cluster, opts, result) -> int:
    from sharder.pool_spec import parse_gpus
    from sharder.solver import fewest_gpus, helpful_knobs

    gpu = _gpu_type_spec(cluster)
    need = None
    if gpu:
        need = fewest_gpus(model, workload, lambda n: parse_gpus(f"{n}x{gpu}"), opts)
    knobs = helpful_knobs(model, workload, cluster, opts)
    advice = []
    if need:
        advice.append(f"the fewest {gpu} that fit: {need}")
    if knobs:
        advice.append(f"on this pool it fits with {' or '.join(knobs)}")
    msg = f"no plan fits {model.name} on {cluster.spec}" + (f"; {'; '.join(advice)}" if advice else "")
    if args.json:
        out = {"fits": False, "message": msg, "considered": result.considered, "fewest_gpus": need,
               "helpful_knobs": knobs, "ranks": []}
        if result.closest is not None:
            out.update(result.closest.to_dict())
            out["fits"] = False
        print(json.dumps(out, indent=2))
    else:
        if result.closest is not None:
            from sharder.report import print_estimate

            c = result.closest
            print_estimate(console, _header(model, c.workload, cluster) + " — the closest plan",
                           c.summary(), c.ranks, [], args.headroom)
        console.print(f"[red]{msg}[/red]")
    return 1


def _cmd_plan_min(args, console, model, workload, opts) -> int:
    from sharder.pool_spec import parse_gpus
    from sharder.solver import fewest_gpus

    cluster = _cluster(args)
    gpu = _gpu_type_spec(cluster)
    if not gpu:
        raise SharderInputError("--min needs one GPU type, e.g. --gpus A100-80 --min")
    need = fewest_gpus(model, workload, lambda n: parse_gpus(f"{n}x{gpu}"), opts)
    if need is None:
        msg = f"no count of {gpu} up to 4096 fits {model.name} for this workload"
        print(json.dumps({"fits": False, "message": msg})) if args.json else console.print(f"[red]{msg}[/red]")
        return 1
    args.gpus = f"{need}x{gpu}"
    args.min = False
    if not args.json:
        console.print(f"fewest {gpu} that fit: [bold]{need}[/bold]")
    return cmd_plan(args, console)


def cmd_verify(args, console) -> int:
    from sharder.verify import run_verify

    model, workload, par, cluster, headroom = _inputs(args)
    return run_verify(model, workload, par, cluster, headroom, rank=args.rank, all_ranks=args.all_ranks,
                      tolerance=args.tolerance, as_json=args.json, console=console)


def cmd_run(args, console) -> int:
    from sharder.run_command import run_command

    model, workload, par, cluster, headroom = _inputs(args)
    return run_command(model, workload, par, cluster, headroom, address=args.address, steps=args.steps,
                       timeout_s=args.timeout, tolerance=args.tolerance, as_json=args.json, console=console)


def cmd_export(args, console) -> int:
    from sharder.exporters import export_plan
    from sharder.plan_file import read_plan_dict

    text = export_plan(read_plan_dict(args.plan_file), args.to)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_models(args, console) -> int:
    from sharder.model_catalog import CATALOG, ALIASES
    from sharder.model_loader import load_model

    rows = []
    for name, entry in CATALOG.items():
        m = load_model(name)
        aliases = sorted(a for a, target in ALIASES.items() if target == name)
        rows.append({"name": name, "params": m.total_params(), "layers": m.num_layers, "hidden": m.hidden_size,
                     "family": m.model_type, "aliases": aliases, "test": bool(entry.get("test"))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    t = Table(title="model catalog")
    for col in ("name", "family", "params", "layers", "hidden", "aliases"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["family"], f"{r['params'] / 1e9:.2f} B" if r["params"] > 1e8 else f"{r['params']:,}",
                  str(r["layers"]), str(r["hidden"]), ", ".join(r["aliases"]))
    console.print(t)
    return 0


def cmd_gpus(args, console) -> int:
    from sharder.gpu_catalog import catalog

    rows = [{"name": g.name, "usable_bytes": g.usable_bytes, "marketed_bytes": g.marketed_bytes,
             "bf16_tflops": g.bf16_flops / 1e12, "mem_bandwidth_gbs": g.mem_bandwidth / 1e9, "link": g.link}
            for g in catalog().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    t = Table(title="GPU catalog (usable = what the device reports as its total)")
    for col in ("name", "usable GiB", "bf16 TFLOP/s", "HBM GB/s", "link"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['usable_bytes'] / GIB:.2f}", f"{r['bf16_tflops']:.1f}",
                  f"{r['mem_bandwidth_gbs']:.0f}", r["link"])
    console.print(t)
    return 0


def cmd_pool(args, console) -> int:
    from sharder.cluster.pool import discover_pool

    cluster = discover_pool(args.address)
    data = cluster.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for n in data["nodes"]:
            console.print(f"node {n['index']}: {len(n['gpus'])} × {', '.join(sorted(set(n['gpus'])))}, "
                          f"host {n['host_memory_bytes'] / GIB:.0f} GiB")
    return 0


COMMANDS = {"estimate": cmd_estimate, "plan": cmd_plan, "verify": cmd_verify, "run": cmd_run,
            "export": cmd_export, "models": cmd_models, "gpus": cmd_gpus, "pool": cmd_pool}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            build_parser().print_help()
            return 2
        return COMMANDS[args.command](args, console)
    except SharderInputError as exc:
        print(f"sharder: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except DoesNotFitError as exc:
        print(f"sharder: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sharder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
