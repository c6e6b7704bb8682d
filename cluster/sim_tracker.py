"""Memory trackers for the referee: PyTorch's own, with three small additions.

`torch.distributed._tools.MemTracker` / `FSDPMemTracker` do the counting. The subclasses here add:

1. **tags** — `with tracker.tag(SimRefType.KV):` files every storage *created* inside the block under
   another category (the KV cache of a `StaticCache`, allocated lazily inside the model's forward);
2. **repeated root calls** — the stock trackers refuse to see the root module run twice in one
   `with` block (gradient accumulation, pipeline micro-batches, decode steps); we forget that
   module's per-module statistics instead, which we never read;
3. **a cheap peak** — only the global peak snapshot is kept (the per-module peak bookkeeping costs
   O(modules) per op and is unused), plus where the peak happened (phase and innermost module).

Nothing here changes how bytes are counted, so the peak "Total" is the stock tracker's.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _RefType

_TOTAL = "Total"
_UNTRACKED = [0]


@contextlib.contextmanager
def untracked():
    """Ops inside are not counted by any Sim tracker (DTensor's metadata propagation: a real-tensor
    run does it in a private FakeTensorMode the tracker skips; under the simulation's own fake mode
    it would otherwise count full-size global tensors)."""
    _UNTRACKED[0] += 1
    try:
        yield
    finally:
        _UNTRACKED[0] -= 1


class SimRefType(_RefType):
    """Categories the stock trackers do not have."""

    KV = "KV Cache"
    INP = "Inputs"
    PIPE = "Pipeline Buffer"
    DDP = "DDP Bucket"


# raw tracker category (its string value) -> sharder category
CATEGORY_MAP = {
    "Parameter": "parameters",
    "Sharded Param": "parameters",
    "Gradient": "gradients",
    "Sharded Grad": "gradients",
    "Optstate": "optimizer_states",
    "OptState": "optimizer_states",
    "Activation": "activations",
    "Inputs": "activations",
    "KV Cache": "kv_cache",
    "Unsharded Param": "comm_buffers",
    "Unsharded Grad": "comm_buffers",
    "All Gather": "comm_buffers",
    "Reduce Scatter": "comm_buffers",
    "Pipeline Buffer": "comm_buffers",
    "DDP Bucket": "comm_buffers",
    "Temp": "temporaries",
    "Buffer": "other",
    "Other": "other",
}

SHARDER_CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache",
                      "comm_buffers", "temporaries", "other")


class _SimMixin:
    """Shared additions; mixed in front of MemTracker / FSDPMemTracker."""

    def _sim_init(self) -> None:
        self._sim_tag: _RefType | None = None
        self.peak_phase: str | None = None
        self.peak_module: str | None = None

    # -- 1. tags ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def tag(self, reftype: _RefType):
        """Storages first seen inside this block are filed under `reftype`."""
        previous, self._sim_tag = self._sim_tag, reftype
        try:
            yield
        finally:
            self._sim_tag = previous

    def _track(self, reftype: _RefType, t) -> None:  # called per op output by __torch_dispatch__
        if _UNTRACKED[0]:
            return
        if self._sim_tag is not None:
            reftype = self._sim_tag
        super()._track(reftype, t)

    def track_as(self, reftype: _RefType, *tensors) -> None:
        """Start tracking tensors made outside the tracker (inputs, pre-built buffers)."""
        for t in tensors:
            self._update_and_maybe_create_winfos(t, reftype)

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        # the stock device snapshot only has keys for its own enum; make room for ours
        snap = self._curr_mem_snap.setdefault(winfo.device, dict.fromkeys(self._ref_class, 0))
        snap.setdefault(winfo.reftype, 0)
        if old_reftype is not None:
            snap.setdefault(old_reftype, 0)
        super()._update_snap(u_type, winfo, old_mem_consumed=old_mem_consumed, old_reftype=old_reftype)

    # -- 3. cheap global peak ----------------------------------------------------------------------
    def _update_peak_stats(self, peak_state) -> None:
        for dev, dev_snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL]:
                self._peak_mem[dev] = dev_snap[_TOTAL]
                self._peak_mem_snap[dev] = dict(dev_snap)
                self.peak_phase = ("optimizer" if self._in_opt else
                                   "backward" if self._mod_tracker.is_bw else "forward")
                parents = self._mod_tracker.parents
                self.peak_module = max(parents, key=lambda n: (n.count("."), len(n))) if parents else None

    def _forget_if_repeated_root(self, module) -> None:
        name = self._mod_tracker.get_known_fqn(module)
        if (module in self.memory_tracking and not self._mod_tracker.is_bw
                and set(self._mod_tracker.parents) - {name} == {"Global"}):
            del self.memory_tracking[module]

    # -- results ---------------------------------------------------------------------------------
    def peak_bytes(self) -> int:
        return sum(self._peak_mem.values())

    def current_bytes(self) -> int:
        return sum(snap.get(_TOTAL, 0) for snap in self._curr_mem_snap.values())

    def raw_snapshot(self, which: str = "peak") -> dict[str, int]:
        """{raw category value: bytes} summed over devices (one device here: cpu)."""
        snaps = self._peak_mem_snap if which == "peak" else self._curr_mem_snap
        out: dict[str, int] = {}
        for dev_snap in snaps.values():
            for key, value in dev_snap.items():
                name = key.value if isinstance(key, _RefType) else str(key)
                if name == _TOTAL:
                    continue
                out[name] = out.get(name, 0) + int(value)
        return out


class SimMemTracker(_SimMixin, MemTracker):
    """MemTracker for runs without FSDP."""

    def __init__(self) -> None:
        super().__init__()
        self._sim_init()

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        # the stock method hooks every parameter; frozen ones (LoRA's base) cannot take a grad hook
        frozen = [p for p in module.parameters() if not p.requires_grad]
        if not frozen or not install_grad_hooks:
            return super()._track_module_params_and_buffers(module, install_grad_hooks)
        param_mem = 0
        for p in frozen:
            param_mem += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(p, _MemRefType.PARAM))
        trainable = _ParamsOnly([p for p in module.parameters() if p.requires_grad])
        trainable_mem, _ = super()._track_module_params_and_buffers(trainable, install_grad_hooks)
        buffer_mem = 0
        for b in module.buffers():
            buffer_mem += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(b, _MemRefType.BUFFER))
        return param_mem + trainable_mem, buffer_mem

    def _pre_fw_hook(self, module, inputs) -> None:
        self._forget_if_repeated_root(module)
        super()._pre_fw_hook(module, inputs)


class SimFSDPMemTracker(_SimMixin, FSDPMemTracker):
    """FSDPMemTracker for runs with FSDP2."""

    def __init__(self, mod, optm=None) -> None:
        super().__init__(mod, optm)
        self._sim_init()

    def _pre_fw_hook(self, module, inputs) -> None:
        self._forget_if_repeated_root(module)
        super()._pre_fw_hook(module, inputs)

    def _fsdp_state_pre_forward(self, fsdp_mod, orig_fsdp_state_pre_fw):
        inner = super()._fsdp_state_pre_forward(fsdp_mod, orig_fsdp_state_pre_fw)

        def wrapped(*args: Any, **kwargs: Any):
            self._forget_if_repeated_root(fsdp_mod)
            return inner(*args, **kwargs)

        return wrapped


def training_tracker(model, optimizer, ids, fsdp: bool):
    """The tracker a training step is measured with: FSDP2's own (it knows sharded/unsharded parameters and
    its collectives' buffers) when the model is fully_shard-ed, else the plain one; `ids` (None on a middle
    pipeline stage) count as inputs."""
    if fsdp:
        tracker = SimFSDPMemTracker(model, optimizer)
        if ids is not None:
            tracker.track_inputs((ids,))
    else:
        tracker = SimMemTracker()
        tracker.track_external(model, optimizer)
        if ids is not None:
            tracker.track_as(SimRefType.INP, ids)
    return tracker


def to_sharder_categories(raw: dict[str, int]) -> dict[str, int]:
    """Map raw tracker categories onto sharder's eight; unknown names land in `other`."""
    out = dict.fromkeys(SHARDER_CATEGORIES, 0)
    for name, value in raw.items():
        out[CATEGORY_MAP.get(name, "other")] += int(value)
    return out


class _ParamsOnly:
    """Duck-typed stand-in for a module: just `parameters()` and no buffers."""

    def __init__(self, params):
        self._params = params

    def parameters(self):
        return iter(self._params)

    def buffers(self):
        return iter(())
