"""One rank of a plan, run for real: build the shard, run the steps, measure the peak. No Ray in here.

    from sharder.cluster.rank_worker import run_rank
    out = run_rank(plan_dict, rank=0, world_size=1, master_addr="127.0.0.1", master_port=29500, steps=3)
    out["measured_peak_allocated_bytes"], out["step_time_s"], out["tokens_per_s"]

`rank_actor.RankActor` calls it inside a Ray actor; a GPU machine without Ray calls it directly (one
process per rank, e.g. from torchrun), and `fake_pg=True` runs one rank of any world size in this
process over the fake process group (collectives are no-ops; the memory is that rank's).

The shard is built the referee's way (DESIGN §3), from `cluster/build.py`: the transformers model on
the meta device, then TP (`parallelize_module`, per the plan's tp_layout) → LoRA → activation
checkpointing (`checkpoint_wrapper`, ac=full) → FSDP2 (`fully_shard` per decoder layer, then the root,
MixedPrecisionPolicy for bf16-mixed, CPUOffloadPolicy for --offload all) or DDP (ZeRO-0/1, dp > 1);
pipeline stages with `torch.distributed.pipelining` (GPipe / 1F1B); then `to_empty` onto the device,
re-tied embeddings, rebuilt rotary `inv_freq` (NaN losses otherwise) and N(0, 0.02) weights.
DeepSpeed plans (framework=deepspeed) go through `deepspeed.initialize` instead (see `_deepspeed`).

A step is the referee's (sim_train.train_step): forward with labels → backward → AdamW(foreach=False)
step → zero_grad(set_to_none=True); a pipeline step is one schedule.step over the micro-batches then
the optimizer; an inference step is a StaticCache prefill + decode of max_new_tokens (sim_infer.generate).
Step 0 is a warm-up; steps 1..N are measured:
* CUDA: torch.cuda.reset_peak_memory_stats() after the warm-up, then max_memory_allocated / reserved.
* CPU: PyTorch's MemTracker / FSDPMemTracker (the referee's subclasses in sim_tracker, so the count is
  the same: parameters, gradients, optimizer states, activations, temporaries, FSDP buffers, pipeline
  buffers, the input ids), one `with tracker:` block per step (its peak starts from the live bytes at
  entry), the largest over steps 1..N. Each step's peak is kept too: over real gloo one step's peak now
  and then sits a few % higher (seen once in ~40 FSDP2 steps; probably a collective's buffers released
  late, by the gloo thread). Plus the process's peak RSS over those steps (VmHWM after resetting it
  through /proc/self/clear_refs) as a second, coarser figure (it includes the libraries).
  The tracker slows every op several-fold, so on CPU N more untracked steps follow and give
  step_time_s; the tracked times are kept apart (tracked_step_times_s).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import re
import statistics
import time
from typing import Callable

import torch

from sharder.errors import SharderInputError
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

from . import build

FAULT_KINDS = ("raise", "kill", "hang", "oom")


class InjectedFault(RuntimeError):
    """Raised by inject_fault kind 'raise' (tests)."""


# --------------------------------------------------------------------------------------------------
# plan → plain inputs
# --------------------------------------------------------------------------------------------------
def plan_parts(plan: dict) -> tuple[ModelSpec, Workload, ParallelConfig]:
    """Model spec (with the plan's depth), workload and parallel config of a plan dict."""
    from sharder.model_loader import spec_from_hf_config

    part = plan["model"]
    cfg = part.get("hf_config") or {}
    if cfg:
        spec = spec_from_hf_config(cfg, part.get("name", "model"))
        layers = (part.get("spec") or {}).get("num_layers")
        if layers and layers != spec.num_layers:
            spec = spec.with_layers(layers)
    else:
        raise SharderInputError(f"plan model {part.get('name')!r} has no hf_config; `sharder run` builds the "
                                f"model from it (write the plan again with `sharder plan -o`)")
    return spec, Workload.from_dict(plan["workload"]), ParallelConfig.from_dict(plan["parallel"])


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise SharderInputError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SharderInputError("device cuda asked for, but torch sees no CUDA device here")
    return device


# --------------------------------------------------------------------------------------------------
# process group
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def process_group(rank: int, world_size: int, master_addr: str, master_port: int, device: str, *,
                  fake_pg: bool = False, timeout_s: float = 600.0):
    """The default group: gloo on CPU, cuda:nccl + cpu:gloo on CUDA, or the fake backend. Destroyed on exit."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a default process group is already initialized in this process")
    timeout = datetime.timedelta(seconds=max(30.0, timeout_s))
    if fake_pg:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    else:
        backend = "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                                    world_size=world_size, timeout=timeout)
        except Exception as exc:
            text = str(exc)
            if "EADDRINUSE" in text or "address already in use" in text.lower():
                raise SharderInputError(f"port {master_port} on {master_addr} is in use; choose another master "
                                        f"port or leave it unset") from None
            raise
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (VmHWM); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Peak over the measured steps: the tracker's tensor bytes (CPU) or the CUDA allocator's."""

    def __init__(self, device: str, make_tracker: Callable | None):
        self.device = device
        self.tracker = make_tracker() if (device == "cpu" and make_tracker is not None) else None
        self.peak = 0
        self.step_peaks: list[int] = []
        self.snapshot: dict[str, int] = {}
        self.phase = None
        self.module = None
        self.warmup_peak = 0
        self.rss_before = 0
        self.rss_reset = False

    @contextlib.contextmanager
    def step(self, measured: bool):
        if self.tracker is None:
            yield
            return
        with self.tracker:
            yield
        self.tracker.reset_mod_stats()
        peak = self.tracker.peak_bytes()
        if measured:
            self.step_peaks.append(peak)
        if not measured:
            self.warmup_peak = max(self.warmup_peak, peak)
        elif peak > self.peak:
            self.peak = peak
            self.snapshot = self.tracker.raw_snapshot("peak")
            self.phase, self.module = self.tracker.peak_phase, self.tracker.peak_module

    def start_measuring(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss_before = _status_kib("VmRSS") or 0
        self.rss_reset = reset_peak_rss()

    def result(self) -> dict:
        from .sim_tracker import to_sharder_categories

        out = {"measured_rss_bytes": (_status_kib("VmHWM") if self.rss_reset else None),
               "rss_before_bytes": self.rss_before,
               "measured_peak_tensor_bytes": self.peak if self.tracker is not None else None,
               "measured_step_peaks_bytes": list(self.step_peaks) if self.tracker is not None else None,
               "measured_breakdown": to_sharder_categories(self.snapshot) if self.snapshot else None,
               "measured_peak_phase": self.phase, "measured_peak_module": self.module,
               "warmup_peak_bytes": self.warmup_peak if self.tracker is not None else None}
        if self.device == "cuda":
            torch.cuda.synchronize()
            out["measured_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            out["measured_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
            out["measured_by"] = "torch.cuda.max_memory_allocated"
        else:
            out["measured_peak_allocated_bytes"] = self.peak
            out["measured_peak_reserved_bytes"] = None
            out["measured_by"] = "torch.distributed._tools MemTracker (sharder.cluster.sim_tracker)"
        return out


def _fault(inject: dict | None, rank: int, step: int) -> None:
    if not inject or int(inject.get("rank", -1)) != rank or int(inject.get("step", 1)) != step:
        return
    kind = inject.get("kind")
    if kind == "raise":
        raise InjectedFault(f"injected fault on rank {rank} at step {step}")
    if kind == "oom":
        raise torch.OutOfMemoryError(f"injected out-of-memory on rank {rank} at step {step}")
    if kind == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(3600)
    raise SharderInputError(f"inject_fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------
def uses_fsdp(parallel: ParallelConfig) -> bool:
    return parallel.framework == "torch" and parallel.zero >= 2


def apply_fsdp(model, workload: Workload, parallel: ParallelConfig, dp_mesh) -> None:
    """build.apply_fsdp plus CPUOffloadPolicy for --offload all (a copy of that function: the referee
    does not simulate offload, so its builder takes no offload policy)."""
    if parallel.offload == "none":
        build.apply_fsdp(model, workload, parallel, dp_mesh)
        return
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if workload.precision == "bf16-mixed" else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    reshard = parallel.zero == 3
    for layer in build.decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)


def prepare(model, spec: ModelSpec, workload: Workload, parallel: ParallelConfig, meshes: build.Meshes):
    """TP → LoRA → AC → FSDP, DESIGN §3's order (sim_train.prepare_model, with offload). → loss_parallel."""
    from .sim_train import prepare_model

    return prepare_model(spec, workload, parallel, meshes, model=model, apply_fsdp=apply_fsdp)[1]


def materialize(model, device: str, parallel: ParallelConfig) -> None:
    """to_empty + re-tie + rotary + N(0, 0.02); with CPU offload on CUDA the sharded parameters stay on
    the host and only the buffers go to the GPU (torchtitan's order)."""
    offload_on_gpu = device == "cuda" and parallel.offload != "none" and uses_fsdp(parallel)
    build.materialize(model, "cpu" if offload_on_gpu else _torch_device(device), init_std=0.02)
    if offload_on_gpu:
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.to(_torch_device(device))


def _torch_device(device: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")


def _on(device: torch.device):
    """Default device for tensors made inside (position ids, caches); nothing on CPU (the default already,
    and `with torch.device(...)` is a TorchFunctionMode that would sit on every op)."""
    return torch.device(device) if device.type != "cpu" else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def run_rank(plan: dict, rank: int, world_size: int, master_addr: str = "127.0.0.1", master_port: int = 29500,
             steps: int = 3, device: str = "auto", *, fake_pg: bool = False, timeout_s: float = 600.0,
             inject_fault: dict | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Run rank `rank` of `plan`: warm-up step 0, measured steps 1..steps. Returns plain data (see module doc)."""
    if steps < 1:
        raise SharderInputError(f"steps must be >= 1 (step 0 is the warm-up), got {steps}")
    report = progress or (lambda phase: None)
    spec, workload, parallel = plan_parts(plan)
    if parallel.world_size != world_size:
        raise SharderInputError(f"the plan's degrees multiply to {parallel.world_size}, world size is {world_size}")
    dev = pick_device(device)
    if dev == "cuda":
        # a Ray actor sees its one GPU as device 0; torchrun says LOCAL_RANK; else ranks fill the node's GPUs
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    t_start = time.time()
    report("process group")
    with process_group(rank, world_size, master_addr, master_port, dev, fake_pg=fake_pg, timeout_s=timeout_s):
        from .simulate import dtensor_patches

        with dtensor_patches():
            if parallel.framework == "deepspeed":
                runner = _deepspeed
            elif not workload.training:
                runner = _inference
            elif parallel.pp > 1:
                runner = _pipeline
            else:
                runner = _training
            out = runner(spec, workload, parallel, rank, dev, steps, inject_fault, report)
    out.update(rank=rank, world_size=world_size, device=dev, fake_pg=fake_pg, pid=os.getpid(),
               started_wall=t_start, torch_version=torch.__version__)
    times = out.pop("_times")
    out["step_times_s"] = [round(t, 6) for t in times]
    out["step_time_s"] = statistics.median(times) if times else None
    tokens = out.pop("_tokens")
    out["tokens_per_s"] = tokens / out["step_time_s"] if out["step_time_s"] else None
    report("done")
    return out


def _run_steps(step_fn, meter: Meter, steps: int, rank: int, inject: dict | None, report, device: str) -> dict:
    """Step 0 (warm-up), then steps 1..N measured. Returns timing fields."""
    times, first_wall, last_loss = [], None, None
    for i in range(steps + 1):
        _fault(inject, rank, i)
        report(f"step {i}" + (" (warm-up)" if i == 0 else ""))
        if i == 0:
            first_wall = time.time()
        gc.collect()  # what the last step left in reference cycles (e.g. a tagged StaticCache) goes now
        if i == 1:
            meter.start_measuring()
        t0 = time.perf_counter()
        with meter.step(measured=i > 0):
            loss = step_fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
        if loss is not None:
            last_loss = float(loss)
    tracked_times = times
    if meter.tracker is not None:  # the tracker slows every op: time N more steps without it
        report("timing steps")
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = step_fn()
            times.append(time.perf_counter() - t0)
            if loss is not None:
                last_loss = float(loss)
    out = {"_times": times, "first_step_wall": first_wall, "last_loss": last_loss,
           "tracked_step_times_s": [round(t, 6) for t in tracked_times] if meter.tracker is not None else None}
    if last_loss is not None and not math.isfinite(last_loss):
        out["notes"] = [f"loss is {last_loss} (not finite)"]
    return out


def _finish(meter: Meter, timing: dict, layers, tokens: int, notes: list[str]) -> dict:
    out = meter.result()
    out.update(timing)
    out["layers"] = list(layers)
    out["_tokens"] = tokens
    out["notes"] = notes + timing.get("notes", [])
    return out


def _training(spec, workload, parallel, rank, dev, steps, inject, report) -> dict:
    from .sim_train import train_step
    from .sim_tracker import training_tracker

    report("build")
    notes: list[str] = []
    meshes = build.build_meshes(parallel, dev)
    model = build.build_meta_model(spec, workload)
    loss_parallel = prepare(model, spec, workload, parallel, meshes)
    materialize(model, dev, parallel)
    fsdp = uses_fsdp(parallel)
    if not fsdp and parallel.dp > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, process_group=meshes.dp_group)
        notes.append("data parallel: torch DDP")
    zero1 = meshes.dp_group if (parallel.zero == 1 and parallel.dp > 1) else None
    optimizer = build.make_optimizer(model, workload, zero1_group=zero1)
    tdev = _torch_device(dev)
    torch.manual_seed(1234 + parallel.coords(rank)[1])
    ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq), device=tdev)

    meter = Meter(dev, lambda: training_tracker(model, optimizer, ids, fsdp))
    last = {}

    def step():
        with _on(tdev):
            _capture_loss(model, last)
            train_step(model, optimizer, ids, workload, parallel, loss_parallel)
        return last.get("loss")

    timing = _run_steps(step, meter, steps, rank, inject, report, dev)
    return _finish(meter, timing, (0, spec.num_layers), workload.batch * workload.seq, notes)


def _capture_loss(model, box: dict) -> None:
    """Keep the last loss as a float without holding the tensor (a forward hook on the causal LM)."""
    if getattr(model, "_sharder_loss_hook", False):
        return
    target = model.module if hasattr(model, "module") and not hasattr(model, "lm_head") else model

    def hook(module, args, output):
        loss = getattr(output, "loss", None)
        if loss is not None:
            local = loss.to_local() if hasattr(loss, "to_local") else loss
            box["loss"] = float(local.detach())

    target.register_forward_hook(hook)
    model._sharder_loss_hook = True


def _inference(spec, workload, parallel, rank, dev, steps, inject, report) -> dict:
    import dataclasses

    from .sim_infer import generate
    from .sim_tracker import SimMemTracker, SimRefType

    report("build")
    notes: list[str] = []
    meshes = build.build_meshes(parallel, dev)
    model = build.build_meta_model(spec, workload)
    if parallel.sp:
        parallel = dataclasses.replace(parallel, sp=False)
        notes.append("inference: sequence parallel ignored (a one-token decode step cannot be split)")
    if parallel.tp > 1:
        build.apply_tp(model, spec, parallel, meshes.tp)
    materialize(model, dev, parallel)
    tdev = _torch_device(dev)
    ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq), device=tdev)
    tracker_box = {}

    def make_tracker():
        tracker = SimMemTracker()
        tracker.track_external(model)
        tracker.track_as(SimRefType.INP, ids)
        tracker_box["t"] = tracker
        return tracker

    meter = Meter(dev, make_tracker)

    def step():
        with _on(tdev):
            generate(model, ids, workload, tracker=tracker_box.get("t"), decode_steps=workload.max_new_tokens)
        return None

    timing = _run_steps(step, meter, steps, rank, inject, report, dev)
    tokens = workload.batch * (workload.max_new_tokens or workload.seq)
    notes.append("tokens_per_s counts generated tokens (prompt tokens when max_new_tokens is 0)")
    return _finish(meter, timing, (0, spec.num_layers), tokens, notes)


# --------------------------------------------------------------------------------------------------
# pipeline (sim_pipeline's construction, on real tensors; its two private helpers copied here)
# --------------------------------------------------------------------------------------------------
def _static_warmup(schedule) -> None:
    """Every stage declares static shapes (as the referee does), so the schedule's p2p shape vote is skipped."""
    from torch.distributed.pipelining._utils import InferenceMode

    def warmup(stages, has_backward, p2p_done):
        for stage in stages:
            stage._inference_mode = InferenceMode.STATIC

    schedule._warmup_p2p = warmup


def _tag_buffers(stage, tracker_box: dict) -> None:
    """File the stage's receive buffers under "Pipeline Buffer" while a tracker is on."""
    from .sim_tracker import SimRefType

    for name in ("_prepare_forward_infra", "_prepare_backward_infra"):
        original = getattr(stage, name)

        def tagged(*args, _original=original, **kwargs):
            tracker = tracker_box.get("t")
            with (tracker.tag(SimRefType.PIPE) if tracker is not None else contextlib.nullcontext()):
                return _original(*args, **kwargs)

        setattr(stage, name, tagged)


def _example(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    if hasattr(t, "to_local"):
        from torch.distributed.tensor import DTensor

        local = torch.empty_like(t.to_local()).requires_grad_(requires_grad)
        return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False, shape=t.shape,
                                  stride=t.stride())
    return torch.empty_like(t).requires_grad_(requires_grad)


def _pipeline(spec, workload, parallel, rank, dev, steps, inject, report) -> dict:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from .sim_train import forward_context, loss_context, model_kwargs
    from .sim_tracker import training_tracker

    report("build")
    notes: list[str] = []
    stage_index = parallel.coords(rank)[0]
    start, end = parallel.stage_layers(spec.num_layers)[stage_index]
    first, last = stage_index == 0, stage_index == parallel.pp - 1
    micro, mb = workload.micro_batches, workload.micro_batch_size
    if parallel.dp > 1 and not uses_fsdp(parallel):
        raise SharderInputError("--pp with DDP/ZeRO-1 data parallel is not run here; use --zero 2 or 3")
    meshes = build.build_meshes(parallel, dev)
    full = build.build_meta_model(spec, workload)
    module = build.StageModule(full, start, end, first, last)
    loss_parallel = prepare(module, spec, workload, parallel, meshes)
    module.extra_kwargs = lambda batch: model_kwargs(module, workload, parallel, batch, first_stage=first)
    if workload.precision == "bf16-mixed" and not uses_fsdp(parallel):
        module.forward_context = lambda: forward_context(workload, parallel)

    def loss_fn(logits, labels):
        return full.loss_function(logits=logits, labels=labels, vocab_size=spec.vocab_size)

    tdev = _torch_device(dev)
    materialize(module, dev, parallel)
    torch.manual_seed(1234 + parallel.coords(rank)[1])
    ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq), device=tdev) if (first or last) else None
    with _on(tdev):
        if first:
            example_in = ids[:mb]
        else:
            hidden_seq = workload.seq // parallel.tp if parallel.sp else workload.seq
            probe_dtype = build.compute_dtype(workload) if (workload.precision == "bf16-true" or (
                workload.precision == "bf16-mixed" and uses_fsdp(parallel))) else torch.float32
            example_in = torch.zeros((mb, hidden_seq, spec.hidden_size), dtype=probe_dtype)
        with torch.no_grad(), loss_context(loss_parallel):
            probe_out = module(example_in)
        for sub in module.modules():
            if hasattr(sub, "reshard"):
                sub.reshard()
        input_args = example_in if first else _example(example_in, True)
        output_args = _example(probe_out, not last)
        del probe_out
    stage = PipelineStage(module, stage_index, parallel.pp, tdev, input_args=input_args, output_args=output_args,
                          group=meshes.pp_group)
    cls = Schedule1F1B if parallel.schedule == "1f1b" else ScheduleGPipe
    schedule = cls(stage, n_microbatches=micro, loss_fn=loss_fn)
    _static_warmup(schedule)
    optimizer = build.make_optimizer(module, workload)
    fsdp = uses_fsdp(parallel)
    tracker_box: dict = {}
    _tag_buffers(stage, tracker_box)

    def make_tracker():
        tracker = training_tracker(module, optimizer, ids, fsdp)
        tracker_box["t"] = tracker
        return tracker

    meter = Meter(dev, make_tracker)
    losses: list = []

    def step():
        losses.clear()
        with _on(tdev), loss_context(loss_parallel):
            if first:
                schedule.step(ids, target=ids if last else None, losses=losses if last else None)
            elif last:
                schedule.step(target=ids, losses=losses)
            else:
                schedule.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if losses:
            vals = [(x.to_local() if hasattr(x, "to_local") else x).detach().float() for x in losses]
            return float(sum(v.item() for v in vals) / len(vals))
        return None

    timing = _run_steps(step, meter, steps, rank, inject, report, dev)
    notes.append(f"pipeline stage {stage_index}/{parallel.pp}: layers [{start}, {end}), {parallel.schedule}, "
                 f"{micro} micro-batches of {mb}")
    if not (first or last):
        notes.append("middle stage: holds no input ids (the referee tracks them on every stage)")
    return _finish(meter, timing, (start, end), workload.batch * workload.seq, notes)


# --------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO (data parallel only)
# --------------------------------------------------------------------------------------------------
def _deepspeed(spec, workload, parallel, rank, dev, steps, inject, report) -> dict:
    """DeepSpeed ZeRO-1/2/3 over the data-parallel ranks, DeepSpeed's defaults for everything else
    (what strategies/deepspeed_zero.py models): fp32 for 32-true, `bf16` (fp32 masters) otherwise,
    the torch AdamW(foreach=False) as client optimizer. On CPU (`DS_ACCELERATOR=cpu`) the tracker
    cannot see the flat buffers DeepSpeed makes in `initialize` (its fp32 partitions, gradient
    buckets), so every tensor alive at the start of a measured step is found through the garbage
    collector and counted as "Other"; allocations during the step are tracked as usual."""
    if parallel.tp > 1 or parallel.pp > 1:
        raise SharderInputError("--framework deepspeed runs ZeRO data parallel only; use --framework torch for tp/pp")
    if dev == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed
    from torch.distributed._tools.mem_tracker import _MemRefType

    from .sim_tracker import SimMemTracker, SimRefType

    report("build")
    model = build.build_meta_model(spec, workload)
    if workload.adapters:
        build.apply_lora(model, workload)
    if workload.ac == "full":
        build.apply_ac(model)
    materialize(model, dev, parallel)
    optimizer = build.make_optimizer(model, workload)
    zero: dict = {"stage": parallel.zero}
    if parallel.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu"}
    if parallel.offload in ("params", "all") and parallel.zero == 3:
        zero["offload_param"] = {"device": "cpu"}
    config = {"train_micro_batch_size_per_gpu": workload.micro_batch_size,
              "gradient_accumulation_steps": workload.micro_batches,
              "zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": workload.precision != "32-true"},
              "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
    engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                dist_init_required=False)
    tdev = _torch_device(dev)
    torch.manual_seed(1234 + rank)
    ids = torch.randint(spec.vocab_size, (workload.batch, workload.seq), device=tdev)
    box: dict = {}

    def make_tracker():
        tracker = SimMemTracker()
        tracker.track_external(engine.module, optimizer)
        tracker.track_as(SimRefType.INP, ids)
        box["t"] = tracker
        return tracker

    meter = Meter(dev, make_tracker)
    size = workload.micro_batch_size

    def step():
        tracker = box.get("t")
        if tracker is not None:
            tracker.track_as(_MemRefType.OTH, *_live_tensors())
        loss_value = None
        for i in range(workload.micro_batches):
            x = ids[i * size:(i + 1) * size]
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
            loss_value = float(loss.detach())
            del loss
        return loss_value

    timing = _run_steps(step, meter, steps, rank, inject, report, dev)
    notes = [f"DeepSpeed {deepspeed.__version__} ZeRO-{parallel.zero}, defaults; tensors alive at a step's "
             f"start found through gc and counted as other"]
    return _finish(meter, timing, (0, spec.num_layers), workload.batch * workload.seq, notes)


def _live_tensors() -> list[torch.Tensor]:
    """Every tensor the garbage collector knows, one per storage (the largest view)."""
    import gc

    seen: dict[int, torch.Tensor] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta or obj.device.type == "meta":
                continue
            if hasattr(obj, "to_local"):
                continue
            key = obj.untyped_storage().data_ptr()
        except Exception:
            continue
        if key and key not in seen:
            seen[key] = obj
    return list(seen.values())
