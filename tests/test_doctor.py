"""doctor: versions, devices and a verdict per backend, without TensorRT or a GPU."""

from __future__ import annotations

import json
import sys
import types

from click.testing import CliRunner

from deploy_unet import doctor
from deploy_unet.cli import cli
from deploy_unet.engine import device as device_mod
from deploy_unet.engine.device import DeviceReport

BACKENDS = ["torch-cpu", "torch-cuda", "torch-compile", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "tensorrt-rtx",
            "openvino"]


def _no_gpu(monkeypatch):
    report = DeviceReport(source="torch", error="torch 2.x+cpu is a CPU-only build")
    monkeypatch.setattr(doctor, "cuda_devices", lambda: report)


def test_every_backend_has_a_verdict_and_a_fix_when_unusable(monkeypatch):
    _no_gpu(monkeypatch)
    report = doctor.run_doctor()
    assert [b.name for b in report.backends] == BACKENDS
    import onnxruntime
    import torch

    assert report.packages["torch"] == torch.__version__
    assert report.packages["onnxruntime"] == onnxruntime.__version__
    assert report.onnxruntime_providers == onnxruntime.get_available_providers()
    assert report.backend("torch-cpu").usable and report.backend("onnxruntime-cpu").usable
    trt = report.backend("tensorrt")
    assert not trt.usable and "no CUDA device" in trt.detail and trt.fix
    for backend in report.backends:
        assert backend.usable or backend.fix, backend


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setattr(doctor, "_importable", lambda name: False if name == "tensorrt" else True)
    report = doctor.run_doctor()
    trt = report.backend("tensorrt")
    assert "TensorRT: not installed" in trt.detail
    assert "pip install tensorrt" in trt.fix
    assert report.packages["tensorrt"] is None


def test_unsupported_tensorrt_version_is_named(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    monkeypatch.setattr(doctor, "_importable", lambda name: True)
    report = doctor.run_doctor()
    assert report.packages["tensorrt"] == "8.6.1"
    assert "TensorRT 8.6.1 is not 10.x or 11.x" in report.backend("tensorrt").detail


def test_cli_doctor_text_and_json(monkeypatch):
    _no_gpu(monkeypatch)
    text = CliRunner().invoke(cli, ["doctor"])
    assert text.exit_code == 0, text.output
    for name in BACKENDS:
        assert name in text.output
    assert "fix:" in text.output
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [b["name"] for b in data["backends"]] == BACKENDS
    assert data["cuda"]["devices"] == [] and data["cuda"]["error"]


def test_device_query_never_raises_here():
    report = device_mod.cuda_devices()
    assert report.devices or report.error


def test_torch_compile_needs_a_cpp_compiler(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    row = doctor.run_doctor().backend("torch-compile")
    assert not row.usable and "no C++ compiler" in row.detail and "g++" in row.fix
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "clang++" else None)
    row = doctor.run_doctor().backend("torch-compile")
    assert row.usable and "CPU via clang++" in row.detail
