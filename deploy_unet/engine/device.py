"""CUDA device discovery and the lazy TensorRT import, both safe on machines with neither.

TensorRT must never be touched without a CUDA device: ``trt.Builder`` raises after logging "CUDA
initialization failure", and a ``trt.Runtime`` created without a device segfaults on first use. So every
TensorRT path calls :func:`require_cuda_device` first. Devices are queried through cuda-python when it is
installed (it imports and answers without a GPU), else through torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass, field

from deploy_unet.errors import MissingDependencyError

SUPPORTED_TRT_MAJORS = (10, 11)

TENSORRT_INSTALL_HINT = (
    "install TensorRT 10.x or 11.x: `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13 to match your "
    "CUDA; the wheels download the libraries from https://pypi.nvidia.com)"
)


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


def require_cuda_device(index: int = 0) -> GpuInfo:
    """The GPU TensorRT will use, or a one-line MissingDependencyError saying why there is none."""
    report = cuda_devices()
    if not report.devices:
        problems = [no_device_reason(report)]
        if not tensorrt_installed():
            problems.append(f"TensorRT is not installed ({TENSORRT_INSTALL_HINT})")
        raise MissingDependencyError("; ".join(problems))
    for gpu in report.devices:
        if gpu.index == index:
            return gpu
    raise MissingDependencyError(
        f"CUDA device {index} does not exist; devices: "
        + ", ".join(f"{g.index}: {g.name}" for g in report.devices)
    )


def tensorrt_installed() -> bool:
    """Whether ``import tensorrt`` could find the package (without importing it)."""
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):  # a module in sys.modules without a spec (test fakes)
        return True


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise MissingDependencyError(f"cannot read the TensorRT version {version!r}") from None


def import_tensorrt():
    """Import TensorRT lazily; a one-line MissingDependencyError if it is absent or unsupported."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not installed ({exc}); {TENSORRT_INSTALL_HINT}") from None
    except OSError as exc:  # the wheel is there but its shared libraries are not
        raise MissingDependencyError(f"TensorRT is installed but cannot load its libraries ({exc})") from None
    major = trt_major(trt.__version__)
    if major not in SUPPORTED_TRT_MAJORS:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is not supported; deploy-unet needs TensorRT 10.x or 11.x "
            "(strongly typed networks)"
        )
    return trt
