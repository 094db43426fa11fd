"""CUDA device discovery and the lazy engine-library import, both safe on machines with neither.

Two engine libraries share one builder, manifest and runner (they expose the same Python API under two
module names): NVIDIA TensorRT (``tensorrt``, 10.x/11.x) and TensorRT-RTX (``tensorrt_rtx`` from the
metapackage, ``tensorrt_rtx_bindings`` from the cu13 bindings wheel, 1.7+). :data:`ENGINE_LIBRARIES`
describes each; :func:`import_engine_library` imports one by name.

TensorRT must never be touched without a CUDA device: ``trt.Builder`` raises after logging "CUDA
initialization failure", and a ``trt.Runtime`` created without a device segfaults on first use. So every
TensorRT path calls :func:`require_cuda_device` first. Devices are queried through cuda-python when it is
installed (it imports and answers without a GPU), else through torch.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import sys
from dataclasses import asdict, dataclass, field

from deploy_unet.errors import ConfigError, MissingDependencyError

SUPPORTED_TRT_MAJORS = (10, 11)

TENSORRT_INSTALL_HINT = (
    "install TensorRT 10.x or 11.x: `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13 to match your "
    "CUDA; the wheels download the libraries from https://pypi.nvidia.com)"
)
TENSORRT_RTX_INSTALL_HINT = "install TensorRT-RTX 1.7+: `pip install 'deploy-unet[tensorrt-rtx]'`"


@dataclass(frozen=True)
class EngineLibrary:
    """One engine library: where its Python module lives and which GPUs its engines run on."""

    name: str  # the --engine-lib value
    title: str  # for messages
    modules: tuple[str, ...]  # importable module names, tried in order
    install_hint: str
    min_version: tuple[int, ...]
    max_major: int | None = None  # newest major known to work (None: no upper bound checked)
    # Compute capabilities an engine of this library runs on, as the library itself lists them; ">X" means
    # every capability above X. None: the GPU the engine was built on (TensorRT, see check_compatible).
    runs_on: tuple[str, ...] | None = None

    def version_ok(self, version: str) -> bool:
        parts = version_tuple(version)
        if parts[: len(self.min_version)] < self.min_version:
            return False
        return self.max_major is None or parts[0] <= self.max_major


TENSORRT = EngineLibrary(
    "tensorrt", "TensorRT", ("tensorrt",), TENSORRT_INSTALL_HINT, min_version=(10,), max_major=11
)
# TensorRT-RTX 1.7 refuses other GPUs at deserialize_cuda_engine with "Error Code 6: ... Supported compute
# capabilities: 8.0 8.6 8.9 12.0 12.1 >12.0" (seen on an H100, compute capability 9.0; TENSORRT-RTX.md).
TENSORRT_RTX = EngineLibrary(
    "tensorrt-rtx", "TensorRT-RTX", ("tensorrt_rtx", "tensorrt_rtx_bindings"), TENSORRT_RTX_INSTALL_HINT,
    min_version=(1, 7), runs_on=("8.0", "8.6", "8.9", "12.0", "12.1", ">12.0"),
)
ENGINE_LIBRARIES = {lib.name: lib for lib in (TENSORRT, TENSORRT_RTX)}
# The shared libraries the tensorrt-rtx-cu13-libs wheel ships in its ``tensorrt_rtx_libs`` package, in load
# order (the parser and the bindings need libtensorrt_rtx first).
RTX_LIBS_PACKAGE = "tensorrt_rtx_libs"
RTX_SHARED_LIBRARIES = ("libtensorrt_rtx.so.1", "libtensorrt_onnxparser_rtx.so.1")


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).strip().lstrip(">").partition(".")
    return int(major), int(minor or 0)


def runs_on(supported: tuple[str, ...] | list[str], compute_capability: str) -> bool:
    """Whether ``compute_capability`` is in a library's list ("8.6", or ">12.0" for anything above)."""
    here = cc_tuple(compute_capability)
    for entry in supported:
        entry = str(entry).strip()
        if entry.startswith(">") and here > cc_tuple(entry):
            return True
        if not entry.startswith(">") and here == cc_tuple(entry):
            return True
    return False


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.6"
    memory_mib: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeviceReport:
    """What the CUDA runtime said: the devices, or why there are none."""

    devices: list[GpuInfo] = field(default_factory=list)
    source: str = ""  # "cuda-python" | "torch" | ""
    error: str = ""  # why no device was found (empty when there are devices)

    def to_dict(self) -> dict:
        return {"devices": [d.to_dict() for d in self.devices], "source": self.source, "error": self.error}


def _decode(name) -> str:
    if isinstance(name, bytes):
        return name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name)


def _import_cudart():
    """cuda-python's runtime bindings: ``cuda.bindings.runtime`` (12.6+) or the older ``cuda.cudart``."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


def _devices_from_cuda_python(cudart) -> DeviceReport:
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return DeviceReport(source="cuda-python", error=f"cudaGetDeviceCount returned {_decode(getattr(err, 'name', err))}")
    devices = []
    for index in range(count):
        err, prop = cudart.cudaGetDeviceProperties(index)
        if err != cudart.cudaError_t.cudaSuccess:
            continue
        devices.append(
            GpuInfo(index, _decode(prop.name), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem) // (1 << 20))
        )
    if not devices:
        return DeviceReport(source="cuda-python", error="the CUDA runtime reports 0 devices")
    return DeviceReport(devices, source="cuda-python")


def _devices_from_torch() -> DeviceReport:
    try:
        import torch
    except ImportError:
        return DeviceReport(error="neither cuda-python nor torch is installed to query CUDA devices")
    if torch.version.cuda is None:
        return DeviceReport(source="torch", error=f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return DeviceReport(source="torch", error="torch finds no usable CUDA device (driver missing or no GPU)")
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(GpuInfo(index, props.name, f"{props.major}.{props.minor}", props.total_memory // (1 << 20)))
    return DeviceReport(devices, source="torch")


def cuda_devices() -> DeviceReport:
    """List CUDA devices without ever raising: cuda-python first, then torch."""
    cudart = _import_cudart()
    if cudart is not None:
        try:
            report = _devices_from_cuda_python(cudart)
        except Exception as exc:  # a broken driver install: report it, do not crash
            report = DeviceReport(source="cuda-python", error=f"{type(exc).__name__}: {exc}")
        if report.devices:
            return report
        torch_report = _devices_from_torch()
        return torch_report if torch_report.devices else report
    return _devices_from_torch()


def no_device_reason(report: DeviceReport) -> str:
    return f"no CUDA device ({report.error}); TensorRT needs an NVIDIA GPU with a working driver"


def require_cuda_device(index: int = 0, library: str | None = None) -> GpuInfo:
    """The GPU TensorRT will use, or a one-line MissingDependencyError saying why there is none.

    ``library``: the --engine-lib asked for (None: auto), so a missing library is named as the user chose it.
    """
    report = cuda_devices()
    if not report.devices:
        problems = [no_device_reason(report)]
        wanted = [ENGINE_LIBRARIES[library]] if library else [TENSORRT, TENSORRT_RTX]
        if not any(library_installed(lib.name) for lib in wanted):
            missing = (f"{wanted[0].title} is not installed" if len(wanted) == 1
                       else "neither " + " nor ".join(lib.title for lib in wanted) + " is installed")
            problems.append(f"{missing} (" + "; ".join(lib.install_hint for lib in wanted) + ")")
        raise MissingDependencyError("; ".join(problems))
    for gpu in report.devices:
        if gpu.index == index:
            return gpu
    raise MissingDependencyError(
        f"CUDA device {index} does not exist; devices: "
        + ", ".join(f"{g.index}: {g.name}" for g in report.devices)
    )


def _module_present(module: str) -> bool:
    if module in sys.modules:  # imported already (or a test's stand-in)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def library_installed(name: str) -> bool:
    """Whether one of the library's modules could be found (without importing it)."""
    return any(_module_present(m) for m in ENGINE_LIBRARIES[name].modules)


def tensorrt_installed() -> bool:
    """Whether ``import tensorrt`` could find the package (without importing it)."""
    return library_installed("tensorrt")


def resolve_engine_library(name: str | None = None) -> EngineLibrary:
    """``--engine-lib``: the named library, or (None / "auto") whichever is installed, TensorRT first."""
    if name in (None, "", "auto"):
        for lib in ENGINE_LIBRARIES.values():
            if library_installed(lib.name):
                return lib
        return TENSORRT  # neither: importing it later says how to install one
    if name not in ENGINE_LIBRARIES:
        raise ConfigError(f"--engine-lib {name!r} is not known; choose one of: {', '.join(ENGINE_LIBRARIES)}")
    return ENGINE_LIBRARIES[name]


def _preload_rtx_libraries() -> None:
    """Load libtensorrt_rtx.so.1 and its ONNX parser from the libs wheel's folder, globally, so the bindings
    import without LD_LIBRARY_PATH. A no-op where the package is absent (a tar install on the path)."""
    try:
        spec = importlib.util.find_spec(RTX_LIBS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        for lib in RTX_SHARED_LIBRARIES:
            path = os.path.join(folder, lib)
            if os.path.isfile(path):
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _library_fix(lib: EngineLibrary) -> str:
    if lib is not TENSORRT_RTX:
        return "reinstall it, or put the folder holding its shared libraries on LD_LIBRARY_PATH"
    return (
        "install the libs wheel (pip install 'deploy-unet[tensorrt-rtx]'), or put the folder holding "
        "libtensorrt_rtx.so.1 on LD_LIBRARY_PATH: export LD_LIBRARY_PATH=$(python -c 'import tensorrt_rtx_libs, os; "
        "print(os.path.dirname(tensorrt_rtx_libs.__file__))'):$LD_LIBRARY_PATH"
    )


def import_engine_library(name: str | None = None):
    """Import an engine library lazily: ``(library, module)``, or a one-line MissingDependencyError."""
    lib = resolve_engine_library(name)
    module, errors = None, []
    for module_name in lib.modules:
        if not _module_present(module_name):
            errors.append(f"no module {module_name!r}")
            continue
        try:
            if lib is TENSORRT_RTX:
                _preload_rtx_libraries()
            module = importlib.import_module(module_name)
            break
        except ImportError as exc:
            message = str(exc).splitlines()[0]
            if ".so" in message or ".dll" in message:  # the bindings are there, their shared libraries are not
                raise MissingDependencyError(
                    f"{lib.title} is installed but cannot load its libraries ({message}); {_library_fix(lib)}"
                ) from None
            errors.append(message)
        except OSError as exc:  # a shared library that is there but does not load
            message = str(exc).splitlines()[0]
            raise MissingDependencyError(
                f"{lib.title} is installed but cannot load its libraries ({message}); {_library_fix(lib)}"
            ) from None
    if module is None:
        raise MissingDependencyError(f"{lib.title} is not installed ({'; '.join(errors)}); {lib.install_hint}")
    version = str(getattr(module, "__version__", "0"))
    if not lib.version_ok(version):
        wanted = ".".join(map(str, lib.min_version)) + "+" + (f" up to {lib.max_major}.x" if lib.max_major else "")
        raise MissingDependencyError(
            f"{lib.title} {version} is not supported; deploy-unet needs {lib.title} {wanted} (strongly typed networks)"
        )
    return lib, module


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise MissingDependencyError(f"cannot read the TensorRT version {version!r}") from None


def import_tensorrt():
    """Import TensorRT (not -RTX) lazily; a one-line MissingDependencyError if absent or unsupported."""
    return import_engine_library("tensorrt")[1]
