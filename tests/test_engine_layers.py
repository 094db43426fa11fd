"""The builder's layer table: parsed in both spellings TensorRT uses, summarized into the manifest, written by
--layer-info, and its absence said in one warning instead of an empty file."""

from __future__ import annotations

import pytest
from test_engine_rtx import _fake_build_env
from trt_fakes import fake_tensorrt, fake_tensorrt_rtx, make_onnx

from deploy_unet.engine.build import build_engine, plan_build
from deploy_unet.engine.layers import describe_summary, parse_layer_information, summarize_layers
from deploy_unet.engine.manifest import read_manifest

# TensorRT 10-style: "name (Type[dims])"; a reformat into int8, an int8 conv, a conv from fp16 to fp32 logits.
TABLE_10 = """Engine Layer Information:
Layer(Reformat): Reformatting CopyNode for Input Tensor 0 to /enc0/conv/Conv + /enc0/act/Relu, Tactic: 0x00000000000003ea, input (Float[1,3,64,64]) -> Reformatted Input Tensor 0 to /enc0/conv/Conv + /enc0/act/Relu (Int8[1,3:4,64,64])
Layer(CaskConvolution): /enc0/conv/Conv + /enc0/act/Relu, Tactic: 0x7f0a55e1b2c30001, Reformatted Input Tensor 0 to /enc0/conv/Conv + /enc0/act/Relu (Int8[1,3:4,64,64]) -> /enc0/act/Relu_output_0 (Int8[1,16:32,64,64])
Layer(CaskConvolution): /head/Conv, Tactic: 0x0000000000000002, /dec/act/Relu_output_0 (Half[1,16:8,64,64]) -> logits (Float[1,2,64,64])"""

# TensorRT 8-style: "name[Type(dims)]", and a constant with no inputs.
TABLE_8 = """[V] Engine Layer Information:
Layer(CaskConvolution): Conv_6 + Relu_7, Tactic: 0x1, input.12[Int8(1,64,540,960)] -> input.16[Int8(1,64,540,960)]
Layer(Constant): 3198 + (Unnamed Layer* 13) [Shuffle], Tactic: 0,  -> (Unnamed Layer* 13) [Shuffle]_output[Float(1,4864,256)]"""


def test_parses_the_tensorrt_10_spelling():
    layers = parse_layer_information(TABLE_10)
    assert [layer.type for layer in layers] == ["Reformat", "CaskConvolution", "CaskConvolution"]
    assert layers[1].name == "/enc0/conv/Conv + /enc0/act/Relu"
    assert layers[0].input_types == ("Float",) and layers[0].output_types == ("Int8",)
    assert [layer.compute_type for layer in layers if layer.is_convolution] == ["Int8", "Half"]


def test_parses_the_tensorrt_8_spelling_and_a_layer_without_inputs():
    conv, constant = parse_layer_information(TABLE_8)
    assert conv.name == "Conv_6 + Relu_7" and conv.input_types == conv.output_types == ("Int8",)
    assert constant.input_types == () and constant.output_types == ("Float",) and constant.compute_type == "Float"


def test_summary_counts_convolutions_by_what_they_compute_in():
    summary = summarize_layers(parse_layer_information(TABLE_10))
    assert summary == {"count": 3, "by_type": {"CaskConvolution": 2, "Reformat": 1},
                       "convolutions_by_compute_type": {"Int8": 1, "Half": 1}}
    assert describe_summary(summary) == "3 layers; convolutions: 1 Int8, 1 Half"


@pytest.mark.parametrize("make_fake", [fake_tensorrt, fake_tensorrt_rtx])
def test_build_records_the_layer_table(tmp_path, monkeypatch, make_fake):
    _fake_build_env(monkeypatch, make_fake(layer_table=TABLE_10))
    plan = plan_build(make_onnx(tmp_path / "q.onnx", "int8"), tmp_path / "q.engine")
    result = build_engine(plan, layer_info_path=tmp_path / "q.layers.txt")
    assert (tmp_path / "q.layers.txt").read_text() == TABLE_10 == result.layer_information
    assert read_manifest(result.manifest_path).layers["convolutions_by_compute_type"] == {"Int8": 1, "Half": 1}


def test_no_layer_table_is_a_warning_not_an_empty_file(tmp_path, monkeypatch):
    _fake_build_env(monkeypatch, fake_tensorrt())
    messages = []
    plan = plan_build(make_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")
    result = build_engine(plan, log=messages.append, layer_info_path=tmp_path / "m.layers.txt")
    assert not (tmp_path / "m.layers.txt").exists()
    assert any("logged no layer table" in m for m in messages)
    assert read_manifest(result.manifest_path).layers is None
