"""Engine manifests: round trip, and refusing engines this TensorRT/GPU cannot run."""

from __future__ import annotations

import json

import pytest

from deploy_unet.engine.device import GpuInfo
from deploy_unet.engine.manifest import (
    FORMAT,
    EngineManifest,
    check_compatible,
    manifest_path_for,
    model_section,
    read_manifest,
    write_manifest,
)
from deploy_unet.errors import ArtifactError
from deploy_unet.metadata import ModelInfo

INFO = ModelInfo(arch="unet", divisor=16, in_channels=3, num_classes=2, mean=[0.5] * 3, std=[0.2] * 3,
                 export_shape=[1, 3, 64, 64], precision="fp16")
A100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", "8.0", 81000)
A10 = GpuInfo(0, "NVIDIA A10", "8.6", 22000)
A6000 = GpuInfo(0, "NVIDIA RTX A6000", "8.6", 48000)
T4 = GpuInfo(0, "Tesla T4", "7.5", 15000)


def make_manifest(version="10.16.0.72", gpu=A10, **builder) -> EngineManifest:
    return EngineManifest(
        tensorrt_version=version,
        gpu=gpu.to_dict(),
        precision="fp16",
        profiles=[{"min": [1, 3, 16, 16], "opt": [1, 3, 64, 64], "max": [1, 3, 128, 128]}],
        inputs=[{"name": "input", "dtype": "FLOAT", "shape": [-1, 3, -1, -1],
                 "min": [1, 3, 16, 16], "opt": [1, 3, 64, 64], "max": [1, 3, 128, 128]}],
        outputs=[{"name": "logits", "dtype": "FLOAT", "shape": [-1, 2, -1, -1]}],
        onnx={"path": "/x/m.onnx", "sha256": "ab" * 32, "metadata": INFO.to_props()},
        model=model_section(INFO),
        builder={"hardware_compat": "none", "version_compatible": False, **builder},
    )


def test_round_trip(tmp_path):
    engine = tmp_path / "m.engine"
    path = manifest_path_for(engine)
    assert path.name == "m.engine.json"
    manifest = make_manifest()
    write_manifest(manifest, path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["model"]["mean"] == [0.5] * 3
    again = read_manifest(path)
    assert again == manifest
    info = again.model_info()
    assert (info.divisor, info.in_channels, info.precision) == (16, 3, "fp16")


def test_unreadable_manifests_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist; rebuild m.engine"):
        read_manifest(tmp_path / "m.engine.json")
    bad = tmp_path / "bad.engine.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a deploy-unet engine manifest"):
        read_manifest(bad)
    data = make_manifest().to_dict()
    del data["gpu"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="lacks gpu"):
        read_manifest(bad)


def test_same_version_and_gpu_is_accepted():
    assert check_compatible(make_manifest(), "10.16.0.72", A10) == []


def test_other_tensorrt_version_is_refused():
    with pytest.raises(ArtifactError, match="built with TensorRT 10.16.0.72 and this is TensorRT 10.16.1.5"):
        check_compatible(make_manifest(), "10.16.1.5", A10)
    with pytest.raises(ArtifactError, match="--version-compatible"):
        check_compatible(make_manifest(), "11.1.0.10", A10)


def test_version_compatible_runs_on_later_same_major_only():
    manifest = make_manifest("10.8.0.43", version_compatible=True)
    assert check_compatible(manifest, "10.16.0.72", A10) == []
    with pytest.raises(ArtifactError, match="same or a later 10.x"):
        check_compatible(manifest, "10.3.0.30", A10)
    with pytest.raises(ArtifactError, match="same or a later 10.x"):
        check_compatible(manifest, "11.1.0.10", A10)


def test_other_compute_capability_is_refused():
    with pytest.raises(ArtifactError, match="built for NVIDIA A10 \\(compute capability 8.6\\).*Tesla T4"):
        check_compatible(make_manifest(), "10.16.0.72", T4)


def test_same_cc_other_model_warns_unless_built_same_cc():
    (warning,) = check_compatible(make_manifest(), "10.16.0.72", A6000)
    assert "tuned for the other GPU" in warning
    assert check_compatible(make_manifest(hardware_compat="same-cc"), "10.16.0.72", A6000) == []
    with pytest.raises(ArtifactError):
        check_compatible(make_manifest(hardware_compat="same-cc"), "10.16.0.72", A100)


def test_ampere_plus_runs_on_any_cc_8_or_newer():
    manifest = make_manifest(hardware_compat="ampere+")
    assert check_compatible(manifest, "10.16.0.72", A100) == []
    assert check_compatible(manifest, "10.16.0.72", {"name": "NVIDIA H100", "compute_capability": "9.0"}) == []
    with pytest.raises(ArtifactError, match="Ampere and newer"):
        check_compatible(manifest, "10.16.0.72", T4)
