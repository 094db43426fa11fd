"""TensorRT runner on CPU: everything that must happen before TensorRT is touched."""

from __future__ import annotations

import numpy as np
import pytest
from test_manifest import A10, T4, make_manifest

from deploy_unet.engine.device import DeviceReport
from deploy_unet.engine.manifest import manifest_path_for, write_manifest
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.runtime import tensorrt_runner as runner_mod
from deploy_unet.runtime.tensorrt_runner import TensorRTRunner


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"not a real plan")
    write_manifest(make_manifest(), manifest_path_for(path))
    return path


class _TensorRTMustNotBeUsed:
    __version__ = "10.16.0.72"

    def __getattr__(self, name):
        raise AssertionError(f"trt.{name} touched before the compatibility check passed")


def test_missing_manifest_is_refused_before_anything(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="manifest .* does not exist"):
        TensorRTRunner(path)
    with pytest.raises(ArtifactError, match="engine .* does not exist"):
        TensorRTRunner(tmp_path / "other.engine")


def test_contract_comes_from_the_manifest(engine):
    runner = TensorRTRunner(engine, pad=True)
    assert (runner.divisor, runner.in_channels) == (16, 3)
    assert runner.output_names == ["logits"]
    spec = runner.input_spec["input"]
    assert spec.dtype == "float32" and spec.shape == (None, 3, None, None)


def test_cuda_graph_and_layer_profile_do_not_mix(engine):
    with pytest.raises(ConfigError, match="cannot be combined"):
        TensorRTRunner(engine, cuda_graph=True, layer_profile=True)


def test_no_gpu_stops_before_tensorrt(engine, monkeypatch):
    monkeypatch.setattr(
        "deploy_unet.engine.device.cuda_devices", lambda: DeviceReport(source="torch", error="no driver")
    )
    monkeypatch.setattr(runner_mod, "import_engine_library", lambda name=None: (None, _TensorRTMustNotBeUsed()))
    with pytest.raises(MissingDependencyError, match="no CUDA device"):
        TensorRTRunner(engine).activate()


@pytest.mark.parametrize(
    "version, gpu, message",
    [("10.15.1.29", A10, "built with TensorRT 10.16.0.72"), ("10.16.0.72", T4, "compute capability")],
)
def test_mismatch_is_refused_before_deserializing(engine, monkeypatch, version, gpu, message):
    fake = _TensorRTMustNotBeUsed()
    fake.__version__ = version
    monkeypatch.setattr(runner_mod, "require_cuda_device", lambda index=0, library=None: gpu)
    monkeypatch.setattr(runner_mod, "import_engine_library", lambda name=None: (None, fake))
    runner = TensorRTRunner(engine)
    with pytest.raises(ArtifactError, match=message):
        runner.activate()
    assert not runner.is_active


def test_shape_outside_the_profile_names_the_range(engine):
    runner = TensorRTRunner(engine)
    with pytest.raises(Exception, match="outside the engine's profile 1x3x16x16 .. 1x3x128x128"):
        runner._check_profile("input", np.zeros((1, 3, 256, 64)).shape)
    runner._check_profile("input", (1, 3, 128, 16))  # edges of the range are inside
