"""accelerate's device maps for a catalog model, as a user would make them (run as its own process).

    python benchmarks/accelerate_maps.py '[{"model": "llama-70b", "max_memory_gib": [80, 80, 80, 80]}]'

For each request: build the transformers model on the meta device (bf16), then
  balanced:   get_balanced_memory(model, max_memory, no_split_module_classes=[decoder layer]) and
              infer_auto_device_map(model, max_memory=<that>, no_split_module_classes=...)
  sequential: infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=...)
and print, as one JSON list, the decoder layers each device holds ("counts", device order) and the
seconds the map took. `--balanced-only` makes only the balanced map of the first request (the timing
case of benchmarks/solver.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _layers_prefix(model) -> str:
    for name, module in model.named_modules():
        if name.endswith("layers") and type(module).__name__ == "ModuleList":
            return name
    raise ValueError("no decoder layers found")


def _device_of(device_map: dict, name: str):
    """The device of module `name`: its own entry or its closest listed parent's."""
    while True:
        if name in device_map:
            return device_map[name]
        if not name:
            raise KeyError(name)
        name = name.rsplit(".", 1)[0] if "." in name else ""


def main(argv: list[str]) -> None:
    balanced_only = "--balanced-only" in argv
    requests = json.loads([a for a in argv if not a.startswith("--")][0])
    import torch
    from accelerate.utils import get_balanced_memory, infer_auto_device_map
    from transformers import AutoModelForCausalLM

    from cluster.build import hf_config
    from sharder.model_loader import load_model
    from sharder.workload import Workload

    out = []
    for req in requests:
        spec = load_model(req["model"])
        if req.get("layers"):
            spec = spec.with_layers(req["layers"])
        t0 = time.perf_counter()
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config(spec, Workload()), dtype=torch.bfloat16)
        no_split = [type(model.model.layers[0]).__name__]
        max_memory = {i: int(g * 2 ** 30) for i, g in enumerate(req["max_memory_gib"])}
        balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                       dtype=torch.bfloat16)
        maps = {"balanced": infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split,
                                                  dtype=torch.bfloat16)}
        if not balanced_only:
            maps["sequential"] = infer_auto_device_map(model, max_memory=max_memory,
                                                       no_split_module_classes=no_split, dtype=torch.bfloat16)
        row = {"request": req, "seconds": time.perf_counter() - t0}
        prefix = _layers_prefix(model)
        for kind, device_map in maps.items():
            counts, elsewhere = [0] * len(max_memory), 0
            for i in range(spec.num_layers):
                device = _device_of(device_map, f"{prefix}.{i}")
                if isinstance(device, int):
                    counts[device] += 1
                else:  # "cpu" or "disk": accelerate offloads what the GPUs' budgets leave over
                    elsewhere += 1
            row[kind] = counts
            row[kind + "_offloaded_layers"] = elsewhere
        out.append(row)
        if balanced_only:
            break
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
