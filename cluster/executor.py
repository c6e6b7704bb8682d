"""`sharder run`: start a plan on a Ray pool, one actor per rank, and compare each rank's measured peak
with the plan's prediction.

    from sharder.cluster.executor import run_plan
    result = run_plan(plan_dict, steps=3)               # a local Ray, shut down before returning
    result = run_plan(plan_dict, address="HOST:PORT")   # an existing cluster, left running
    result["ok"], result["ranks"][r]["error_pct"], result["launch_overhead_s"]

Order: Ray (start a local one declaring the plan's devices, connect to `address`, or reuse the Ray this
process is connected to) → placement group (one bundle per rank, pinned to its node; SharderInputError
before anything starts if the pool cannot hold the plan) → actors (imports timed) → rank 0 picks the
rendezvous port → every rank `run` (rank_worker.run_rank) → collect.

Failures: a rank that raises is `error` (`oom` for an out-of-memory), a rank whose process dies is
`lost`, ranks still running at `timeout_s` after the run started are `timeout` (with the phase each was
in). After the first failure the others get `grace_s` to report what happened to them (a peer's death
shows as a gloo error there); whoever is still running then is killed and reported `stopped`. Every
actor is killed and the placement group removed on every exit path; a local Ray is shut down.

What is compared: on CUDA the measured `torch.cuda.max_memory_allocated` against the predicted
`peak_allocated_bytes`; on CPU (cpu ranks, or GPU ranks of a pool of logical GPUs) the measured tensor
peak against the predicted `peak_tensor_bytes` (the allocated figure without the CUDA device constants,
DESIGN §3). error_pct = 100 × (measured − predicted) / predicted. `ok` is false when a rank failed or
measured more than predicted × (1 + tolerance) (DESIGN exit code 1: "measured peak beyond prediction").
"""

from __future__ import annotations

import contextlib
import time

from sharder.errors import SharderInputError

from .placement import plan_placement
from .pool import connect, local_ray, ray_nodes

STATUSES = ("ok", "error", "oom", "lost", "timeout", "stopped")
_COMM_ERRORS = ("connection closed by peer", "connection reset", "broken pipe", "gloo", "timed out",
                "socket", "nccl")


def plan_cluster(plan: dict):
    """The ClusterSpec the plan was made for (from its `cluster` nodes; catalog names)."""
    from sharder.gpu_catalog import lookup_gpu
    from sharder.hardware import ClusterSpec, NodeSpec
    from sharder.pool_spec import default_inter_node_bandwidth

    nodes = []
    for node in plan["cluster"]["nodes"]:
        gpus = tuple(lookup_gpu(g) for g in node["gpus"])
        nodes.append(NodeSpec(index=int(node["index"]), gpus=gpus,
                              host_memory_bytes=int(node.get("host_memory_bytes") or 1),
                              inter_node_bandwidth=float(node.get("inter_node_bandwidth")
                                                         or default_inter_node_bandwidth(gpus))))
    return ClusterSpec(nodes=tuple(nodes), spec=plan["cluster"].get("spec", ""))


def check_plan(plan: dict) -> None:
    if not isinstance(plan, dict) or plan.get("schema") != "sharder.plan/1":
        raise SharderInputError("not a sharder plan (expected \"schema\": \"sharder.plan/1\"); "
                                "write one with `sharder plan -o plan.json`")
    for key in ("model", "workload", "parallel", "cluster", "ranks"):
        if not plan.get(key):
            raise SharderInputError(f"the plan lacks \"{key}\"; write it again with `sharder plan -o`")


@contextlib.contextmanager
def ray_session(plan: dict, address: str | None):
    """Yields (nodes, how): 'local' (started here, shut down on exit), 'address' (connected here,
    disconnected on exit, cluster left running) or 'attached' (this process was already connected)."""
    import ray

    if ray.is_initialized():
        yield ray_nodes(), "attached"
        return
    if address is None:
        with local_ray(plan_cluster(plan)) as nodes:
            yield nodes, "local"
        return
    connect(address)
    try:
        yield ray_nodes(), "address"
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


def run_plan(plan: dict, *, address: str | None = None, steps: int = 3, timeout_s: float = 600.0,
             tolerance: float = 0.03, inject_fault: dict | None = None, master_port: int | None = None,
             device: str = "auto", start_timeout_s: float = 300.0, grace_s: float = 3.0) -> dict:
    """Run the plan on Ray and measure every rank. See the module docstring for statuses and comparison.

    `timeout_s`: for the run itself (build + steps), from the moment every rank was told to start;
    `start_timeout_s`: for the actors to start (imports). `inject_fault`: {"rank": r, "kind":
    "raise"|"kill"|"hang"|"oom", "step": 1} (tests). `master_port`: rank 0's rendezvous port (default:
    one the kernel picks). `address` is ignored when this process is already connected to Ray (that
    Ray is used and left as it is). Raises SharderInputError (one line) for bad input: a malformed plan, an
    unreachable address, a pool that cannot hold the plan, a rendezvous port in use, or a plan every
    rank refuses to build.
    """
    check_plan(plan)
    if steps < 1:
        raise SharderInputError(f"steps must be >= 1 (step 0 is an extra warm-up), got {steps}")
    if inject_fault is not None and inject_fault.get("kind") not in ("raise", "kill", "hang", "oom"):
        raise SharderInputError(f"inject_fault kind must be raise, kill, hang or oom, got {inject_fault.get('kind')!r}")
    world = len(plan["ranks"])
    t0 = time.time()
    times: dict[str, float] = {}
    outcomes: dict[int, tuple[str, object]] = {}
    ready: dict[int, dict] = {}
    with ray_session(plan, address) as (nodes, how):
        times["ray_start_s"] = time.time() - t0
        with plan_placement(plan, nodes) as placed:
            times["placement_s"] = time.time() - t0 - times["ray_start_s"]
            actors = []
            try:
                _start_actors(placed, actors)
                ready, failed = _wait_ready(actors, start_timeout_s)
                outcomes.update(failed)
                times["actors_ready_s"] = time.time() - t0 - times["ray_start_s"] - times["placement_s"]
                if not failed:
                    import ray

                    try:
                        ip, port = ray.get(actors[0].pick_port.remote(master_port), timeout=60)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, SharderInputError):
                            raise SharderInputError(str(cause)) from None
                        raise
                    futures = {actors[r].run.remote(plan, world, ip, port, steps, device, timeout_s, inject_fault): r
                               for r in range(world)}
                    outcomes.update(_collect(futures, actors, timeout_s, grace_s))
            finally:
                _stop(actors)
    result = _report(plan, outcomes, ready, tolerance, t0, times, how)
    result["steps"] = steps
    errors = [o for s, o in outcomes.values() if s != "ok"]
    if errors and all(isinstance(e, SharderInputError) for e in errors) and len(errors) == world:
        raise SharderInputError(str(errors[0]))
    return result


# --------------------------------------------------------------------------------------------------
# actors
# --------------------------------------------------------------------------------------------------
def _start_actors(placed, actors: list) -> None:
    """One RankActor per rank in its bundle, appended to `actors` as made (so a failure midway still
    leaves every started one for _stop)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from .rank_actor import RankActor

    for slot in placed.ranks:
        extra = {k: v for k, v in slot.bundle.items() if k not in ("CPU", "GPU")}
        actors.append(RankActor.options(
            num_cpus=slot.bundle["CPU"], num_gpus=slot.bundle.get("GPU", 0), resources=extra or None,
            max_restarts=0, name=None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placed.group, placement_group_bundle_index=slot.rank),
        ).remote(slot.rank))


def _wait_ready(actors: list, timeout_s: float) -> tuple[dict, dict]:
    import ray

    futures = {a.ready.remote(): r for r, a in enumerate(actors)}
    ready, failed = {}, {}
    done, pending = ray.wait(list(futures), num_returns=len(futures), timeout=timeout_s)
    for f in done:
        rank = futures[f]
        try:
            ready[rank] = ray.get(f)
        except Exception as exc:  # the actor could not start (import error, killed)
            failed[rank] = _classify(exc)
    for f in pending:
        failed[futures[f]] = ("timeout", f"the rank's actor did not start within {timeout_s:.0f} s")
    if failed:
        for r in range(len(actors)):
            if r not in failed:
                failed[r] = ("stopped", "stopped: another rank's actor failed to start")
    return ready, failed


def _collect(futures: dict, actors: list, timeout_s: float, grace_s: float) -> dict:
    """Wait for every rank's run; on the first failure give the rest `grace_s`, then stop them."""
    import ray

    pending = dict(futures)
    outcomes: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout_s
    first_failure = None
    while pending:
        until = deadline if first_failure is None else min(deadline, first_failure + grace_s)
        left = until - time.monotonic()
        if left <= 0:
            break
        done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        for f in done:
            rank = pending.pop(f)
            try:
                outcomes[rank] = ("ok", ray.get(f))
            except Exception as exc:
                outcomes[rank] = _classify(exc)
                if first_failure is None:
                    first_failure = time.monotonic()
    progress = {rank: _progress(actors[rank]) for rank in pending.values()}
    behind = min((p[2] for p in progress.values()), default=None)
    for f, rank in pending.items():
        phase, secs, count = progress[rank]
        seen = f"last seen: {phase}" + (f", for {secs:.1f} s" if secs is not None else "")
        if first_failure is None:
            tail = "; furthest behind" if count == behind and len(pending) > 1 else ""
            outcomes[rank] = ("timeout", Timeout(f"did not finish within {timeout_s:g} s ({seen}{tail})", count))
        else:
            outcomes[rank] = ("stopped", f"stopped after another rank failed ({seen})")
    return outcomes


class Timeout(str):
    """A timeout message that remembers how far the rank got (phases entered)."""

    def __new__(cls, text: str, progress: int):
        obj = super().__new__(cls, text)
        obj.progress = progress
        return obj


def _progress(actor) -> tuple[str, float | None, int]:
    import ray

    try:
        return tuple(ray.get(actor.progress.remote(), timeout=5))
    except Exception:
        return "unknown (no answer)", None, 1 << 30


def _classify(exc: BaseException) -> tuple[str, object]:
    """(status, error) of a failed ray.get: error | oom | lost. The error is the original exception
    for a raise inside the rank (kept for SharderInputError), else a message."""
    import ray

    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "oom", _line(exc)
    if isinstance(exc, ray.exceptions.RayActorError):  # includes ActorDiedError
        text = _line(exc)
        return ("oom" if "memory" in text.lower() and "killed" in text.lower() else "lost"), \
            f"the rank's process died: {text}"
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else exc
    cause = cause if cause is not None else exc
    name = type(cause).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(cause).lower():
        return "oom", cause
    return "error", cause


def _line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if "died" in ln.lower() or "error" in ln.lower() or "killed" in ln.lower()]
    return (keep or lines or [type(exc).__name__])[0][:300]


def _message(err: object) -> str:
    if isinstance(err, BaseException):
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
    return str(err)


def _stop(actors: list, wait_s: float = 10.0) -> None:
    """Kill every actor (idle or not) and wait until Ray says they are dead."""
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
    ids = {a._actor_id.hex() for a in actors}
    deadline = time.monotonic() + wait_s
    while ids and time.monotonic() < deadline:
        alive = {aid for aid, state in live_actor_states().items() if state != "DEAD"}
        if not ids & alive:
            return
        time.sleep(0.1)


def live_actor_states() -> dict[str, str]:
    """{actor id: state} of every actor the connected Ray knows (GCS; works without the dashboard)."""
    import ray

    try:
        return {aid: info.get("State") for aid, info in ray._private.state.actors().items()}
    except Exception:
        from ray.util.state import list_actors

        return {a.actor_id: a.state for a in list_actors(limit=10000)}


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def _report(plan: dict, outcomes: dict, ready: dict, tolerance: float, t0: float, times: dict, how: str) -> dict:
    ranks = []
    for pred in sorted(plan["ranks"], key=lambda r: r["rank"]):
        r = pred["rank"]
        status, payload = outcomes.get(r, ("stopped", "never started"))
        row = {"rank": r, "gpu": pred.get("gpu"), "node": pred.get("node"), "layers": pred.get("layers"),
               "capacity_bytes": pred.get("capacity_bytes"),
               "peak_allocated_bytes": pred.get("peak_allocated_bytes"),
               "peak_tensor_bytes": pred.get("peak_tensor_bytes"),
               "peak_reserved_bytes": pred.get("peak_reserved_bytes"),
               "measured_peak_allocated_bytes": None, "measured_peak_reserved_bytes": None,
               "measured_rss_bytes": None, "error_pct": None, "within_tolerance": None,
               "step_time_s": None, "tokens_per_s": None, "status": status, "error": None}
        if status == "ok":
            m = payload
            cuda = m.get("device") == "cuda"
            basis = "peak_allocated_bytes" if cuda else "peak_tensor_bytes"
            predicted = pred.get(basis) or pred.get("peak_allocated_bytes")
            measured = m["measured_peak_allocated_bytes"]
            err = 100.0 * (measured - predicted) / predicted if predicted else None
            row.update(
                measured_peak_allocated_bytes=measured,
                measured_peak_reserved_bytes=m.get("measured_peak_reserved_bytes"),
                measured_peak_tensor_bytes=m.get("measured_peak_tensor_bytes"),
                measured_step_peaks_bytes=m.get("measured_step_peaks_bytes"),
                measured_rss_bytes=m.get("measured_rss_bytes"), rss_before_bytes=m.get("rss_before_bytes"),
                compared_with=basis, error_pct=round(err, 3) if err is not None else None,
                within_tolerance=(abs(err) <= 100 * tolerance) if err is not None else None,
                beyond_prediction=(err is not None and err > 100 * tolerance),
                step_time_s=m.get("step_time_s"), tokens_per_s=m.get("tokens_per_s"),
                step_times_s=m.get("step_times_s"), tracked_step_times_s=m.get("tracked_step_times_s"),
                device=m.get("device"), measured_by=m.get("measured_by"),
                measured_breakdown=m.get("measured_breakdown"), breakdown=pred.get("breakdown"),
                measured_peak_phase=m.get("measured_peak_phase"), peak_phase=pred.get("peak_phase"),
                warmup_peak_bytes=m.get("warmup_peak_bytes"), last_loss=m.get("last_loss"),
                measured_layers=m.get("layers"), import_s=m.get("import_s"), notes=m.get("notes") or [])
        else:
            row["error"] = _message(payload)
            if isinstance(payload, Timeout):
                row["_progress"] = payload.progress
        info = ready.get(r) or {}
        row["ray_node_id"] = info.get("node_id")
        ranks.append(row)
    firsts = [o[1].get("first_step_wall") for o in outcomes.values() if o[0] == "ok" and o[1].get("first_step_wall")]
    failed = [row for row in ranks if row["status"] != "ok"]
    culprit = _culprit(failed)
    for row in ranks:
        row.pop("_progress", None)
    ok = not failed and not any(row.get("beyond_prediction") for row in ranks)
    return {
        "ok": ok, "ranks": ranks, "steps": None, "tolerance": tolerance, "ray": how,
        "launch_overhead_s": round(max(firsts) - t0, 3) if firsts and len(firsts) == len(ranks) else None,
        "phases_s": {k: round(v, 3) for k, v in times.items()},
        "wall_s": round(time.time() - t0, 3),
        "failed_rank": culprit["rank"] if culprit else None,
        "error": f"rank {culprit['rank']} {culprit['status']}: {culprit['error']}" if culprit else None,
        "summary": plan.get("summary"),
    }


def _culprit(failed: list[dict]) -> dict | None:
    """The rank most likely at the root of a failure: a death or OOM, then an error that is not a
    communication error (peers of a dead rank see those), then any error, then a timeout."""
    def rank_of(row):
        msg = (row["error"] or "").lower()
        comm = any(word in msg for word in _COMM_ERRORS)
        order = {"lost": 0, "oom": 0, "error": 2 if comm else 1, "timeout": 3, "stopped": 4}
        return order.get(row["status"], 5), row.get("_progress", 0), row["rank"]

    return min(failed, key=rank_of) if failed else None
