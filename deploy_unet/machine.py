"""Which machine a number was measured on: CPU model, CPUs this process may use, ISA flags, versions.

A CPU latency means little without the CPU: int8 on ONNX Runtime is fast with AVX-512 VNNI or AMX and
slow without, and a container may see 2 of 64 cores or a fractional cgroup quota. bench, report, doctor,
the pipeline and benchmarks/ all record it from here. Pure Python, no subprocess, never raises: what
cannot be read is "unknown". The parsers take text so they are testable without the machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> label, in the order they are printed: the flags that decide which int8/fp16 CPU
# kernels ONNX Runtime, oneDNN and torch can use (x86), and their Arm counterparts (Jetson, Graviton).
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX-TILE",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimdhp": "NEON-FP16",
    "asimddp": "DOTPROD",
    "i8mm": "I8MM",
    "bf16": "BF16",
    "sve": "SVE",
}
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere"}
UNKNOWN = "unknown"


@dataclass
class CpuInfo:
    model: str = UNKNOWN
    vendor: str = UNKNOWN
    logical_cpus: int | None = None  # on the machine (os.cpu_count)
    available_cpus: int | None = None  # this process may run on (sched_getaffinity)
    quota_cpus: float | None = None  # cgroup CPU quota, None when unlimited or unreadable
    isa: list[str] = field(default_factory=list)  # labels from ISA_FLAGS present on this CPU
    isa_known: bool = False  # whether flags could be read at all (no flags read != no flags present)

    @property
    def isa_text(self) -> str:
        """``AVX2 FMA F16C AVX512F AVX512-VNNI AMX-INT8``; "none" when read and absent, else "unknown"."""
        if not self.isa_known:
            return UNKNOWN
        return " ".join(self.isa) or "none"

    @property
    def cpus_text(self) -> str:
        """``2 logical CPUs available (of 64), cgroup quota 1.5 CPUs``."""
        if self.available_cpus is None and self.logical_cpus is None:
            text = "logical CPUs unknown"
        else:
            text = f"{self.available_cpus or self.logical_cpus} logical CPUs available"
            if self.available_cpus and self.logical_cpus and self.available_cpus != self.logical_cpus:
                text += f" (of {self.logical_cpus})"
        if self.quota_cpus is not None:
            text += f", cgroup quota {self.quota_cpus:g} CPUs"
        return text

    @property
    def usable_cpus(self) -> int:
        """CPUs this process can keep busy: its affinity set, cut to the cgroup quota (rounded down, >= 1).

        Libraries size their thread pools from the machine's cores; in a container whose quota is smaller
        than what it sees, every parallel op then waits on threads the scheduler has throttled.
        """
        count = self.available_cpus or self.logical_cpus or 1
        if self.quota_cpus is not None:
            count = min(count, int(self.quota_cpus))
        return max(1, count)

    def describe(self) -> str:
        """One line: model (vendor), CPUs, ISA flags."""
        vendor = f" ({self.vendor})" if self.vendor != UNKNOWN and self.vendor not in self.model else ""
        return f"{self.model}{vendor}; {self.cpus_text}; ISA: {self.isa_text}"

    def to_json(self) -> dict[str, Any]:
        """Structured, for ``doctor --json``: ``isa`` is None when the flags could not be read."""
        return {
            "model": self.model,
            "vendor": self.vendor,
            "logical_cpus": self.logical_cpus,
            "available_cpus": self.available_cpus,
            "quota_cpus": self.quota_cpus,
            "isa": list(self.isa) if self.isa_known else None,
            "summary": self.describe(),
        }

    def to_dict(self) -> dict[str, str]:
        """Flat strings, for a benchmark's ``machine`` record."""
        return {
            "cpu": self.model,
            "cpu_vendor": self.vendor,
            "cpus": self.cpus_text,
            "cpu_isa": self.isa_text,
        }


def parse_cpuinfo(text: str) -> tuple[str, str, set[str] | None]:
    """``/proc/cpuinfo`` text -> (model name, vendor, flags); the first processor's entries decide.

    x86 has ``model name``/``vendor_id``/``flags``; Arm has ``Features`` and ``CPU implementer`` (and
    often no model name at all).
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or UNKNOWN
    vendor = fields.get("vendor_id") or ARM_IMPLEMENTERS.get(fields.get("cpu implementer", "").lower(), UNKNOWN)
    flag_text = fields.get("flags", fields.get("features"))
    flags = set(flag_text.split()) if flag_text is not None else None
    return model, vendor, flags


def isa_labels(flags: set[str]) -> list[str]:
    return [label for flag, label in ISA_FLAGS.items() if flag in flags]


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) -> CPUs (1.5), None when unlimited."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` -> CPUs; a quota of -1 means unlimited."""
    return _ratio(quota_text.strip(), period_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return round(q / p, 2) if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup", self_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup (v2, else v1), None when there is none or it is unreadable.

    On v2 the tightest ``cpu.max`` from this process's cgroup up to the root counts (a parent's quota
    limits its children); ``self_cgroup`` is the text of /proc/self/cgroup.
    """
    root = Path(root)
    if self_cgroup is None:
        self_cgroup = _read("/proc/self/cgroup") or ""
    leaf = next((line[3:].strip() for line in self_cgroup.splitlines() if line.startswith("0::")), "/")
    parts = [p for p in leaf.split("/") if p and p != ".."]
    found_v2, quotas = False, []
    for depth in range(len(parts), -1, -1):
        text = _read(root.joinpath(*parts[:depth], "cpu.max"))
        if text is not None:
            found_v2 = True
            quota = parse_cpu_max(text)
            if quota is not None:
                quotas.append(quota)
    if found_v2:
        return min(quotas, default=None)
    for v1 in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(root / v1 / "cpu.cfs_quota_us"), _read(root / v1 / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return parse_cfs_quota(quota, period)
    return None


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo", cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
             self_cgroup: str | None = None) -> CpuInfo:
    """This machine's CPU; every field falls back to "unknown"/None rather than raising."""
    info = CpuInfo(logical_cpus=os.cpu_count())
    try:
        info.available_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        pass
    text = _read(cpuinfo_path)
    if text:
        model, info.vendor, flags = parse_cpuinfo(text)
        if model == UNKNOWN:  # Arm boards: the device tree names the board (e.g. "NVIDIA Jetson AGX Orin")
            model = (_read("/sys/firmware/devicetree/base/model") or "").strip("\x00\n ") or UNKNOWN
        info.model = model
        if flags is not None:
            info.isa, info.isa_known = isa_labels(flags), True
    if info.model == UNKNOWN:
        info.model = platform.processor() or platform.machine() or UNKNOWN
    try:
        info.quota_cpus = cgroup_cpu_quota(cgroup_root, self_cgroup)
    except Exception:  # odd cgroup layouts must never break a benchmark or doctor
        info.quota_cpus = None
    return info


def machine_info(threads: int | None = None) -> dict[str, str]:
    """What a benchmark number means nothing without: CPU, usable CPUs, ISA, library versions, GPU if any."""
    info = {"platform": platform.platform(), "python": platform.python_version(), **cpu_info().to_dict(),
            "threads": str(threads) if threads else "default"}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = str(torch.version.cuda)
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, str]) -> str:
    """``machine_info()`` as one readable line for reports: CPU first, then software, then the rest."""
    info = dict(info)
    cpu = info.pop("cpu", UNKNOWN)
    vendor = info.pop("cpu_vendor", UNKNOWN)
    parts = [f"CPU {cpu}" + (f" ({vendor})" if vendor != UNKNOWN and vendor not in cpu else "")]
    for key, template in (("cpus", "{}"), ("cpu_count", "{} logical CPUs"), ("cpu_isa", "ISA {}")):
        if key in info:
            parts.append(template.format(info.pop(key)))
    if "gpu" in info:
        parts.append(f"GPU {info.pop('gpu')}" + (f" (CUDA {info.pop('cuda')})" if "cuda" in info else ""))
    software = [f"{name} {info.pop(key)}" for key, name in
                (("platform", ""), ("python", "Python"), ("torch", "torch"), ("onnxruntime", "onnxruntime"))
                if key in info]
    rest = [f"{'intra-op threads' if key == 'threads' else key} {value}" for key, value in info.items()]
    return "; ".join(filter(None, [", ".join(parts), ", ".join(s.strip() for s in software), ", ".join(rest)]))


def _read(path: str | os.PathLike) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except (OSError, ValueError):
        return None
