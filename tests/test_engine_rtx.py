"""TensorRT-RTX through the one builder, manifest and runner, on CPU with the recording fake module.

What these prove: the library is chosen by name, imported under either module name with its shared libraries
preloaded, built with the same calls (STRONGLY_TYPED by name, no TensorRT-only compatibility switches), recorded
in the manifest, and refused on a GPU outside its compute capabilities before anything is deserialized. What
they do not prove: that TensorRT-RTX builds or runs anything (test_tensorrt_gpu.py does, where it can).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest
from test_manifest import make_manifest
from trt_fakes import fake_tensorrt, fake_tensorrt_rtx, make_onnx

from deploy_unet import doctor, pipeline
from deploy_unet.engine import build as build_mod
from deploy_unet.engine import device as device_mod
from deploy_unet.engine.build import build_engine, plan_build
from deploy_unet.engine.device import (
    TENSORRT,
    TENSORRT_RTX,
    DeviceReport,
    GpuInfo,
    import_engine_library,
    resolve_engine_library,
    runs_on,
)
from deploy_unet.engine.manifest import manifest_path_for, read_manifest, write_manifest
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.runtime import tensorrt_runner as runner_mod
from deploy_unet.runtime.tensorrt_runner import TensorRTRunner

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0", 81000)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24000)
A100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", "8.0", 81000)
RTX5090 = GpuInfo(0, "NVIDIA GeForce RTX 5090", "12.0", 32000)
T4 = GpuInfo(0, "Tesla T4", "7.5", 15000)


@pytest.fixture(autouse=True)
def _no_real_engine_modules(monkeypatch):
    """Neither library 'installed' unless a test puts a fake in sys.modules."""
    real = device_mod._module_present
    monkeypatch.setattr(device_mod, "_module_present",
                        lambda name: name in sys.modules if name.startswith("tensorrt") else real(name))
    for name in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"):
        monkeypatch.delitem(sys.modules, name, raising=False)


# -- which GPUs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu, expected", [(A100, True), (RTX4090, True), ("8.6", True), (RTX5090, True),
                                           ("12.1", True), ("13.0", True), (H100, False), (T4, False)])
def test_rtx_compute_capabilities(gpu, expected):
    cc = gpu if isinstance(gpu, str) else gpu.compute_capability
    assert runs_on(TENSORRT_RTX.runs_on, cc) is expected


# -- choosing and importing the library --------------------------------------------------------------


def test_auto_prefers_tensorrt_then_rtx(monkeypatch):
    assert resolve_engine_library(None) is TENSORRT  # neither: TensorRT, whose import says how to install
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", fake_tensorrt_rtx())
    assert resolve_engine_library("auto") is TENSORRT_RTX
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    assert resolve_engine_library(None) is TENSORRT
    assert resolve_engine_library("tensorrt-rtx") is TENSORRT_RTX
    with pytest.raises(ConfigError, match="--engine-lib 'tensorrt-llm' is not known; choose one of: tensorrt, tensorrt-rtx"):
        resolve_engine_library("tensorrt-llm")


@pytest.mark.parametrize("module", ["tensorrt_rtx", "tensorrt_rtx_bindings"])
def test_rtx_imports_under_either_module_name(monkeypatch, module):
    fake = fake_tensorrt_rtx()
    monkeypatch.setitem(sys.modules, module, fake)
    monkeypatch.setattr(device_mod, "_preload_rtx_libraries", lambda: None)
    assert import_engine_library("tensorrt-rtx") == (TENSORRT_RTX, fake)


def test_rtx_missing_or_too_old_is_one_line(monkeypatch):
    with pytest.raises(MissingDependencyError, match=r"TensorRT-RTX is not installed .*deploy-unet\[tensorrt-rtx\]"):
        import_engine_library("tensorrt-rtx")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", fake_tensorrt_rtx("1.6.0.3"))
    monkeypatch.setattr(device_mod, "_preload_rtx_libraries", lambda: None)
    with pytest.raises(MissingDependencyError, match="TensorRT-RTX 1.6.0.3 is not supported; deploy-unet needs TensorRT-RTX 1.7"):
        import_engine_library("tensorrt-rtx")


def test_rtx_shared_libraries_are_preloaded_in_order_from_the_libs_package(tmp_path, monkeypatch):
    """The libs wheel's folder need not be on LD_LIBRARY_PATH: the core library, then its parser, globally."""
    package = tmp_path / "tensorrt_rtx_libs"
    package.mkdir()
    (package / "__init__.py").write_text("raise AssertionError('the package must not be imported')\n")
    for name in ("libtensorrt_onnxparser_rtx.so.1", "libtensorrt_rtx.so.1"):
        (package / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = []
    monkeypatch.setattr(device_mod.ctypes, "CDLL", lambda path, mode=0: loaded.append((Path(path).name, mode)))
    device_mod._preload_rtx_libraries()
    assert loaded == [("libtensorrt_rtx.so.1", ctypes.RTLD_GLOBAL), ("libtensorrt_onnxparser_rtx.so.1", ctypes.RTLD_GLOBAL)]


# -- plan and build ---------------------------------------------------------------------------------


def _fake_build_env(monkeypatch, module, gpu=RTX4090):
    library = TENSORRT_RTX if module.__version__.startswith("1.") else TENSORRT
    monkeypatch.setattr(build_mod, "require_cuda_device", lambda index=0, library=None: gpu)
    monkeypatch.setattr(build_mod, "import_engine_library", lambda name=None: (library, module))


def test_rtx_plan_refuses_tensorrt_only_options_and_warns_on_int8(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="--hardware-compat ampere\\+ is a TensorRT option"):
        plan_build(onnx_path, engine_lib="tensorrt-rtx", hardware_compat="ampere+")
    with pytest.raises(ConfigError, match="--version-compatible is a TensorRT option"):
        plan_build(onnx_path, engine_lib="tensorrt-rtx", version_compatible=True)
    with pytest.raises(ConfigError, match="is not known"):
        plan_build(onnx_path, engine_lib="trt")
    int8 = plan_build(make_onnx(tmp_path / "q.onnx", "int8"), engine_lib="tensorrt-rtx")
    assert int8.engine_lib == "tensorrt-rtx" and any("weight-only" in w for w in int8.warnings)
    assert not any("weight-only" in w for w in plan_build(make_onnx(tmp_path / "q2.onnx", "int8")).warnings)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_build_uses_the_same_calls_and_records_the_library(tmp_path, monkeypatch, precision):
    rtx = fake_tensorrt_rtx()
    _fake_build_env(monkeypatch, rtx)
    plan = plan_build(make_onnx(tmp_path / "m.onnx", precision), tmp_path / "m.rtx.engine", engine_lib="tensorrt-rtx",
                      workspace_mib=256, timing_cache=tmp_path / "rtx.cache")
    result = build_engine(plan)
    assert ("create_network", 1 << 0) in rtx.calls  # STRONGLY_TYPED looked up by name: member 0 in 1.7
    assert ("set_memory_pool_limit", "WORKSPACE", 256 << 20) in rtx.calls
    build_call = next(c for c in rtx.calls if c[0] == "build")
    assert build_call == ("build", [], 3, None, "DETAILED")  # hardware_compatibility_level left alone
    manifest = read_manifest(result.manifest_path)
    assert manifest.library == "tensorrt-rtx" and manifest.tensorrt_version == "1.7.1.116"
    assert manifest.runs_on == ["8.0", "8.6", "8.9", "12.0", "12.1", ">12.0"]
    assert manifest.builder["network_flags"] == ["STRONGLY_TYPED"] and manifest.precision == precision
    assert (tmp_path / "rtx.cache").read_bytes()  # the timing cache was written


def test_tensorrt_manifest_records_where_it_runs(tmp_path, monkeypatch):
    _fake_build_env(monkeypatch, fake_tensorrt(), gpu=A100)
    onnx_path = make_onnx(tmp_path / "m.onnx")
    plain = read_manifest(build_engine(plan_build(onnx_path, tmp_path / "a.engine")).manifest_path)
    assert plain.library == "tensorrt" and plain.runs_on == ["8.0"]
    ampere = read_manifest(build_engine(plan_build(onnx_path, tmp_path / "b.engine", hardware_compat="ampere+")).manifest_path)
    assert ampere.runs_on == [">=8.0"]


def test_old_manifests_read_as_tensorrt(tmp_path):
    path = tmp_path / "m.engine.json"
    write_manifest(make_manifest(), path)
    text = path.read_text().replace('"library": "tensorrt",', "").replace('"runs_on": null,', "")
    path.write_text(text)
    old = read_manifest(path)
    assert old.library == "tensorrt" and old.runs_on is None


# -- the runner refuses a GPU outside the list, before importing or deserializing --------------------


def _rtx_engine(tmp_path, version="1.7.1.116"):
    path = tmp_path / "m.rtx.engine"
    path.write_bytes(b"not a real plan")
    manifest = make_manifest(version, gpu=H100)
    manifest.library, manifest.runs_on = "tensorrt-rtx", list(TENSORRT_RTX.runs_on)
    write_manifest(manifest, manifest_path_for(path))
    return path


def _library_must_not_be_imported(name=None):
    raise AssertionError("the engine library was imported before the GPU check")


def test_runner_refuses_h100_for_rtx_in_one_line_before_importing(tmp_path, monkeypatch):
    engine = _rtx_engine(tmp_path)
    monkeypatch.setattr(runner_mod, "require_cuda_device", lambda index=0, library=None: H100)
    monkeypatch.setattr(runner_mod, "import_engine_library", _library_must_not_be_imported)
    runner = TensorRTRunner(engine)
    with pytest.raises(ArtifactError) as err:
        runner.activate()
    message = str(err.value)
    assert "\n" not in message and not runner.is_active
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in message
    assert "8.0 8.6 8.9 12.0 12.1 >12.0" in message


def test_runner_imports_the_manifests_library_and_checks_its_version(tmp_path, monkeypatch):
    engine = _rtx_engine(tmp_path, version="1.7.1.116")
    asked = []

    def fake_import(name=None):
        asked.append(name)
        return TENSORRT_RTX, fake_tensorrt_rtx("1.7.2.5")

    monkeypatch.setattr(runner_mod, "require_cuda_device", lambda index=0, library=None: RTX4090)
    monkeypatch.setattr(runner_mod, "import_engine_library", fake_import)
    with pytest.raises(ArtifactError, match="built with TensorRT-RTX 1.7.1.116 and this is TensorRT-RTX 1.7.2.5"):
        TensorRTRunner(engine).activate()
    assert asked == ["tensorrt-rtx"]


# -- pipeline: built, reported as not runnable, others unaffected -------------------------------------


@pytest.mark.parametrize("gpu, runnable", [(H100, False), (RTX4090, True)])
def test_pipeline_builds_rtx_engines_and_marks_them_by_gpu(tmp_path, monkeypatch, gpu, runnable):
    rtx = fake_tensorrt_rtx()
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", rtx)
    monkeypatch.setattr(device_mod, "cuda_devices", lambda: DeviceReport([gpu], source="torch"))
    _fake_build_env(monkeypatch, rtx, gpu=gpu)
    artifacts = [
        pipeline.Artifact("ONNX fp32", make_onnx(tmp_path / "m.onnx"), "fp32"),
        pipeline.Artifact("ONNX fp16", make_onnx(tmp_path / "m.fp16.onnx", "fp16"), "fp16"),
        pipeline.Artifact("ONNX int8 (onnxruntime Q/DQ)", make_onnx(tmp_path / "m.int8.ort.onnx", "int8"), "int8"),
    ]
    engines, note = pipeline._build_engines(artifacts, tmp_path, lambda message: None, "tensorrt-rtx")
    assert [e.path.name for e in engines] == ["m.rtx.engine", "m.fp16.rtx.engine"]
    assert all(e.path.is_file() for e in engines)
    assert [e.runnable for e in engines] == [runnable, runnable]
    if runnable:
        assert all(e.note == "" for e in engines) and "not runnable" not in note
    else:
        assert all(e.note == "built but not runnable on this GPU (cc 9.0)" for e in engines)
        assert "2 not runnable here" in note and "this GPU is 9.0" in note


def test_pipeline_skips_rtx_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_devices", lambda: DeviceReport([RTX4090], source="torch"))
    engines, note = pipeline._build_engines([], tmp_path, print, "tensorrt-rtx")
    assert engines == [] and note == ("TensorRT-RTX engines skipped: TensorRT-RTX is not installed "
                                      "(pip install 'deploy-unet[tensorrt-rtx]')")


# -- doctor ---------------------------------------------------------------------------------------------


def test_doctor_reports_rtx(monkeypatch):
    monkeypatch.setattr(doctor, "cuda_devices", lambda: DeviceReport(source="torch", error="no driver"))
    report = doctor.run_doctor()
    rtx = report.backend("tensorrt-rtx")
    assert not rtx.usable and "TensorRT-RTX: not installed" in rtx.detail and "deploy-unet[tensorrt-rtx]" in rtx.fix
    assert report.packages["tensorrt-rtx"] is None

    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", fake_tensorrt_rtx())
    monkeypatch.setattr(device_mod, "_preload_rtx_libraries", lambda: None)
    monkeypatch.setattr(doctor, "_importable", lambda name: name in sys.modules)
    monkeypatch.setattr(doctor, "cuda_devices", lambda: DeviceReport([H100], source="torch"))
    report = doctor.run_doctor()
    rtx = report.backend("tensorrt-rtx")
    assert report.packages["tensorrt-rtx"] == "1.7.1.116"
    assert not rtx.usable and "compute capability 9.0" in rtx.detail and "8.0 8.6 8.9 12.0 12.1 >12.0" in rtx.detail



def test_bindings_without_their_shared_libraries_give_the_library_path_fix(monkeypatch):
    """What tensorrt_rtx_bindings 1.7 raises when libtensorrt_rtx.so.1 is nowhere to be found (seen here with the
    bindings wheel alone): an ImportError naming the .so, which must not read as 'not installed'."""
    monkeypatch.setattr(device_mod, "_module_present", lambda name: name == "tensorrt_rtx_bindings")
    monkeypatch.setattr(device_mod, "_preload_rtx_libraries", lambda: None)

    def failing_import(name):
        raise ImportError("libtensorrt_rtx.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(device_mod.importlib, "import_module", failing_import)
    with pytest.raises(MissingDependencyError) as err:
        import_engine_library("tensorrt-rtx")
    message = str(err.value)
    assert message.startswith("TensorRT-RTX is installed but cannot load its libraries (libtensorrt_rtx.so.1")
    assert "LD_LIBRARY_PATH" in message and "\n" not in message


def test_pinned_staging_allocates_once_per_shape():
    import torch

    from deploy_unet.runtime.host_buffers import PinnedStaging

    allocations = []

    class CpuTorch:  # torch without pinning (no CUDA here); counts allocations
        float32 = torch.float32

        @staticmethod
        def empty(shape, dtype, pin_memory):
            allocations.append((shape, pin_memory))
            return torch.empty(shape, dtype=dtype)

    staging = PinnedStaging(CpuTorch)
    a, b = np.ones((1, 3, 4, 4), np.float32), np.full((1, 3, 4, 4), 2, np.float32)
    first = staging.stage(a)
    second = staging.stage(b)
    third = staging.stage(np.zeros((2, 3, 4, 4), np.float32))
    assert first is second and third is not first
    assert allocations == [((1, 3, 4, 4), True), ((2, 3, 4, 4), True)]
    np.testing.assert_array_equal(second.numpy(), b)


def test_same_cc_on_a_tensorrt_without_it_is_one_line(tmp_path, monkeypatch):
    """TensorRT 10.3 (JetPack 6) has no HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (its python/src)."""
    import enum

    old = fake_tensorrt("10.3.0.30")
    old.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})
    _fake_build_env(monkeypatch, old)
    plan = plan_build(make_onnx(tmp_path / "m.onnx"), hardware_compat="same-cc")
    with pytest.raises(ConfigError, match="needs a newer TensorRT: 10.3.0.30 has no HardwareCompatibilityLevel"):
        build_engine(plan)
    assert not Path(plan.engine_path).exists()


@pytest.mark.parametrize("library, says", [
    ("tensorrt-rtx", "TensorRT-RTX is not installed (install TensorRT-RTX 1.7+"),
    ("tensorrt", "TensorRT is not installed (install TensorRT 10.x or 11.x"),
    (None, "neither TensorRT nor TensorRT-RTX is installed"),
])
def test_no_gpu_and_no_library_names_the_library_asked_for(monkeypatch, library, says):
    monkeypatch.setattr(device_mod, "cuda_devices", lambda: DeviceReport(source="torch", error="no driver"))
    with pytest.raises(MissingDependencyError) as err:
        device_mod.require_cuda_device(0, library)
    message = str(err.value)
    assert message.startswith("no CUDA device (no driver)") and says in message and "\n" not in message
