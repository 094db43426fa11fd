"""Engine plans for volumes (issue 24): 5-D profiles min/opt/max per axis, checked against the divisor of each
axis, and the layer table's 3D summary. CPU tests with the recording fake of tests/trt_fakes.py: they run
deploy-unet's own Python around TensorRT, not TensorRT; no 5-D engine was built on a GPU here (not run)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_engine_rtx import _fake_build_env
from trt_fakes import fake_tensorrt

from deploy_unet.engine.build import build_engine, parse_shape, plan_build
from deploy_unet.engine.layers import describe_summary, parse_layer_information, summarize_layers
from deploy_unet.engine.manifest import read_manifest
from deploy_unet.errors import ArtifactError, ShapeContractError
from deploy_unet.metadata import ModelInfo, write_props


def volume_onnx(path, divisors=(2, 8, 8), export_shape=(1, 1, 8, 32, 32), precision="fp32", spatial_dims=3):
    """A 1x1x1 Conv3d net with volume metadata (per-axis divisors), built by hand in milliseconds."""
    w = np.random.default_rng(0).standard_normal((3, 1, 1, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], kernel_shape=[1, 1, 1])], "vol",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, "depth", "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "depth", "height", "width"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    uniform = len(set(divisors)) == 1
    info = ModelInfo("unet3d", int(np.lcm.reduce(divisors)), 1, 3, net_config={"depth": 3}, precision=precision,
                     export_shape=list(export_shape), spatial_dims=spatial_dims,
                     divisors=[] if uniform else list(divisors))
    write_props(model, info.to_props())
    onnx.save(model, path)
    return path


def test_default_5d_profile_steps_each_axis_by_its_divisor(tmp_path):
    plan = plan_build(volume_onnx(tmp_path / "v.onnx"))
    (profile,) = plan.profiles
    assert profile.min == (1, 1, 2, 8, 8) and profile.opt == (1, 1, 8, 32, 32) and profile.max == (1, 1, 16, 64, 64)
    assert parse_shape("2x1x16x64x64", "--max-shape") == (2, 1, 16, 64, 64)


@pytest.mark.parametrize("option, value, expected", [
    ("max_shape", "1x1x9x64x64", "--max-shape 1x1x9x64x64: depth 9 is not divisible by 2"),
    ("min_shape", "1x1x2x12x8", "--min-shape 1x1x2x12x8: height 12 is not divisible by 8"),
    ("opt_shape", "1x1x64x64", "--opt-shape 1x1x64x64: 4 dims, but the ONNX input has 5; write it as BxCxDxHxW"),
    ("min_shape", "1x1x16x8x8", "profile depth must satisfy min <= opt <= max, got 16, 8, 16"),
])
def test_5d_profile_refusals_name_the_axis(tmp_path, option, value, expected):
    with pytest.raises(ShapeContractError) as err:
        plan_build(volume_onnx(tmp_path / "v.onnx"), **{option: value})
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_rank_and_metadata_must_agree(tmp_path):
    with pytest.raises(ArtifactError, match="rank 5 but its metadata records 2 spatial dims"):
        plan_build(volume_onnx(tmp_path / "v.onnx", divisors=(8, 8, 8), spatial_dims=2))


TABLE_3D = """Engine Layer Information:
Layer(CaskConvolution): enc.0 Conv + Relu, Tactic: 0x1, input (Int8[1,1,32,64,64]) -> a (Int8[1,8,32,64,64])
Layer(CaskDeconvolution): up.0.up ConvTranspose, Tactic: 0x2, b (Half[1,64,4,8,8]) -> c (Half[1,32,8,16,16])
Layer(CaskConvolution): head Conv, Tactic: 0x3, d (Int8[1,8,32,64,64]) -> logits (Float[1,3,32,64,64])
Layer(Reformat): r, Tactic: 0x0, logits (Float[1,3,32,64,64]) -> out (Float[1,3,32,64,64])"""


def test_layer_table_says_which_3d_layers_run_int8():
    layers = parse_layer_information(TABLE_3D)
    assert [layer.is_3d for layer in layers] == [True] * 4 and layers[1].is_deconvolution
    summary = summarize_layers(layers)
    assert summary["convolutions_3d_by_compute_type"] == {"Int8": 2, "Half": 1}
    assert summary["deconvolutions_3d_by_compute_type"] == {"Half": 1}
    assert summary["convolutions_3d_not_int8"] == ["up.0.up ConvTranspose"]
    assert describe_summary(summary).endswith("; 3D: 2 Int8, 1 Half (deconvolutions: 1 Half)")


def test_fake_build_sets_the_5d_profile_and_records_the_3d_layers(tmp_path, monkeypatch):
    trt = fake_tensorrt(layer_table=TABLE_3D)
    _fake_build_env(monkeypatch, trt)
    plan = plan_build(volume_onnx(tmp_path / "v.onnx"), tmp_path / "v.engine", max_shape="2x1x16x64x64")
    result = build_engine(plan)
    assert ("set_shape", "input", (1, 1, 2, 8, 8), (1, 1, 8, 32, 32), (2, 1, 16, 64, 64)) in trt.calls
    manifest = read_manifest(result.manifest_path)
    assert manifest.profiles[0]["max"] == [2, 1, 16, 64, 64]
    assert manifest.model["spatial_dims"] == 3 and manifest.model["divisors"] == [2, 8, 8]
    assert manifest.layers["convolutions_3d_not_int8"] == ["up.0.up ConvTranspose"]
    info = manifest.model_info()
    assert info.spatial_dims == 3 and info.shape_contract.axis_divisors == (2, 8, 8)
