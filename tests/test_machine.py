"""machine.py: CPU model, usable CPUs, cgroup quota and ISA flags from /proc and /sys text."""

from __future__ import annotations

import json

from click.testing import CliRunner

from deploy_unet import doctor, machine
from deploy_unet.bench import BenchReport
from deploy_unet.cli import cli
from deploy_unet.engine.device import DeviceReport
from deploy_unet.machine import (
    cgroup_cpu_quota,
    cpu_info,
    isa_labels,
    machine_line,
    parse_cfs_quota,
    parse_cpu_max,
    parse_cpuinfo,
)
from deploy_unet.report import render_markdown

# Abridged from a 2-vCPU Sapphire Rapids cloud VM (the machine): two processors, flags on each.
XEON = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8 avx_vnni

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8 avx_vnni
"""
# Arm (Jetson Orin style): no model name, "Features" instead of "flags", an implementer code.
ORIN = """processor	: 0
BogoMIPS	: 62.50
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU part	: 0xd42
"""


def test_xeon_cpuinfo_gives_model_vendor_and_int8_fp16_flags_in_order():
    model, vendor, flags = parse_cpuinfo(XEON)
    assert model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" and vendor == "GenuineIntel"
    assert isa_labels(flags) == ["AVX2", "FMA", "F16C", "AVX512F", "AVX512BW", "AVX512-VNNI", "AVX-VNNI",
                                 "AVX512-BF16", "AVX512-FP16", "AMX-TILE", "AMX-INT8", "AMX-BF16"]
    assert "AVX512DQ" not in isa_labels(flags)  # only the flags that decide int8/fp16 kernels


def test_arm_cpuinfo_features_and_implementer():
    model, vendor, flags = parse_cpuinfo(ORIN)
    assert (model, vendor) == ("unknown", "ARM")
    assert isa_labels(flags) == ["NEON", "NEON-FP16", "DOTPROD"]


def test_cgroup_v2_and_v1_quota_text():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("garbage") is None
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("200000\n", "100000\n") == 2.0


def test_cgroup_quota_is_the_tightest_on_the_way_to_the_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path, "0::/a/b\n") == 3.0
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_quota(tmp_path, "0::/a/b\n") == 0.5
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1, "") == 2.5
    assert cgroup_cpu_quota(tmp_path / "nothing-here", "") is None


def fake_cpu(tmp_path, cpuinfo=XEON, quota="150000 100000"):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    (tmp_path / "cg").mkdir(exist_ok=True)
    (tmp_path / "cg" / "cpu.max").write_text(quota)
    return cpu_info(tmp_path / "cpuinfo", tmp_path / "cg", "0::/\n")


def test_cpu_info_line_names_model_cpus_quota_and_isa(tmp_path):
    info = fake_cpu(tmp_path)
    line = info.describe()
    assert line.startswith("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (GenuineIntel); ")
    assert "logical CPUs available" in line and "cgroup quota 1.5 CPUs" in line
    assert line.endswith("ISA: AVX2 FMA F16C AVX512F AVX512BW AVX512-VNNI AVX-VNNI AVX512-BF16 AVX512-FP16 "
                         "AMX-TILE AMX-INT8 AMX-BF16")


def test_cpu_info_never_fails_on_a_machine_it_cannot_read(tmp_path):
    info = cpu_info(tmp_path / "no-cpuinfo", tmp_path / "no-cgroup", "")
    assert info.model  # platform's answer, or "unknown"
    assert info.isa_text == "unknown" and info.quota_cpus is None  # unread is not "none present"
    assert fake_cpu(tmp_path, "model name : Old CPU\nflags : sse sse2\n").isa_text == "none"


def test_bench_report_markdown_names_the_cpu_first(tmp_path):
    info = {"platform": "Linux-6", "python": "3.11", **fake_cpu(tmp_path).to_dict(), "threads": "1"}
    line = machine_line(info)
    assert line.startswith("CPU Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (GenuineIntel), ")
    assert "ISA AVX2 FMA" in line and "intra-op threads 1" in line and "Python 3.11" in line
    text = render_markdown(BenchReport([], info, "2026-01-01T00:00:00"))
    assert f"Machine: {line}; run 2026-01-01T00:00:00." in text
    # records written before machine.py (key cpu_count) still read
    assert machine_line({"cpu": "Xeon", "cpu_count": "2"}) == "CPU Xeon, 2 logical CPUs"


def test_doctor_prints_and_reports_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "cuda_devices", lambda: DeviceReport(source="torch", error="CPU-only build"))
    fake = fake_cpu(tmp_path)
    monkeypatch.setattr(doctor, "cpu_info", lambda: fake)
    text = CliRunner().invoke(cli, ["doctor"])
    assert text.exit_code == 0, text.output
    assert f"cpu            {fake.describe()}" in text.output.splitlines()
    data = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).output)["cpu"]
    assert data["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" and data["quota_cpus"] == 1.5
    assert "AMX-INT8" in data["isa"] and data["available_cpus"] >= 1


def test_the_real_machine_is_described_without_error():
    info = machine.machine_info(threads=1)
    assert info["cpu"] and info["cpus"] and info["cpu_isa"] and info["threads"] == "1"


def test_usable_cpus_is_the_affinity_set_cut_to_the_quota():
    from deploy_unet.machine import CpuInfo

    assert CpuInfo(logical_cpus=64, available_cpus=64, quota_cpus=2.0).usable_cpus == 2  # docker --cpus=2
    assert CpuInfo(logical_cpus=64, available_cpus=4, quota_cpus=None).usable_cpus == 4  # cpuset 4
    assert CpuInfo(logical_cpus=8, available_cpus=None, quota_cpus=1.5).usable_cpus == 1
    assert CpuInfo(logical_cpus=8, available_cpus=8, quota_cpus=0.5).usable_cpus == 1  # never 0
    assert CpuInfo().usable_cpus == 1
