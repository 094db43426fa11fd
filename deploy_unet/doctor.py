"""``deploy-unet doctor``: what is installed, which CUDA devices exist, and which backends can run.

Every backend gets a verdict: usable, or exactly why not and how to fix it. Nothing here raises; a
package that fails to import is reported with its error. TensorRT is imported only to read its version
(importing it is safe without a GPU; creating its objects is not, and doctor never does).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy_unet import shipped
from deploy_unet.engine.device import (
    SUPPORTED_TRT_MAJORS,
    TENSORRT_INSTALL_HINT,
    TENSORRT_RTX,
    cuda_devices,
    import_engine_library,
    runs_on,
)
from deploy_unet.errors import ArtifactError, MissingDependencyError
from deploy_unet.machine import cpu_info

TORCH_CUDA_HINT = "install a CUDA build of torch, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu128`"
ORT_GPU_HINT = "replace onnxruntime with onnxruntime-gpu: `pip uninstall onnxruntime && pip install onnxruntime-gpu`"


@dataclass
class Backend:
    name: str
    usable: bool
    detail: str  # version / device when usable, the reason when not
    fix: str = ""


@dataclass
class DoctorReport:
    python: str
    platform: str
    packages: dict[str, str | None]  # name -> version, None when not installed
    import_errors: dict[str, str]
    onnxruntime_providers: list[str]
    cuda: dict[str, Any]
    cpu: dict[str, Any] = field(default_factory=dict)  # machine.CpuInfo.to_json(): model, CPUs, quota, ISA
    checkpoints: dict[str, Any] = field(default_factory=dict)  # the shipped ones: folder, found, missing, error
    openvino: dict[str, Any] = field(default_factory=dict)  # openvino/capabilities.py: devices, int8/bf16 ISA
    backends: list[Backend] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _try_import(module: str, errors: dict[str, str]):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or OSError for missing shared libraries
        errors[module] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None


def run_doctor() -> DoctorReport:
    errors: dict[str, str] = {}
    torch = _try_import("torch", errors)
    onnx = _try_import("onnx", errors)
    ort = _try_import("onnxruntime", errors)
    trt = _try_import("tensorrt", errors) if _importable("tensorrt") else None
    if trt is None and "tensorrt" not in errors:
        errors["tensorrt"] = "not installed"
    rtx = None
    if any(_importable(m) for m in TENSORRT_RTX.modules):
        try:  # importing the bindings is safe without a GPU (checked with the 1.7 wheel); creating objects is not
            rtx = import_engine_library(TENSORRT_RTX.name)[1]
        except MissingDependencyError as exc:
            errors["tensorrt-rtx"] = str(exc)
    else:
        errors["tensorrt-rtx"] = "not installed"
    devices = cuda_devices()

    packages = {
        "torch": getattr(torch, "__version__", None),
        "torch.cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch else None,
        "onnx": getattr(onnx, "__version__", None),
        "onnxruntime": getattr(ort, "__version__", None),
        "tensorrt": getattr(trt, "__version__", None),
        "tensorrt-rtx": getattr(rtx, "__version__", None),
        "cuda-python": _dist_version("cuda-python", "cuda-bindings"),
        "openvino": _dist_version("openvino"),
        "numpy": _dist_version("numpy"),
    }
    providers = list(ort.get_available_providers()) if ort else []
    report = DoctorReport(
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=packages,
        import_errors=errors,
        onnxruntime_providers=providers,
        cuda=devices.to_dict(),
        cpu=cpu_info().to_json(),
        checkpoints=_shipped_checkpoints(),
    )
    gpu = devices.devices[0] if devices.devices else None
    no_gpu = f"no CUDA device: {devices.error}"
    gpu_fix = "run on a machine with an NVIDIA GPU and driver (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
    gpu_text = f"{gpu.name} (compute capability {gpu.compute_capability})" if gpu else ""

    # torch
    if torch is None:
        report.backends.append(Backend("torch-cpu", False, errors.get("torch", "not installed"), "pip install torch"))
        report.backends.append(Backend("torch-cuda", False, errors.get("torch", "not installed"), TORCH_CUDA_HINT))
        torch_cuda = False
    else:
        report.backends.append(Backend("torch-cpu", True, f"torch {torch.__version__}"))
        torch_cuda = torch.version.cuda is not None and torch.cuda.is_available()
        if torch.version.cuda is None:
            report.backends.append(
                Backend("torch-cuda", False, f"torch {torch.__version__} is a CPU-only build", TORCH_CUDA_HINT)
            )
        elif not torch_cuda:
            report.backends.append(
                Backend("torch-cuda", False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device", gpu_fix)
            )
        else:
            report.backends.append(Backend("torch-cuda", True, f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"))

    if torch is not None:
        report.backends.append(_torch_compile_verdict(torch, torch_cuda))

    # onnxruntime
    if ort is None:
        reason = errors.get("onnxruntime", "not installed")
        report.backends.append(Backend("onnxruntime-cpu", False, reason, "pip install onnxruntime"))
        report.backends.append(Backend("onnxruntime-cuda", False, reason, "pip install onnxruntime-gpu"))
    else:
        report.backends.append(
            Backend("onnxruntime-cpu", "CPUExecutionProvider" in providers, f"onnxruntime {ort.__version__}")
        )
        if "CUDAExecutionProvider" not in providers:
            report.backends.append(
                Backend(
                    "onnxruntime-cuda",
                    False,
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(providers)})",
                    ORT_GPU_HINT,
                )
            )
        elif gpu is None:
            report.backends.append(Backend("onnxruntime-cuda", False, no_gpu, gpu_fix))
        else:
            report.backends.append(Backend("onnxruntime-cuda", True, f"onnxruntime {ort.__version__} on {gpu_text}"))

    # tensorrt: the package, a supported major, a device, and torch CUDA tensors for buffers
    problems, fixes = [], []
    if trt is None:
        problems.append(f"TensorRT: {errors.get('tensorrt')}")
        fixes.append(TENSORRT_INSTALL_HINT)
    else:
        major = str(trt.__version__).split(".")[0]
        if not major.isdigit() or int(major) not in SUPPORTED_TRT_MAJORS:
            problems.append(f"TensorRT {trt.__version__} is not 10.x or 11.x")
            fixes.append("install TensorRT 10.x or 11.x")
    if gpu is None:
        problems.append(no_gpu)
        fixes.append(gpu_fix)
    if not torch_cuda:
        problems.append("the TensorRT runner needs torch with CUDA for device buffers")
        fixes.append(TORCH_CUDA_HINT)
    report.backends.append(_verdict("tensorrt", problems, fixes, lambda: f"TensorRT {trt.__version__} on {gpu_text}"))

    # tensorrt-rtx: the package, a device of a compute capability it runs on, torch CUDA tensors for buffers
    problems, fixes = [], []
    supported = " ".join(TENSORRT_RTX.runs_on or ())
    if rtx is None:
        problems.append(f"TensorRT-RTX: {errors.get('tensorrt-rtx')}")
        fixes.append(TENSORRT_RTX.install_hint)
    if gpu is None:
        problems.append(no_gpu)
        fixes.append(gpu_fix)
    elif not runs_on(TENSORRT_RTX.runs_on or (), gpu.compute_capability):
        problems.append(f"{gpu_text} is not a GPU TensorRT-RTX runs on (compute capability {supported}); "
                        "engines build here but do not load")
        fixes.append("use an RTX / A-series / L4 / L40 / A100 GPU, or the tensorrt backend")
    if not torch_cuda:
        problems.append("the runner needs torch with CUDA for device buffers")
        fixes.append(TORCH_CUDA_HINT)
    report.backends.append(
        _verdict("tensorrt-rtx", problems, fixes, lambda: f"TensorRT-RTX {rtx.__version__} on {gpu_text}"))

    # openvino: the package and the devices it sees; the CPU's int8/bf16 flags decide how fast it runs
    from deploy_unet.openvino.capabilities import openvino_capabilities

    report.openvino = openvino_capabilities()
    if report.openvino["version"] and report.openvino["devices"]:
        report.backends.append(Backend("openvino", True, f"OpenVINO {report.openvino['version']} on "
                                       f"{', '.join(report.openvino['devices'])}"))
    else:
        report.backends.append(Backend("openvino", False, report.openvino["error"] or "OpenVINO sees no device",
                                       "pip install 'deploy-unet[openvino]'"))
    return report


def _shipped_checkpoints() -> dict[str, Any]:
    """Where this install keeps the shipped reference checkpoints (a wheel: site-packages), and which it has."""
    try:
        found = shipped.available()
        return {"dir": str(shipped.models_dir()), "found": {arch: str(path) for arch, path in found.items()},
                "missing": sorted(set(shipped.REFERENCE_CHECKPOINTS) - set(found)), "error": None}
    except ArtifactError as exc:
        return {"dir": None, "found": {}, "missing": sorted(shipped.REFERENCE_CHECKPOINTS), "error": str(exc)}


def _torch_compile_verdict(torch, torch_cuda: bool) -> Backend:
    """``--compile``: inductor writes C++ kernels for the CPU (a compiler must be on PATH) and Triton kernels for
    CUDA (the triton package); without them the first compiled call fails deep inside torch."""
    problems, fixes, ways = [], [], []
    compiler = next((c for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c and shutil.which(c)), None)
    if compiler:
        ways.append(f"CPU via {compiler}")
    else:
        problems.append("no C++ compiler on PATH (torch.compile's CPU kernels are C++)")
        fixes.append("install g++ (e.g. `apt install g++`) or set CXX")
    if torch_cuda:
        if _importable("triton"):
            ways.append(f"CUDA via triton {_dist_version('triton', 'pytorch-triton') or ''}".rstrip())
        else:
            problems.append("no triton (torch.compile's CUDA kernels are Triton)")
            fixes.append("pip install triton (the version your torch build names)")
    return _verdict("torch-compile", problems, fixes, lambda: f"torch {torch.__version__}: {', '.join(ways)}")


def _verdict(name: str, problems: list[str], fixes: list[str], ok_text) -> Backend:
    """Usable when nothing is missing; else every problem, and each fix once, on one line."""
    if problems:
        return Backend(name, False, "; ".join(problems), "; ".join(dict.fromkeys(fixes)))
    return Backend(name, True, ok_text())


def _importable(module: str) -> bool:
    """Whether a module is importable at all, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return True


def format_report(report: DoctorReport) -> str:
    lines = [f"{'python':<14} {report.python} ({report.platform})"]
    if report.cpu:
        lines.append(f"{'cpu':<14} {report.cpu['summary']}")
    for name, version in report.packages.items():
        text = version or "not installed"
        if name == "torch.cuda" and version is None:
            text = "none (CPU-only torch build)" if report.packages.get("torch") else "-"
        elif version is None and name in report.import_errors and report.import_errors[name] != "not installed":
            text = f"not importable ({report.import_errors[name]})"
        lines.append(f"{name:<14} {text}")
    lines.append(f"{'ORT providers':<14} {', '.join(report.onnxruntime_providers) or '-'}")
    if report.openvino:
        from deploy_unet.openvino.capabilities import describe

        for line in describe(report.openvino):
            lines.append(f"{'openvino' if line.startswith('OpenVINO') else 'cpu int8/bf16':<14} {line}")
    ck = report.checkpoints
    if ck:
        text = f"{', '.join(ck['found']) or 'none'} (in {ck['dir']})" if ck["dir"] else f"none ({ck['error']})"
        if ck["dir"] and ck["missing"]:
            text += f"; missing: {', '.join(ck['missing'])}"
        lines.append(f"{'checkpoints':<14} {text}")
    devices = report.cuda["devices"]
    if devices:
        for d in devices:
            lines.append(f"{'cuda:' + str(d['index']):<14} {d['name']} (compute capability {d['compute_capability']}, {d['memory_mib']} MiB)")
    else:
        lines.append(f"{'CUDA':<14} no device ({report.cuda['error']})")
    lines.append("")
    lines.append("backends:")
    for b in report.backends:
        mark = "ok " if b.usable else "no "
        lines.append(f"  [{mark}] {b.name:<17} {b.detail}")
        if not b.usable and b.fix:
            lines.append(f"        {'':<17} fix: {b.fix}")
    return "\n".join(lines)
