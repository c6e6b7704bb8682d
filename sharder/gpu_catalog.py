"""GPU catalog: public memory, speed and link figures for the accelerators sharder plans for, with alias lookup.

What ``usable_bytes`` means here
--------------------------------
DESIGN.md section 3 defines ``usable_bytes`` as "what the device reports as its total (an H200
sold as 141 GB reports 143,771 MiB)". 143,771 MiB is the *nvidia-smi* ``memory.total`` of an H200
on current (R5xx) drivers. PyTorch sees less: ``torch.cuda.mem_get_info()[1]`` (= cudaMemGetInfo's
total, also what the OOM message calls "total capacity") is nvidia-smi's total minus the memory
the driver keeps for itself (newer nvidia-smi prints it as a separate "Reserved" row). For an
H200 that is 143,156 MiB (139.80 GiB), 615 MiB less.

So every entry carries two figures:

* ``GpuType.usable_bytes`` -- the device's own reported total: nvidia-smi ``memory.total`` on
  NVIDIA with R5xx+ drivers (with ECC on where the card has it by default), ``rocm-smi`` VRAM
  total on AMD. This follows the DESIGN contract (H200 == 143,771 MiB).
* ``torch_visible_bytes(gpu)`` -- what ``torch.cuda.mem_get_info()[1]`` /
  ``get_device_properties().total_memory`` reports; ``driver_reserved_bytes(gpu)`` is the gap.
  A cost model that adds ``driver_reserved_bytes`` to a GPU rank's device constants gets exactly
  the fit test torch would see. The torch figure moves by a few MiB between driver versions.

Every figure is tagged in a comment as **measured** (a public log of that exact device shows it:
an nvidia-smi table or a ``_CudaDeviceProperties(...)`` repr) or **derived** (computed from the
marketed size or another card's measured gap; good to ~0.5 %).

Speeds are dense peaks (no 2:4 sparsity) from vendor data sheets: bf16/fp16 are tensor-core
rates with fp32 accumulation (what PyTorch matmuls use), fp32 is the plain (non-TF32) rate.
``intra_node_bandwidth`` is per GPU, one direction, to its node peers: NVLink/xGMI aggregate
where the board has it, otherwise the PCIe slot's effective rate (Gen4 x16 ~ 25 GB/s,
Gen5 x16 ~ 50 GB/s).

MI250X: one catalog device is ONE GCD (64 GB, half a card), because ROCm, PyTorch and Ray all
show each GCD as its own device and a rank runs on one. ``4xMI250X`` therefore means four 64 GB
GCDs, i.e. two physical cards; a Frontier-style node of 4 cards is ``8xMI250X``.

Lookup is case-insensitive and ignores punctuation and spaces ("A100-80GB", "a100_80",
"NVIDIA A100-SXM4-80GB" all find A100-80); vendor prefixes (NVIDIA, GeForce, Tesla, AMD,
Instinct) and a trailing "GB"/"G" are dropped. Bare family names pick one variant:
``a100`` -> A100-80 (SXM), ``v100`` -> V100-16, ``h100`` -> H100-80-SXM, ``h200`` -> H200-141,
``4090`` -> RTX4090. Use the full name when the other variant is meant. Cards whose speed or
links differ from an entry are deliberately NOT aliased to it (V100 PCIe / V100S, A800, H800,
H200 NVL, MI250, MI300A, A10): they are unknown until someone adds an entry with their figures.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from sharder.errors import SharderInputError, closest_names
from sharder.hardware import GB, GiB, MiB, GpuType

TFLOPS = 1e12

# Effective one-direction PCIe slot rates used for boards without NVLink/xGMI between peers.
PCIE_GEN4_X16 = 25 * GB
PCIE_GEN5_X16 = 50 * GB


def host_physical_memory_bytes() -> int:
    """This machine's physical memory (os.sysconf); 16 GiB where the OS does not say."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and page_size > 0:
            return int(pages) * int(page_size)
    except (ValueError, OSError, AttributeError):
        pass
    return 16 * GiB


@dataclass(frozen=True)
class _Extra:
    """Catalog facts that GpuType does not hold."""

    aliases: tuple[str, ...]
    torch_visible_bytes: int
    note: str


_GPUS: dict[str, GpuType] = {}
_EXTRA: dict[str, _Extra] = {}


def _add(gpu: GpuType, *, torch_mib: float, aliases: tuple[str, ...] = (), note: str = "") -> None:
    _GPUS[gpu.name] = gpu
    _EXTRA[gpu.name] = _Extra(aliases=aliases, torch_visible_bytes=int(torch_mib * MiB), note=note)


# ---------------------------------------------------------------------------------------------
# NVIDIA Volta. V100 has no bf16 tensor cores: bf16 matmuls run at the fp32 rate.
# usable: nvidia-smi 32,768 MiB for V100-SXM2-32GB on R5xx drivers (measured); the 16 GB card
#   by the same rule shows 16,384 MiB (derived; HBM2 ECC is side-band, costs no capacity).
# torch: V100-SXM2-16GB total_memory=16160MB (measured, torch 1.7/1.8 logs);
#   V100-PCIE-32GB total_memory=32510MB (measured; SXM2-32GB assumed equal).
# NVLink 2: 6 links x 25 GB/s per direction = 150 GB/s.
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="V100-16", marketed_bytes=16 * GiB, usable_bytes=16_384 * MiB,
             bf16_flops=15.7 * TFLOPS, fp16_flops=125 * TFLOPS, fp32_flops=15.7 * TFLOPS,
             mem_bandwidth=900 * GB, intra_node_bandwidth=150 * GB, link="nvlink"),
     torch_mib=16_160, aliases=("v100", "v100-sxm2-16gb", "v100-16gb"),
     note="SXM2; no native bf16 (fp32 rate)")
_add(GpuType(name="V100-32", marketed_bytes=32 * GiB, usable_bytes=32_768 * MiB,
             bf16_flops=15.7 * TFLOPS, fp16_flops=125 * TFLOPS, fp32_flops=15.7 * TFLOPS,
             mem_bandwidth=900 * GB, intra_node_bandwidth=150 * GB, link="nvlink"),
     torch_mib=32_510, aliases=("v100-sxm2-32gb", "v100-32gb"),
     note="SXM2; no native bf16 (fp32 rate)")

# ---------------------------------------------------------------------------------------------
# NVIDIA Ampere / Ada PCIe cards with GDDR6 + ECC on by default: ECC takes 1/16 of the memory
# (24,576 x 15/16 = 23,040 MiB), which is why a "24 GB" A10G/L4 shows ~23,0xx MiB.
# A10G (AWS g5): nvidia-smi 23,028 MiB (measured); torch total_memory=22587MB (measured,
#   torch cu130). Speeds: AWS' variant of A10 -- 70 TFLOPS bf16 tensor, ~35 TFLOPS fp32
#   (Baseten's A10-vs-A10G comparison; NVIDIA publishes no A10G sheet), 600 GB/s GDDR6.
# L4: nvidia-smi 23,034 MiB (measured); torch derived = 23,034 - 441 (A10G's measured gap).
#   121 TFLOPS bf16 dense, 30.3 fp32, 300 GB/s (L4 data sheet).
# L40S: nvidia-smi 46,068 MiB (measured); torch total_memory=45589MB (measured).
#   362 TFLOPS bf16 dense, 91.6 fp32, 864 GB/s (L40S data sheet).
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="A10G", marketed_bytes=24 * GiB, usable_bytes=23_028 * MiB,
             bf16_flops=70 * TFLOPS, fp16_flops=70 * TFLOPS, fp32_flops=35 * TFLOPS,
             mem_bandwidth=600 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=22_587, aliases=("a10g-24gb",), note="AWS g5; PCIe Gen4")
_add(GpuType(name="L4", marketed_bytes=24 * GiB, usable_bytes=23_034 * MiB,
             bf16_flops=121 * TFLOPS, fp16_flops=121 * TFLOPS, fp32_flops=30.3 * TFLOPS,
             mem_bandwidth=300 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=22_593, aliases=("l4-24gb",), note="PCIe Gen4; torch figure derived")
_add(GpuType(name="L40S", marketed_bytes=48 * GiB, usable_bytes=46_068 * MiB,
             bf16_flops=362 * TFLOPS, fp16_flops=362 * TFLOPS, fp32_flops=91.6 * TFLOPS,
             mem_bandwidth=864 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=45_589, aliases=("l40s-48gb",), note="PCIe Gen4")

# ---------------------------------------------------------------------------------------------
# NVIDIA A100. 312 TFLOPS bf16/fp16 dense, 19.5 fp32 (non-TF32); NVLink 3 600 GB/s both ways
# -> 300 GB/s per direction (SXM4). HBM2e bandwidth: 40 GB 1,555 GB/s; 80 GB SXM 2,039 GB/s;
# 80 GB PCIe 1,935 GB/s.
# A100-40: nvidia-smi 40,960 MiB on R5xx drivers (older drivers printed 40,536) (measured);
#   torch total_memory=40536MB for A100-SXM4-40GB (measured; A100-PCIE-40GB: 40326MB).
# A100-80: nvidia-smi 81,920 MiB on R5xx drivers, 81,251 MiB on older ones (both measured);
#   torch 81,251 MiB (= the old-driver figure; OOM messages say "79.35 GiB total capacity").
# A100-80-PCIE: nvidia-smi 81,920 MiB (derived by analogy with SXM); torch ~81,050 MiB
#   (derived from "79.15 GiB total capacity" OOM messages on PCIe boards).
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="A100-40", marketed_bytes=40 * GiB, usable_bytes=40_960 * MiB,
             bf16_flops=312 * TFLOPS, fp16_flops=312 * TFLOPS, fp32_flops=19.5 * TFLOPS,
             mem_bandwidth=1555 * GB, intra_node_bandwidth=300 * GB, link="nvlink"),
     torch_mib=40_536, aliases=("a100-40gb", "a100-sxm4-40gb", "a100-40g", "a100-40-sxm",
                                "a100-sxm-40gb"), note="SXM4")
_add(GpuType(name="A100-80", marketed_bytes=80 * GiB, usable_bytes=81_920 * MiB,
             bf16_flops=312 * TFLOPS, fp16_flops=312 * TFLOPS, fp32_flops=19.5 * TFLOPS,
             mem_bandwidth=2039 * GB, intra_node_bandwidth=300 * GB, link="nvlink"),
     torch_mib=81_251, aliases=("a100", "a100-80gb", "a100-sxm4-80gb", "a100-80g", "a100-80-sxm",
                                "a100-sxm", "a100-sxm-80gb"),
     note="SXM4; bare 'a100' means this one")
_add(GpuType(name="A100-80-PCIE", marketed_bytes=80 * GiB, usable_bytes=81_920 * MiB,
             bf16_flops=312 * TFLOPS, fp16_flops=312 * TFLOPS, fp32_flops=19.5 * TFLOPS,
             mem_bandwidth=1935 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=81_050, aliases=("a100-pcie", "a100-80gb-pcie", "a100-pcie-80gb", "a100-80-pcie"),
     note="PCIe Gen4 (NVLink bridge pairs not modelled); usable derived")

# ---------------------------------------------------------------------------------------------
# NVIDIA Hopper. H100 SXM5: 989 TFLOPS bf16/fp16 dense, 67 fp32, 3.35 TB/s, NVLink 4 900 GB/s
# both ways -> 450 GB/s per direction. H100 PCIe: 756 / 51 TFLOPS, 2.0 TB/s, PCIe Gen5.
# H100 NVL: 835 / 60 TFLOPS, 3.9 TB/s, PCIe Gen5 (NVLink bridges pair cards; not modelled).
# H200 SXM: H100 SXM compute, 4.8 TB/s HBM3e, same NVLink.
# H100-80-SXM: nvidia-smi 81,559 MiB (measured); torch total_memory 81,082..81,090MB depending
#   on driver (measured; 81,089 here).
# H100-80-PCIE: nvidia-smi 81,559 MiB (measured, same as SXM); torch
#   total_memory=81008MB (measured).
# H100-NVL-94: nvidia-smi 95,830 MiB (measured); torch derived = 95,830 - 470 (SXM's gap).
# H200-141: nvidia-smi 143,771 MiB (measured; the DESIGN.md figure); torch total_memory=
#   143156MB (measured; OOM messages say "139.80 GiB total capacity").
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="H100-80-SXM", marketed_bytes=80 * GiB, usable_bytes=81_559 * MiB,
             bf16_flops=989 * TFLOPS, fp16_flops=989 * TFLOPS, fp32_flops=67 * TFLOPS,
             mem_bandwidth=3350 * GB, intra_node_bandwidth=450 * GB, link="nvlink"),
     torch_mib=81_089, aliases=("h100", "h100-80", "h100-sxm", "h100-sxm5", "h100-80gb",
                                "h100-80gb-hbm3", "h100-sxm5-80gb", "h100-80-sxm5"),
     note="SXM5; bare 'h100' means this one")
_add(GpuType(name="H100-80-PCIE", marketed_bytes=80 * GiB, usable_bytes=81_559 * MiB,
             bf16_flops=756 * TFLOPS, fp16_flops=756 * TFLOPS, fp32_flops=51 * TFLOPS,
             mem_bandwidth=2000 * GB, intra_node_bandwidth=PCIE_GEN5_X16, link="pcie"),
     torch_mib=81_008, aliases=("h100-pcie", "h100-pcie-80gb", "h100-80gb-pcie"), note="PCIe Gen5")
_add(GpuType(name="H100-NVL-94", marketed_bytes=94 * GiB, usable_bytes=95_830 * MiB,
             bf16_flops=835 * TFLOPS, fp16_flops=835 * TFLOPS, fp32_flops=60 * TFLOPS,
             mem_bandwidth=3900 * GB, intra_node_bandwidth=PCIE_GEN5_X16, link="pcie"),
     torch_mib=95_360, aliases=("h100-nvl", "h100-nvl-94gb", "h100-94"),
     note="PCIe Gen5 (NVLink bridge pairs not modelled); torch figure derived")
_add(GpuType(name="H200-141", marketed_bytes=141 * GiB, usable_bytes=143_771 * MiB,
             bf16_flops=989 * TFLOPS, fp16_flops=989 * TFLOPS, fp32_flops=67 * TFLOPS,
             mem_bandwidth=4800 * GB, intra_node_bandwidth=450 * GB, link="nvlink"),
     torch_mib=143_156, aliases=("h200", "h200-sxm", "h200-141gb", "h200-sxm-141gb"),
     note="SXM; H200 NVL has the same memory (measured 143,771 MiB) but is slower")

# ---------------------------------------------------------------------------------------------
# NVIDIA Blackwell B200 (HGX/DGX B200 per GPU): 180 GB HBM3e usable of 192 GB physical,
# 2.25 PFLOPS bf16 dense, 75 TFLOPS fp32, ~8 TB/s, NVLink 5 1.8 TB/s both ways -> 900 GB/s.
# nvidia-smi 183,359 MiB (measured); torch total_memory=182631MB / 182642MB (measured).
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="B200", marketed_bytes=180 * GiB, usable_bytes=183_359 * MiB,
             bf16_flops=2250 * TFLOPS, fp16_flops=2250 * TFLOPS, fp32_flops=75 * TFLOPS,
             mem_bandwidth=8000 * GB, intra_node_bandwidth=900 * GB, link="nvlink"),
     torch_mib=182_631, aliases=("b200-180", "b200-180gb", "b200-sxm"), note="HGX/DGX B200")

# ---------------------------------------------------------------------------------------------
# NVIDIA GeForce. Tensor rates are fp16/bf16 with fp32 accumulate (GeForce runs those at half
# the fp16-accumulate rate): 3090 71 TFLOPS, 4090 165.2, 5090 209.5 (Ampere/Ada/Blackwell
# GeForce white papers). No NVLink (3090 bridge not modelled), no P2P on 40/50 series: PCIe.
# RTX3090: nvidia-smi 24,576 MiB on current drivers (older printed 24,268) (measured);
#   torch total_memory=24259MB (measured; 24268MB on older drivers).
# RTX4090: nvidia-smi 24,564 MiB (measured); torch 24,217 MiB derived from Linux OOM messages
#   ("23.65 GiB total capacity"); one published Windows/WSL repr shows 24563MB instead.
# RTX5090: nvidia-smi 32,607 MiB (measured); torch ~32,111 MiB (derived: ~31.36 GiB).
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="RTX3090", marketed_bytes=24 * GiB, usable_bytes=24_576 * MiB,
             bf16_flops=71 * TFLOPS, fp16_flops=71 * TFLOPS, fp32_flops=35.6 * TFLOPS,
             mem_bandwidth=936 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=24_259, aliases=("3090", "rtx-3090", "rtx3090-24gb"), note="PCIe Gen4")
_add(GpuType(name="RTX4090", marketed_bytes=24 * GiB, usable_bytes=24_564 * MiB,
             bf16_flops=165.2 * TFLOPS, fp16_flops=165.2 * TFLOPS, fp32_flops=82.6 * TFLOPS,
             mem_bandwidth=1008 * GB, intra_node_bandwidth=PCIE_GEN4_X16, link="pcie"),
     torch_mib=24_217, aliases=("4090", "rtx-4090", "rtx4090-24gb"), note="PCIe Gen4, no P2P")
_add(GpuType(name="RTX5090", marketed_bytes=32 * GiB, usable_bytes=32_607 * MiB,
             bf16_flops=209.5 * TFLOPS, fp16_flops=209.5 * TFLOPS, fp32_flops=104.8 * TFLOPS,
             mem_bandwidth=1792 * GB, intra_node_bandwidth=PCIE_GEN5_X16, link="pcie"),
     torch_mib=32_111, aliases=("5090", "rtx-5090", "rtx5090-32gb"),
     note="PCIe Gen5, no P2P; torch figure derived")

# ---------------------------------------------------------------------------------------------
# AMD Instinct (ROCm; torch.cuda works through HIP).
# MI300X: 192 GB HBM3; rocm-smi VRAM total 206,158,430,208 B = 192 GiB (derived from the
#   marketed size; rocm-smi prints it in bytes); torch total_memory=196592MB (measured).
#   1,307.4 TFLOPS bf16/fp16 dense, 163.4 fp32, 5.3 TB/s; 7 Infinity Fabric links x 64 GB/s per
#   direction to the 7 peers of an 8-GPU OAM node -> 448 GB/s.
# MI250X, ONE GCD (see module docstring): 64 GB; torch total_memory=65520MB (measured).
#   Per GCD: 191.5 TFLOPS bf16/fp16 (half of the card's 383), 23.95 fp32 vector (half of 47.9),
#   1.6384 TB/s (half of 3.2768). xGMI: 200 GB/s both ways to the sibling GCD, 50-100 GB/s to
#   other cards (Frontier node docs) -> ~100 GB/s per direction, a rough aggregate.
# ---------------------------------------------------------------------------------------------
_add(GpuType(name="MI300X", marketed_bytes=192 * GiB, usable_bytes=192 * GiB,
             bf16_flops=1307.4 * TFLOPS, fp16_flops=1307.4 * TFLOPS, fp32_flops=163.4 * TFLOPS,
             mem_bandwidth=5300 * GB, intra_node_bandwidth=448 * GB, link="xgmi", vendor="amd"),
     torch_mib=196_592, aliases=("mi300x-192gb", "mi300x-oam"), note="OAM")
_add(GpuType(name="MI250X", marketed_bytes=64 * GiB, usable_bytes=64 * GiB,
             bf16_flops=191.5 * TFLOPS, fp16_flops=191.5 * TFLOPS, fp32_flops=23.95 * TFLOPS,
             mem_bandwidth=1638.4 * GB, intra_node_bandwidth=100 * GB, link="xgmi", vendor="amd"),
     torch_mib=65_520, aliases=("mi250x-gcd", "mi250x-64gb", "mi250x/mi250"),
     note="ONE GCD = half a card; 4xMI250X = 2 cards")

# ---------------------------------------------------------------------------------------------
# cpu pseudo-device for tests and the CPU ground truth. Its capacity in a pool is the host's
# memory divided by the cpu ranks on that host (ClusterSpec.devices); the figure below, this
# machine's physical memory, is only what `sharder gpus` shows. Speeds are nominal (a few-core
# host does ~1 TFLOPS) and only need to be positive.
# ---------------------------------------------------------------------------------------------
_HOST_MEM = host_physical_memory_bytes()
_add(GpuType(name="cpu", marketed_bytes=_HOST_MEM, usable_bytes=_HOST_MEM,
             bf16_flops=1 * TFLOPS, fp16_flops=1 * TFLOPS, fp32_flops=1 * TFLOPS,
             mem_bandwidth=50 * GB, intra_node_bandwidth=10 * GB, link="none", vendor="cpu",
             is_cpu=True),
     torch_mib=_HOST_MEM / MiB, aliases=("cpus", "host"), note="this machine's memory")


# ---------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------
_VENDOR_PREFIXES = ("nvidia", "geforce", "tesla", "amd", "instinct", "radeon")


def _key(name: str) -> str:
    """Normalised lookup key: lower case, alphanumerics only, vendor prefixes dropped."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    stripped = True
    while stripped:
        stripped = False
        for prefix in _VENDOR_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix):]
                stripped = True
    return key


_INDEX: dict[str, str] = {}
for _name, _extra in _EXTRA.items():
    for _alias in (_name, *_extra.aliases):
        _k = _key(_alias)
        if _k in _INDEX and _INDEX[_k] != _name:  # pragma: no cover - catalog authoring error
            raise RuntimeError(f"GPU alias {_alias!r} is claimed by {_INDEX[_k]} and {_name}")
        _INDEX[_k] = _name


def gpu_names() -> list[str]:
    """Canonical catalog names, in catalog order (cpu last)."""
    return list(_GPUS)


def gpu_aliases(name: str) -> tuple[str, ...]:
    """The extra names `lookup_gpu` accepts for a catalog entry."""
    return _EXTRA[lookup_gpu(name).name].aliases


def catalog() -> dict[str, GpuType]:
    """Name -> GpuType, a copy."""
    return dict(_GPUS)


def find_gpu(name: str) -> GpuType | None:
    """The catalog entry for `name` (canonical name or alias, any case), or None."""
    key = _key(name)
    if not key:
        return None
    hit = _INDEX.get(key)
    if hit is None:
        for suffix in ("gb", "g"):  # "A100-80GB", "A100-80G" (Ray's accelerator labels)
            if key.endswith(suffix) and key[: -len(suffix)] in _INDEX:
                hit = _INDEX[key[: -len(suffix)]]
                break
    return _GPUS[hit] if hit else None


def lookup_gpu(name: str) -> GpuType:
    """The catalog entry for `name`; SharderInputError naming the closest entries if unknown."""
    gpu = find_gpu(name)
    if gpu is not None:
        return gpu
    near = closest_names(name, gpu_names())
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise SharderInputError(f"unknown GPU type {name.strip()!r}{hint} (see `sharder gpus` for the list)")


def torch_visible_bytes(gpu: GpuType | str) -> int:
    """What torch.cuda.mem_get_info()[1] reports on this device (see module docstring)."""
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    extra = _EXTRA.get(g.name)
    return extra.torch_visible_bytes if extra else g.usable_bytes


def driver_reserved_bytes(gpu: GpuType | str) -> int:
    """usable_bytes minus what torch can see: memory the driver keeps for itself (>= 0)."""
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    return max(0, g.usable_bytes - torch_visible_bytes(g))


def gpu_note(gpu: GpuType | str) -> str:
    """A short note for `sharder gpus` (form factor, derived figures)."""
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    extra = _EXTRA.get(g.name)
    return extra.note if extra else ""
