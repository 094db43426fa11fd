"""What OpenVINO and this CPU offer for int8 and bf16: OpenVINO's devices, and the ISA flags that decide which
kernels its CPU plugin (oneDNN) picks. For ``doctor`` and the benchmark's machine record. Never raises."""

from __future__ import annotations

from typing import Any

from deploy_unet.machine import cpu_info

# ISA label (machine.ISA_FLAGS) -> what it gives OpenVINO's CPU plugin.
INT8_BF16_FLAGS = {
    "AVX512-VNNI": "int8 dot products (VPDPBUSD), 4x fp32's multiply-adds per instruction",
    "AVX-VNNI": "int8 dot products on 256-bit vectors",
    "AVX512-BF16": "bf16 dot products; OpenVINO runs f32 models in bf16 by default here",
    "AMX-INT8": "int8 tile matrix multiply (AMX), ~8x VNNI's int8 throughput per core",
    "AMX-BF16": "bf16 tile matrix multiply (AMX)",
    "AVX512-FP16": "fp16 arithmetic (INFERENCE_PRECISION_HINT f16 is honoured)",
}


def openvino_capabilities() -> dict[str, Any]:
    """``{"version", "devices": {name: full name}, "cpu_optimization": [...], "cpu_default_precision",
    "isa": {flag: present}, "error"}``; ``version`` None when openvino is not installed."""
    cpu = cpu_info()
    isa = {flag: (flag in cpu.isa) if cpu.isa_known else None for flag in INT8_BF16_FLAGS}
    out: dict[str, Any] = {"version": None, "devices": {}, "cpu_optimization": [], "cpu_default_precision": None,
                           "isa": isa, "error": ""}
    try:
        import openvino as ov
    except ImportError as exc:
        out["error"] = f"not installed ({exc})"
        return out
    except Exception as exc:  # a broken install: say so, do not crash doctor
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return out
    out["version"] = ov.__version__.split("-")[0]
    try:
        core = ov.Core()
        for device in core.available_devices:
            try:
                out["devices"][device] = str(core.get_property(device, "FULL_DEVICE_NAME"))
            except Exception:
                out["devices"][device] = device
        if "CPU" in out["devices"]:
            out["cpu_optimization"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            out["cpu_default_precision"] = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return out


def describe(caps: dict[str, Any]) -> list[str]:
    """Doctor's lines: devices, then the int8/bf16 flags present and absent."""
    lines = []
    if caps["version"]:
        devices = ", ".join(f"{k} ({v})" for k, v in caps["devices"].items()) or "none"
        lines.append(f"OpenVINO {caps['version']}: devices {devices}; CPU runs f32 models in "
                     f"{caps['cpu_default_precision'] or '?'} by default (--ov-precision f32 keeps f32)")
    have = [f for f, v in caps["isa"].items() if v]
    lacking = [f for f, v in caps["isa"].items() if v is False]
    lines.append("int8/bf16 ISA: " + (", ".join(have) or "none") + (f"; absent: {', '.join(lacking)}" if lacking else ""))
    return lines
