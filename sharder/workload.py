"""Workload: what the job does (mode, batch, sequence, precision, optimizer, quantization, LoRA)."""

from __future__ import annotations

from dataclasses import dataclass, asdict

from sharder.errors import SharderInputError

MODES = ("train", "finetune", "lora", "qlora", "inference")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
QUANTS = ("none", "int8", "nf4", "int4")
OPTIMIZERS = ("adamw", "sgd")
AC_MODES = ("none", "full", "selective")
ATTENTIONS = ("sdpa", "eager")
KV_DTYPES = {"auto": None, "fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One step of work per data-parallel replica. Validated where it is made."""

    mode: str = "inference"
    """train | finetune (both: every weight trained) | lora | qlora | inference."""
    batch: int = 1
    """Sequences per data-parallel replica per optimizer step (inference: concurrent sequences)."""
    seq: int = 4096
    """Training: tokens per sequence. Inference: prompt tokens."""
    max_new_tokens: int = 0
    """Inference: tokens generated after the prompt; the KV cache holds seq + max_new_tokens."""
    micro_batches: int = 1
    """Pipeline micro-batches when PP > 1, gradient-accumulation steps otherwise."""
    precision: str = "bf16-true"
    quant: str = "none"
    """Weight quantization of the frozen base (inference, qlora): int8, nf4/int4 (4-bit, blocks of 64)."""
    optimizer: str = "adamw"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    ac: str = "none"
    """Activation checkpointing: none | full (every decoder layer) | selective."""
    kv_dtype: str = "auto"
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        _one_of("--mode", self.mode, MODES)
        _one_of("--precision", self.precision, PRECISIONS)
        _one_of("--quant", self.quant, QUANTS)
        _one_of("--optimizer", self.optimizer, OPTIMIZERS)
        _one_of("--ac", self.ac, AC_MODES)
        _one_of("--attention", self.attention, ATTENTIONS)
        _one_of("--kv-dtype", self.kv_dtype, tuple(KV_DTYPES))
        for flag, value in (("--batch", self.batch), ("--seq", self.seq),
                            ("--micro-batches", self.micro_batches), ("--lora-rank", self.lora_rank)):
            if not isinstance(value, int) or value < 1:
                raise SharderInputError(f"{flag} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise SharderInputError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens!r}")
        if self.batch % self.micro_batches:
            raise SharderInputError(
                f"--batch {self.batch} is not divisible by --micro-batches {self.micro_batches}; "
                f"choose a micro-batch count that divides the batch")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise SharderInputError(f"--lora-targets: unknown module(s) {', '.join(bad)}; "
                                    f"choose from {', '.join(LORA_TARGETS)}")
        if self.quant != "none" and self.mode in ("train", "finetune", "lora"):
            raise SharderInputError(
                f"--quant {self.quant} needs --mode inference or qlora (quantized weights are frozen)")
        if self.mode == "qlora" and self.quant == "none":
            object.__setattr__(self, "quant", "nf4")
        if self.mode != "inference" and self.max_new_tokens:
            raise SharderInputError("--max-new-tokens is for --mode inference; training uses --seq")

    @property
    def training(self) -> bool:
        return self.mode != "inference"

    @property
    def full_training(self) -> bool:
        """Every weight has a gradient and optimizer state."""
        return self.mode in ("train", "finetune")

    @property
    def adapters(self) -> bool:
        return self.mode in ("lora", "qlora")

    @property
    def micro_batch_size(self) -> int:
        return self.batch // self.micro_batches

    @property
    def context(self) -> int:
        """Tokens a sequence holds at its longest (prompt + generated)."""
        return self.seq + self.max_new_tokens

    @property
    def param_bytes(self) -> int:
        """Bytes per stored (unquantized) parameter: fp32 masters unless bf16-true."""
        return 2 if self.precision == "bf16-true" else 4

    @property
    def compute_bytes(self) -> int:
        """Bytes per activation element in the forward pass."""
        return 4 if self.precision == "32-true" else 2

    @property
    def kv_bytes(self) -> int:
        return KV_DTYPES[self.kv_dtype] or self.compute_bytes

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Workload":
        data = dict(data)
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)


def _one_of(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SharderInputError(f"{flag} {value!r} is not one of: {', '.join(choices)}")
