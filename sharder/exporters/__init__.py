"""Exporters: turn a plan (the dict of a "sharder.plan/1" file) into another tool's configuration.

One module per target, each with ``export(plan: dict, **options) -> str``:

- ``deepspeed``  — a DeepSpeed config JSON (training plans, ZeRO data parallel);
- ``accelerate`` — an accelerate ``device_map`` + ``max_memory`` JSON (inference or one-process pipeline);
- ``vllm``       — a ``vllm serve`` command line (inference plans);
- ``torchtitan`` — a torchtitan job TOML (training plans, framework torch);
- ``fsdp2``      — a PyTorch script that applies the plan with TP / FSDP2 / pipelining (framework torch).

A target with no equivalent for the plan raises ``SharderInputError`` with one line saying why
(the CLI turns it into exit 2). Importing this package imports no torch, transformers or deepspeed.
"""

from __future__ import annotations

import importlib
import inspect

from sharder.errors import SharderInputError

TARGETS: tuple[str, ...] = ("deepspeed", "accelerate", "vllm", "torchtitan", "fsdp2")


def export_plan(plan: dict, target: str, **options) -> str:
    """The text of `plan` exported for `target` (one of TARGETS). Options go to the target's exporter
    (deepspeed: ``gradient_clipping``, ``lr``)."""
    key = str(target).strip().lower()
    if key not in TARGETS:
        raise SharderInputError(f"unknown export target {target!r}; choose one of: {', '.join(TARGETS)}")
    module = importlib.import_module(f"sharder.exporters.{key}")
    try:
        inspect.signature(module.export).bind(plan, **options)
    except TypeError:
        raise SharderInputError(f"export target {key} takes no option(s) {', '.join(sorted(options))}") from None
    text = module.export(plan, **options)
    return text if text.endswith("\n") else text + "\n"


__all__ = ["TARGETS", "export_plan"]
