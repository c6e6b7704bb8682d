"""GPU catalog sanity and the `--gpus` pool grammar (sharder.gpu_catalog, sharder.pool_spec)."""

import subprocess
import sys
import time

import pytest

from sharder.errors import SharderInputError
from sharder.gpu_catalog import (catalog, driver_reserved_bytes, find_gpu, gpu_names, host_physical_memory_bytes,
                                 lookup_gpu, torch_visible_bytes)
from sharder.hardware import GiB, MiB
from sharder.pool_spec import MAX_GPUS_PER_TERM, NODE_SIZE, parse_gpus

REQUIRED = ["V100-16", "V100-32", "A10G", "L4", "L40S", "A100-40", "A100-80", "A100-80-PCIE", "H100-80-SXM",
            "H100-80-PCIE", "H100-NVL-94", "H200-141", "B200", "RTX3090", "RTX4090", "RTX5090", "MI300X",
            "MI250X", "cpu"]


def names(cluster):
    return [[g.name for g in node.gpus] for node in cluster.nodes]


# ------------------------------------------------------------------ catalog


def test_catalog_has_required_entries():
    assert set(REQUIRED) <= set(gpu_names())
    assert gpu_names()[-1] == "cpu"


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_entry_is_sane(name):
    g = lookup_gpu(name)
    assert g.name == name
    assert isinstance(g.usable_bytes, int) and isinstance(g.marketed_bytes, int)
    assert 0 < g.usable_bytes <= g.marketed_bytes * 1.1
    for speed in (g.bf16_flops, g.fp16_flops, g.fp32_flops, g.mem_bandwidth, g.intra_node_bandwidth):
        assert speed > 0
    assert g.link in ("nvlink", "xgmi", "pcie", "none")
    assert g.is_cpu == (name == "cpu")
    # torch sees at most what the device reports, and not much less (driver reserve < 2.5 %)
    assert 0.975 * g.usable_bytes <= torch_visible_bytes(g) <= g.usable_bytes
    assert driver_reserved_bytes(g) == g.usable_bytes - torch_visible_bytes(g)


def test_h200_reports_143771_mib():
    assert lookup_gpu("H200-141").usable_bytes == 143_771 * MiB
    assert torch_visible_bytes("h200") == 143_156 * MiB  # _CudaDeviceProperties total_memory


def test_known_usable_figures():
    assert lookup_gpu("A100-80").usable_bytes == 81_920 * MiB
    assert lookup_gpu("H100-80-SXM").usable_bytes == 81_559 * MiB
    assert lookup_gpu("RTX4090").usable_bytes == 24_564 * MiB
    assert lookup_gpu("MI250X").usable_bytes == 64 * GiB  # one GCD


def test_speed_ordering_is_plausible():
    assert lookup_gpu("H100-80-SXM").bf16_flops > lookup_gpu("A100-80").bf16_flops > lookup_gpu("V100-16").bf16_flops
    assert lookup_gpu("H200-141").mem_bandwidth > lookup_gpu("H100-80-SXM").mem_bandwidth
    assert lookup_gpu("H100-80-SXM").intra_node_bandwidth > lookup_gpu("RTX4090").intra_node_bandwidth
    assert lookup_gpu("RTX4090").link == "pcie" and lookup_gpu("MI300X").link == "xgmi"


def test_cpu_entry_uses_host_memory():
    g = lookup_gpu("cpu")
    assert g.is_cpu and g.usable_bytes == host_physical_memory_bytes() > 0


@pytest.mark.parametrize("alias,name", [
    ("a100-80", "A100-80"), ("A100-80GB", "A100-80"), ("a100", "A100-80"), ("A100_80", "A100-80"),
    ("NVIDIA A100-SXM4-80GB", "A100-80"), ("a100-80g", "A100-80"), ("A100-40GB", "A100-40"),
    ("h100", "H100-80-SXM"), ("H100-80", "H100-80-SXM"), ("NVIDIA H100 80GB HBM3", "H100-80-SXM"),
    ("h100-pcie", "H100-80-PCIE"), ("NVIDIA H100 NVL", "H100-NVL-94"), ("h200", "H200-141"),
    ("NVIDIA H200", "H200-141"), ("4090", "RTX4090"), ("rtx-4090", "RTX4090"),
    ("NVIDIA GeForce RTX 4090", "RTX4090"), ("3090", "RTX3090"), ("5090", "RTX5090"),
    ("AMD Instinct MI300X", "MI300X"), ("mi250x", "MI250X"), ("v100", "V100-16"),
    ("Tesla V100-SXM2-32GB", "V100-32"), ("CPU", "cpu"), ("l40s", "L40S"), ("A10G", "A10G"), ("b200", "B200"),
])
def test_aliases(alias, name):
    assert lookup_gpu(alias).name == name


def test_unknown_gpu_names_closest():
    with pytest.raises(SharderInputError) as err:
        lookup_gpu("A100-81")
    msg = str(err.value)
    assert "A100-81" in msg and "A100-80" in msg and "sharder gpus" in msg and "\n" not in msg
    assert find_gpu("nonsense") is None


def test_catalog_is_a_copy():
    c = catalog()
    c.pop("H200-141")
    assert "H200-141" in gpu_names()


def test_no_heavy_imports():
    code = ("import sys, sharder.pool_spec, sharder.gpu_catalog; "
            "bad = [m for m in ('torch', 'transformers', 'networkx', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ grammar


def test_single_node():
    c = parse_gpus("4xA100-80")
    assert names(c) == [["A100-80"] * 4]
    assert c.num_devices == 4 and c.homogeneous and c.spec == "4xA100-80"


def test_bare_type_is_one_device():
    assert names(parse_gpus("A100-80")) == [["A100-80"]]
    assert names(parse_gpus("4090")) == [["RTX4090"]]


def test_mixed_terms_share_one_node():
    c = parse_gpus("2xA100-80 + 2xRTX4090")
    assert names(c) == [["A100-80", "A100-80", "RTX4090", "RTX4090"]]
    assert not c.homogeneous


def test_case_and_spacing():
    assert names(parse_gpus("  4XA100-80GB+2x h100 ")) == [["A100-80"] * 4 + ["H100-80-SXM"] * 2]
    assert names(parse_gpus("4 x a100-80")) == [["A100-80"] * 4]
    assert names(parse_gpus("4*A100-80")) == [["A100-80"] * 4]


def test_shared_node_overflows_into_a_new_node():
    assert names(parse_gpus("8xA100-80+8xH100")) == [["A100-80"] * 8, ["H100-80-SXM"] * 8]
    assert names(parse_gpus("4xA100-80+6xH100")) == [["A100-80"] * 4, ["H100-80-SXM"] * 6]
    assert names(parse_gpus("4xA100-80+4xA100-80+2xL4")) == [["A100-80"] * 8, ["L4"] * 2]


def test_large_count_splits_into_nodes_of_8():
    c = parse_gpus("12xH100")
    assert names(c) == [["H100-80-SXM"] * 8, ["H100-80-SXM"] * 4]
    assert NODE_SIZE == 8


def test_nodes_by_gpus():
    c = parse_gpus("2x8xH100")
    assert names(c) == [["H100-80-SXM"] * 8] * 2
    assert c.gpus_per_node == 8
    assert names(parse_gpus("2x16xV100-32")) == [["V100-32"] * 16] * 2  # explicit node size may exceed 8


def test_multi_node_term_closes_shared_node():
    c = parse_gpus("2xA100-80+2x4xH100+2xL4")
    assert names(c) == [["A100-80"] * 2, ["H100-80-SXM"] * 4, ["H100-80-SXM"] * 4, ["L4"] * 2]


def test_device_numbering_node_by_node():
    c = parse_gpus("2x4xH100+3xA100-80")
    devs = c.devices
    assert [d.index for d in devs] == list(range(11))
    assert [d.node for d in devs] == [0] * 4 + [1] * 4 + [2] * 3
    assert [d.local_index for d in devs] == [0, 1, 2, 3] * 2 + [0, 1, 2]
    assert devs[8].gpu.name == "A100-80" and devs[8].capacity_bytes == 81_920 * MiB
    assert [n.index for n in c.nodes] == [0, 1, 2]


def test_cpu_ranks_share_host_memory():
    c = parse_gpus("4xcpu")
    assert len(c.nodes) == 1 and c.num_devices == 4
    host = host_physical_memory_bytes()
    assert c.nodes[0].host_memory_bytes == host
    assert all(d.capacity_bytes == host // 4 for d in c.devices)


def test_cpu_ranks_with_given_host_memory_and_many_ranks():
    c = parse_gpus("2xcpu+10xcpu", host_memory_bytes=12 * GiB)
    assert len(c.nodes) == 1 and c.num_devices == 12  # one host, never split into nodes of 8
    assert all(d.capacity_bytes == GiB for d in c.devices)
    assert parse_gpus("cpu").devices[0].capacity_bytes == host_physical_memory_bytes()


def test_cpu_alongside_gpus_gets_its_own_node():
    c = parse_gpus("2xA100-80+2xcpu+2xA100-80")
    assert names(c) == [["A100-80"] * 2, ["cpu"] * 2, ["A100-80"] * 2]


def test_defaults_for_host_memory_and_network():
    c = parse_gpus("8xH100+2xRTX4090+1xA100-80")
    h100, consumer = c.nodes[0], c.nodes[1]
    assert h100.host_memory_bytes == 1024 * GiB
    assert consumer.host_memory_bytes == 3 * 128 * GiB  # 128 GiB per GPU
    assert h100.inter_node_bandwidth == 8 * 50e9
    assert consumer.inter_node_bandwidth == 25e9  # one A100's 200 Gb/s NIC; the 4090s add none
    assert parse_gpus("2xRTX4090").nodes[0].inter_node_bandwidth == 12.5e9
    assert parse_gpus("RTX4090").nodes[0].host_memory_bytes == 128 * GiB
    assert parse_gpus("cpu").nodes[0].inter_node_bandwidth > 0


def test_knobs_override_every_node():
    c = parse_gpus("2x8xH100", host_memory_bytes=2048 * GiB, inter_node_bandwidth=100e9)
    assert all(n.host_memory_bytes == 2048 * GiB and n.inter_node_bandwidth == 100e9 for n in c.nodes)


@pytest.mark.parametrize("kwargs", [{"host_memory_bytes": 0}, {"host_memory_bytes": -5},
                                    {"host_memory_bytes": 1.5}, {"host_memory_bytes": "1TiB"},
                                    {"inter_node_bandwidth": 0}, {"inter_node_bandwidth": float("nan")},
                                    {"inter_node_bandwidth": "fast"}])
def test_bad_knobs(kwargs):
    with pytest.raises(SharderInputError) as err:
        parse_gpus("4xA100-80", **kwargs)
    assert "\n" not in str(err.value)


def test_term_limit():
    assert parse_gpus(f"{MAX_GPUS_PER_TERM}xA100-80").num_devices == MAX_GPUS_PER_TERM
    assert parse_gpus("1000x100xH100").num_devices == 100_000


def test_large_pools_parse_fast():
    for spec, n in [("128x8xH100", 1024), ("1024xA100-80", 1024), ("1250x8xB200+1000xA100-80", 11_000)]:
        t = time.perf_counter()
        c = parse_gpus(spec)
        elapsed = time.perf_counter() - t
        assert c.num_devices == n
        assert elapsed < 0.1, (spec, elapsed)  # a few ms here; generous for slow CI


MALFORMED = [
    "",                      # empty
    "   ",                   # blank
    "+",                     # lone plus
    "++",                    # two pluses
    "4xA100-80+",            # trailing plus
    "+4xA100-80",            # leading plus
    "4xA100-80++2xH100",     # empty term in the middle
    "0xA100-80",             # zero
    "-1xA100-80",            # negative
    "1.5xA100-80",           # fraction
    "1e3xA100-80",           # exponent
    "1,000xA100-80",         # thousands separator
    "4x",                    # count, no type
    "x4",                    # type missing, count after x
    "xA100-80",              # x without count
    "4xfoo",                 # unknown type
    "abc",                   # unknown type, no count
    "4",                     # a bare number
    "4x8",                   # count and a number
    "100001xA100-80",        # above the per-term limit
    "400x400xH100",          # nodes x gpus above the limit
    "2x0xH100",              # zero per node
    "0x8xH100",              # zero nodes
    "2x2x2xA100-80",         # three counts
    "4xA100-80 2xH100",      # missing plus
    "4xA100-80,2xH100",      # comma instead of plus
    "A100-80x4",             # count after type
    "2x4xcpu",               # cpu ranks across nodes
    "4xA100-80+4xnope",      # second term bad
]


@pytest.mark.parametrize("spec", MALFORMED)
def test_malformed_specs_raise_one_line(spec):
    with pytest.raises(SharderInputError) as err:
        parse_gpus(spec)
    msg = str(err.value)
    assert msg and "\n" not in msg
    assert "4xA100-80" in msg  # every message shows a good spec


def test_malformed_messages_say_what_is_wrong():
    def msg(spec):
        with pytest.raises(SharderInputError) as err:
            parse_gpus(spec)
        return str(err.value)

    assert "empty" in msg("")
    assert "after the last '+'" in msg("4xA100-80+")
    assert "out of range" in msg("0xA100-80")
    assert "not a whole number" in msg("1.5xA100-80")
    assert "no GPU type" in msg("4x")
    assert "unknown GPU type 'foo'" in msg("4xfoo")
    assert "did you mean" in msg("4xA100-81") and "A100-80" in msg("4xA100-81")
    assert "count first, 4xA100-80" in msg("A100-80x4")
    assert "more than two counts" in msg("2x2x2xA100-80")
    assert "'+'" in msg("4xA100-80,2xH100")
    assert "100,000" in msg("400x400xH100")
    assert "8xcpu" in msg("2x4xcpu")


def test_non_string_spec():
    with pytest.raises(SharderInputError):
        parse_gpus(4)  # type: ignore[arg-type]
