"""ParallelConfig: the parallel degrees and strategy flags of a plan, validated once where made."""

from __future__ import annotations

from dataclasses import dataclass, asdict

from sharder.errors import SharderInputError

FRAMEWORKS = ("torch", "deepspeed")
TP_LAYOUTS = ("megatron", "hf", "layers")
OFFLOADS = ("none", "optimizer", "params", "all")
SCHEDULES = ("1f1b", "gpipe")


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """Degrees and flags. World size = pp × dp × tp; ranks ordered (pp, dp, tp), tp fastest."""

    framework: str = "torch"
    tp: int = 1
    pp: int = 1
    dp: int = 1
    """Data-parallel degree, replicated and sharded groups together."""
    dp_replicate: int = 1
    """HSDP: replicate over this many groups, shard inside each (divides dp)."""
    ep: int = 1
    """Expert parallel degree for MoE (divides dp × tp ranks of a stage, and the expert count)."""
    zero: int = 0
    """0 DDP, 1 optimizer sharded, 2 + gradients sharded (no reshard after forward), 3 FSDP full shard."""
    tp_layout: str = "megatron"
    sp: bool = False
    """Sequence parallel on the norms (needs TP > 1)."""
    offload: str = "none"
    schedule: str = "1f1b"
    split: tuple[int, ...] | None = None
    """Decoder layers per pipeline stage; None: round(s·L/P) boundaries."""

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise SharderInputError(f"--framework {self.framework!r} is not one of: {', '.join(FRAMEWORKS)}")
        for flag, value in (("--tp", self.tp), ("--pp", self.pp), ("--dp", self.dp),
                            ("--dp-replicate", self.dp_replicate), ("--ep", self.ep)):
            if not isinstance(value, int) or value < 1:
                raise SharderInputError(f"{flag} must be a whole number >= 1, got {value!r}")
        if self.zero not in (0, 1, 2, 3):
            raise SharderInputError(f"--zero must be 0, 1, 2 or 3, got {self.zero!r}")
        if self.tp_layout not in TP_LAYOUTS:
            raise SharderInputError(f"--tp-layout {self.tp_layout!r} is not one of: {', '.join(TP_LAYOUTS)}")
        if self.offload not in OFFLOADS:
            raise SharderInputError(f"--offload {self.offload!r} is not one of: {', '.join(OFFLOADS)}")
        if self.schedule not in SCHEDULES:
            raise SharderInputError(f"--schedule {self.schedule!r} is not one of: {', '.join(SCHEDULES)}")
        if self.dp % self.dp_replicate:
            raise SharderInputError(
                f"--dp-replicate {self.dp_replicate} must divide the data-parallel degree {self.dp}")
        if self.dp_replicate > 1 and self.zero < 2:
            raise SharderInputError("--dp-replicate (HSDP) needs FSDP: add --zero 3 (or --fsdp)")
        if self.sp and self.tp == 1:
            raise SharderInputError("--sp (sequence parallel) needs --tp > 1")
        if self.framework == "torch" and self.offload in ("optimizer", "params"):
            raise SharderInputError(
                f"--offload {self.offload} is DeepSpeed's; with --framework torch use --offload all "
                f"(FSDP2 CPUOffloadPolicy) or --framework deepspeed")
        if self.framework == "torch" and self.offload == "all" and self.zero < 2:
            raise SharderInputError("--offload all (FSDP2 CPUOffloadPolicy) needs FSDP: add --zero 3")
        if self.framework == "deepspeed" and self.offload == "params" and self.zero != 3:
            raise SharderInputError("--offload params needs --zero 3 with --framework deepspeed")
        if self.framework == "deepspeed" and self.offload != "none" and self.zero == 0:
            raise SharderInputError("DeepSpeed offload needs ZeRO: add --zero 1, 2 or 3")
        if self.framework == "deepspeed" and (self.tp > 1 or self.pp > 1):
            raise SharderInputError("--framework deepspeed supports ZeRO data parallel only here; "
                                    "use --framework torch for --tp/--pp")
        if self.split is not None:
            split = tuple(self.split)
            object.__setattr__(self, "split", split)
            if len(split) != self.pp or any((not isinstance(n, int)) or n < 1 for n in split):
                raise SharderInputError(
                    f"--split must give {self.pp} positive layer counts (one per stage), got {list(split)}")

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.tp

    @property
    def dp_shard(self) -> int:
        """Ranks a parameter is sharded over (FSDP/ZeRO); 1 for plain DDP."""
        return self.dp // self.dp_replicate if self.zero >= 1 else 1

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(pp_index, dp_index, tp_index) of a global rank; tp fastest."""
        tp_index = rank % self.tp
        dp_index = (rank // self.tp) % self.dp
        pp_index = rank // (self.tp * self.dp)
        return pp_index, dp_index, tp_index

    def stage_layers(self, num_layers: int) -> list[tuple[int, int]]:
        """[start, end) decoder-layer ranges per pipeline stage."""
        if self.split is not None:
            if sum(self.split) != num_layers:
                raise SharderInputError(
                    f"--split {list(self.split)} sums to {sum(self.split)}, the model has {num_layers} layers")
            bounds, start = [], 0
            for count in self.split:
                bounds.append((start, start + count))
                start += count
            return bounds
        if self.pp > num_layers:
            raise SharderInputError(f"--pp {self.pp} exceeds the model's {num_layers} decoder layers")
        edges = [_round_half_even(s * num_layers / self.pp) for s in range(self.pp + 1)]
        return [(edges[s], edges[s + 1]) for s in range(self.pp)]

    def summary(self, precision: str) -> str:
        """One line, e.g. 'TP=4 PP=1 DP=1 ZeRO-0 bf16-true'."""
        parts = [f"TP={self.tp}", f"PP={self.pp}", f"DP={self.dp}"]
        if self.dp_replicate > 1:
            parts.append(f"HSDP {self.dp_replicate}x{self.dp // self.dp_replicate}")
        if self.ep > 1:
            parts.append(f"EP={self.ep}")
        label = "FSDP" if (self.framework == "torch" and self.zero == 3) else f"ZeRO-{self.zero}"
        parts.append(label if self.framework == "torch" else f"DeepSpeed ZeRO-{self.zero}")
        if self.tp > 1:
            parts.append(f"tp-layout={self.tp_layout}" + (" +SP" if self.sp else ""))
        if self.pp > 1:
            parts.append(self.schedule)
        if self.offload != "none":
            parts.append(f"offload={self.offload}")
        parts.append(precision)
        return " ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["split"] = list(self.split) if self.split is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ParallelConfig":
        data = dict(data)
        if data.get("split") is not None:
            data["split"] = tuple(data["split"])
        return cls(**data)


def _round_half_even(x: float) -> int:
    return int(round(x))
