"""The plan JSON (schema "sharder.plan/1"): written by `plan`, read by `estimate`, `verify`, `run`, `export`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from sharder import __version__
from sharder.breakdown import RankEstimate
from sharder.errors import SharderInputError
from sharder.hardware import ClusterSpec
from sharder.model_spec import ModelSpec
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

SCHEMA = "sharder.plan/1"


@dataclass(kw_only=True)
class Plan:
    """A plan: what to run where, and what every rank is predicted to need."""

    model: ModelSpec
    workload: Workload
    parallel: ParallelConfig
    cluster: ClusterSpec
    ranks: list[RankEstimate]
    headroom: float = 0.05
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    step_time_parts_s: dict[str, float] = field(default_factory=dict)
    global_batch: int | None = None

    @property
    def fits(self) -> bool:
        return all(r.fits for r in self.ranks)

    def summary(self) -> str:
        return self.parallel.summary(self.workload.precision)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "versions": versions(),
            "model": {"name": self.model.name, "spec": self.model.to_dict(), "hf_config": self.model.hf_config},
            "workload": self.workload.to_dict(),
            "framework": self.parallel.framework,
            "parallel": self.parallel.to_dict(),
            "summary": self.summary(),
            "global_batch": self.global_batch,
            "cluster": self.cluster.to_dict(),
            "headroom": self.headroom,
            "fits": self.fits,
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "step_time_parts_s": dict(self.step_time_parts_s),
            "ranks": [r.to_dict() for r in self.ranks],
        }


def estimate_plan(model: ModelSpec, workload: Workload, parallel: ParallelConfig, cluster: ClusterSpec,
                  headroom: float) -> Plan:
    """The plan for exactly these inputs: every rank from the cost model, the step time from its model."""
    from sharder.cost_model import estimate
    from sharder.step_time import step_time

    ranks = estimate(model, workload, parallel, cluster, headroom)
    seconds, tps, parts = step_time(model, workload, parallel, cluster)
    return Plan(model=model, workload=workload, parallel=parallel, cluster=cluster, ranks=ranks, headroom=headroom,
                step_time_s=seconds, tokens_per_s=tps, step_time_parts_s=parts,
                global_batch=workload.batch * parallel.dp if workload.training else None)


def versions() -> dict[str, str | None]:
    """sharder, torch and transformers versions, read from package metadata (no imports)."""
    out = {"sharder": __version__}
    for pkg in ("torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")


def read_plan_dict(path: str | Path) -> dict:
    """Load and check a plan file; one clear line on anything wrong."""
    p = Path(path)
    if not p.is_file():
        raise SharderInputError(f"plan file {path} does not exist; write one with `sharder plan ... -o {path}`")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise SharderInputError(f"plan file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SharderInputError(f"{path} is not a sharder plan (expected \"schema\": \"{SCHEMA}\")")
    for key in ("model", "workload", "parallel", "cluster"):
        if key not in data:
            raise SharderInputError(f"plan file {path} lacks \"{key}\"; write it again with `sharder plan -o`")
    return data


def plan_inputs(data: dict) -> tuple[ModelSpec, Workload, ParallelConfig, ClusterSpec, float]:
    """Rebuild the plain inputs of a plan (model, workload, parallel config, pool, headroom)."""
    from sharder.model_loader import spec_from_hf_config
    from sharder.pool_spec import parse_gpus

    model_part = data["model"]
    cfg = model_part.get("hf_config") or {}
    try:
        if cfg:
            model = spec_from_hf_config(cfg, model_part.get("name", "model"))
            layers = model_part.get("spec", {}).get("num_layers")
            if layers and layers != model.num_layers:
                model = model.with_layers(layers)
        else:
            model = ModelSpec(**{k: v for k, v in model_part["spec"].items()})
        workload = Workload.from_dict(data["workload"])
        parallel = ParallelConfig.from_dict(data["parallel"])
    except TypeError as exc:
        raise SharderInputError(f"plan file has a malformed field: {exc}") from None
    cluster_part = data["cluster"]
    nodes = cluster_part.get("nodes") or []
    host = nodes[0].get("host_memory_bytes") if nodes else None
    cluster = parse_gpus(cluster_part.get("spec") or "+".join(
        f"{len(n['gpus'])}x{n['gpus'][0]}" for n in nodes), host_memory_bytes=host)
    return model, workload, parallel, cluster, float(data.get("headroom", 0.05))
