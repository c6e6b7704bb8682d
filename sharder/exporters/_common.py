"""What every exporter needs from a plan dict: the validated workload and parallel config, the ranks,
the model reference, pipeline stages and device placement. Plain Python; imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sharder.errors import SharderInputError
from sharder.parallel import ParallelConfig
from sharder.workload import Workload

SCHEMA = "sharder.plan/1"  # the same string as sharder.plan_file.SCHEMA (not imported: keeps this light)
GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass(frozen=True)
class PlanView:
    """The parts of a plan dict the exporters read, checked once."""

    raw: dict
    workload: Workload
    parallel: ParallelConfig
    ranks: list[dict]
    headroom: float

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> dict:
        return self.raw.get("model") or {}

    @property
    def model_name(self) -> str:
        return str(self.model.get("name") or self.model.get("spec", {}).get("name") or "model")

    @property
    def model_type(self) -> str:
        cfg = self.model.get("hf_config") or {}
        return str(cfg.get("model_type") or self.model.get("spec", {}).get("model_type") or "llama")

    @property
    def num_layers(self) -> int | None:
        spec = self.model.get("spec") or {}
        if spec.get("num_layers"):
            return int(spec["num_layers"])
        cfg = self.model.get("hf_config") or {}
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
        return None

    @property
    def tied_embeddings(self) -> bool:
        spec = self.model.get("spec") or {}
        if "tie_word_embeddings" in spec:
            return bool(spec["tie_word_embeddings"])
        return bool((self.model.get("hf_config") or {}).get("tie_word_embeddings", False))

    @property
    def summary(self) -> str:
        return str(self.raw.get("summary") or self.parallel.summary(self.workload.precision))

    def hf_reference(self) -> tuple[str, str | None]:
        """(what to pass as the model to a serving/training tool, a caveat line or None).

        A catalog name gives its Hugging Face repository id; a config.json path gives its folder;
        anything else is passed through with a caveat."""
        from sharder import model_catalog  # plain dicts, no torch

        name = self.model_name
        canonical = model_catalog.resolve_name(name)
        if canonical is not None:
            hf_id = model_catalog.CATALOG[canonical].get("hf_id")
            if hf_id:
                return hf_id, None
            return name, (f"{name} is a sharder test model with no checkpoint on the Hub: "
                          f"replace it with a local model folder")
        path = Path(name)
        if path.name == "config.json":
            return str(path.parent), None
        if path.suffix == ".json":
            return str(path.parent), f"{name} is a config file; point this at the model folder holding the weights"
        return name, None

    # ------------------------------------------------------------------ ranks and devices
    def rank(self, index: int) -> dict:
        for r in self.ranks:
            if r.get("rank") == index:
                return r
        raise SharderInputError(f"plan has no rank {index}; write it again with `sharder plan -o`")

    def coords(self, rank: dict) -> tuple[int, int, int]:
        c = rank.get("coords")
        if isinstance(c, dict) and {"pp", "dp", "tp"} <= set(c):
            return int(c["pp"]), int(c["dp"]), int(c["tp"])
        return self.parallel.coords(int(rank["rank"]))

    def stage_layers(self) -> list[tuple[int, int]]:
        """[start, end) decoder layers of each pipeline stage, from the ranks (else from the config)."""
        stages: dict[int, tuple[int, int]] = {}
        for r in self.ranks:
            if "layers" in r and r["layers"] is not None:
                pp_i = self.coords(r)[0]
                rng = (int(r["layers"][0]), int(r["layers"][1]))
                if stages.setdefault(pp_i, rng) != rng:
                    raise SharderInputError(
                        f"plan ranks of pipeline stage {pp_i} disagree on their layers ({stages[pp_i]} vs {rng})")
        if len(stages) == self.parallel.pp:
            out = [stages[s] for s in range(self.parallel.pp)]
        elif self.num_layers:
            out = self.parallel.stage_layers(self.num_layers)
        else:
            raise SharderInputError(
                "plan gives no layer ranges and no layer count; write it again with `sharder plan -o`")
        for (_, end), (start, _) in zip(out, out[1:]):
            if end != start:
                raise SharderInputError(f"plan's pipeline stages are not contiguous: {out}")
        if out[0][0] != 0 or (self.num_layers and out[-1][1] != self.num_layers):
            raise SharderInputError(f"plan's pipeline stages {out} do not cover the model's {self.num_layers} layers")
        return out

    def node_sizes(self) -> list[int]:
        nodes = (self.raw.get("cluster") or {}).get("nodes") or []
        return [len(n.get("gpus") or []) for n in nodes]

    def local_index(self, rank: dict) -> int:
        """The rank's device index on its own node (what CUDA_VISIBLE_DEVICES numbering gives one process)."""
        sizes = self.node_sizes()
        index = int(rank["rank"])
        node = int(rank.get("node", 0))
        if sizes and node < len(sizes):
            return index - sum(sizes[:node])
        return index

    @staticmethod
    def is_cpu(rank: dict) -> bool:
        return str(rank.get("gpu", "")).lower() == "cpu"

    def usable_bytes(self, rank: dict) -> int:
        """capacity × (1 − headroom): the budget a rank was planned against."""
        return int(int(rank["capacity_bytes"]) * (1.0 - self.headroom))

    # ------------------------------------------------------------------ batches
    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all data-parallel replicas (batch is per replica)."""
        return self.workload.batch * self.parallel.dp


def view(plan: dict, *, need_ranks: bool = False) -> PlanView:
    """Check a plan dict and read its workload and parallel config (one clear line on anything wrong)."""
    if not isinstance(plan, dict):
        raise SharderInputError("export needs a plan (a JSON object written by `sharder plan -o`)")
    schema = plan.get("schema")
    if schema is not None and schema != SCHEMA:
        raise SharderInputError(f"plan schema {schema!r} is not {SCHEMA!r}; write the plan again with this sharder")
    for key in ("model", "workload", "parallel"):
        if not isinstance(plan.get(key), dict):
            raise SharderInputError(f"plan lacks \"{key}\"; write it again with `sharder plan -o`")
    try:
        workload = Workload.from_dict(plan["workload"])
        parallel = ParallelConfig.from_dict(plan["parallel"])
    except TypeError as exc:
        raise SharderInputError(f"plan file has a malformed field: {exc}") from None
    if plan.get("framework") not in (None, parallel.framework):
        raise SharderInputError(f"plan says framework {plan['framework']!r} but its parallel config says "
                                f"{parallel.framework!r}; write it again with `sharder plan -o`")
    ranks = plan.get("ranks") or []
    if not isinstance(ranks, list) or any(not isinstance(r, dict) or "rank" not in r for r in ranks):
        raise SharderInputError("plan \"ranks\" must be a list of objects with a \"rank\"")
    if need_ranks:
        if len(ranks) != parallel.world_size:
            raise SharderInputError(
                f"plan has {len(ranks)} ranks but its degrees make {parallel.world_size} "
                f"(pp {parallel.pp} × dp {parallel.dp} × tp {parallel.tp}); write it again with `sharder plan -o`")
        for r in ranks:
            for key in ("capacity_bytes", "peak_reserved_bytes"):
                if not isinstance(r.get(key), int) or r[key] < 0:
                    raise SharderInputError(f"plan rank {r['rank']} lacks an integer \"{key}\"")
    headroom = float(plan.get("headroom", 0.05))
    if not 0.0 <= headroom < 1.0:
        raise SharderInputError(f"plan headroom {headroom} must be in [0, 1)")
    return PlanView(raw=plan, workload=workload, parallel=parallel, ranks=sorted(ranks, key=lambda r: r["rank"]),
                    headroom=headroom)


def ceil_to(x: float, digits: int) -> float:
    """Round up to `digits` decimals, robust to float noise (0.8100000001 -> 0.82, 0.81 -> 0.81)."""
    scale = 10 ** digits
    return math.ceil(round(x * scale, 6)) / scale


def mib_string(n_bytes: int) -> str:
    """Bytes as a whole number of MiB, rounded down (accelerate's `convert_file_size_to_int` reads it)."""
    return f"{n_bytes // MiB}MiB"


def compute_dtype_name(workload: Workload) -> str:
    return "float32" if workload.precision == "32-true" else "bfloat16"
