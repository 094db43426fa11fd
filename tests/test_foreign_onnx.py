"""ONNX files deploy-unet did not export (issue 27 item 4): plain torch.onnx.export (TorchScript exporter) and
an NHWC graph built with onnx.helper as tf2onnx writes it, each through describe (or options), quantize int8
in both placements, validate, predict (masks at each image's size) and triton-repo."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.metadata import read_props

QUICK = ["--calib", "synthetic:seed=1,size=64x64", "--calib-samples", "8", "--eval", "synthetic:seed=2,size=64x64",
         "--eval-samples", "2", "--max-dice-drop", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


class TinyUNet(nn.Module):
    """Two poolings, a skip: divisor 4, found only by running it (the file states none)."""

    def __init__(self, channels=3, classes=3):
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.up1, self.up2 = nn.ConvTranspose2d(16, 8, 2, 2), nn.ConvTranspose2d(8, 8, 2, 2)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        a = F.relu(self.a(x))
        c = F.relu(self.c(F.max_pool2d(F.relu(self.b(F.max_pool2d(a, 2))), 2)))
        return self.head(torch.cat([self.up2(self.up1(c)), a], 1))


def torchscript_onnx(net: nn.Module, path: Path, channels=3) -> Path:
    """What a user's own script writes: the TorchScript exporter, input 'images', dynamic N/H/W."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.randn(1, channels, 64, 64), str(path), input_names=["images"],
                          output_names=["out"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}})
    return path


def nhwc_onnx(path: Path) -> Path:
    """tf2onnx's shape of a Keras segmentation head: NHWC in, Transpose, Conv/MaxPool/Resize, Transpose, NHWC
    out (unk__ symbols, producer tf2onnx). MaxPool then 2x Resize and an Add with the skip: divisor 2."""
    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [2, 4, 1, 1], rng.standard_normal(8).astype(np.float32))
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p1", "", "scales"], ["u1"], mode="nearest"),
        helper.make_node("Add", ["u1", "r1"], ["s1"]),
        helper.make_node("Conv", ["s1", "w2"], ["logits_nchw"]),
        helper.make_node("Transpose", ["logits_nchw"], ["conv2d_out"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__10", "unk__11", "unk__12", 3])],
        [helper.make_tensor_value_info("conv2d_out", TensorProto.FLOAT, ["unk__13", "unk__14", "unk__15", 2])],
        [w1, w2, scales])
    model = helper.make_model(graph, producer_name="tf2onnx", producer_version="1.16.1",
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def images(folder: Path) -> list[Path]:
    """Odd sizes, RGB and grey: masks must come back at each image's own size."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    out = []
    for name, shape in (("rgb", (37, 50, 3)), ("grey", (45, 29))):
        path = folder / f"{name}.png"
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def through_everything(model: Path, reference: Path, tmp_path: Path, extra=()) -> None:
    """quantize int8 (both placements), validate against ``reference``, predict, triton-repo --ensemble."""
    int8 = {}
    for target, suffix in (("tensorrt", "int8"), ("onnxruntime", "int8.ort")):
        int8[target] = tmp_path / f"{model.stem}.{suffix}.onnx"
        result = invoke("quantize", model, "--precision", "int8", "--target", target, *QUICK, "-o", int8[target], *extra)
        assert result.exit_code == 0, result.output
        assert read_model_info(int8[target]).precision == "int8"
    result = invoke("validate", int8["onnxruntime"], "--reference", reference, "--data", "synthetic:size=64x64",
                    "-n", "2", "--gate", "mask_agreement=50", "--gate", "miou_drop=1", *extra)
    assert result.exit_code == 0, result.output
    pics = images(tmp_path / "pics")
    out = tmp_path / "pred"
    result = invoke("predict", int8["tensorrt"], *pics, "-o", out, *extra)
    assert result.exit_code == 0, result.output
    for pic in pics:
        with Image.open(pic) as im, Image.open(out / f"{pic.stem}.mask.png") as mask:
            assert mask.size == im.size
    result = invoke("triton-repo", model, int8["onnxruntime"], "-o", tmp_path / "repo", "--ensemble", *extra)
    assert result.exit_code == 0, result.output
    params = (tmp_path / "repo" / f"{model.stem}_preprocess" / "config.pbtxt").read_text()
    assert "output_stride" in params


def test_torchscript_exported_net_described_once_then_everything_without_options(tmp_path):
    foreign = torchscript_onnx(TinyUNet(), tmp_path / "foreign.onnx")
    described = tmp_path / "described.onnx"
    result = invoke("describe", foreign, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                    "--class-names", "bg,a,b", "-o", described)
    assert result.exit_code == 0, result.output
    assert "divisor 4" in result.output and "assumed: pixel values in [0, 1]" in result.output
    info = read_model_info(described)
    assert (info.divisor, info.in_channels, info.num_classes, info.output_stride) == (4, 3, 3, 1)
    assert (info.input_names, info.output_names, info.class_names) == (["images"], ["out"], ["bg", "a", "b"])
    assert info.mean == [0.485, 0.456, 0.406] and info.extra["source_layout"] == "NCHW"
    assert "arch" not in read_props(onnx.load(str(foreign)))  # the original is left as it was
    through_everything(described, foreign, tmp_path)


def test_undescribed_file_takes_options_and_says_what_it_assumed(tmp_path):
    foreign = torchscript_onnx(TinyUNet(), tmp_path / "foreign.onnx")
    out = tmp_path / "q.onnx"
    result = invoke("quantize", foreign, "--precision", "int8", "--target", "onnxruntime", *QUICK, "-o", out,
                    "--mean", "0.5", "--std", "0.25")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no deploy-unet metadata" in notes[0] and "divisor 4" in notes[0]
    assert "assumed pixel values in [0, 1]" in notes[0] and "no normalization" not in notes[0]
    info = read_model_info(out)  # the quantized file carries the full description
    assert (info.mean, info.std, info.divisor) == ([0.5], [0.25], 4)
    # a wrong divisor given by hand is caught by running it, in one line
    result = invoke("quantize", foreign, "--precision", "int8", *QUICK, "-o", tmp_path / "bad.onnx", "--divisor", "3")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "error:" in result.output and "height" in result.output


def test_nhwc_graph_is_refused_by_name_then_described_to_nchw(tmp_path):
    model = nhwc_onnx(tmp_path / "keras.onnx")
    result = invoke("quantize", model, "--precision", "int8", *QUICK)
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert "takes NHWC input" in line and "deploy-unet describe" in line
    described = tmp_path / "keras.nchw.onnx"
    result = invoke("describe", model, "--scale", "255", "--mean", "127.5", "--std", "127.5", "-o", described)
    assert result.exit_code == 0, result.output
    assert "input was NHWC" in result.output
    info = read_model_info(described)
    assert (info.in_channels, info.num_classes, info.divisor, info.value_scale) == (3, 2, 2, 255.0)
    assert info.extra["source_layout"] == "NHWC"
    # the described graph takes NCHW and gives NCHW, equal to the original on the transposed tensors
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 6, 10)).astype(np.float32)
    nchw = ort.InferenceSession(str(described), providers=["CPUExecutionProvider"]).run(None, {"input_1": x})[0]
    nhwc = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"input_1": x.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(nchw, nhwc.transpose(0, 3, 1, 2), rtol=1e-6)
    through_everything(described, described, tmp_path)


def test_a_graph_ending_in_argmax_is_refused_in_one_line(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["n", "h", "w"])
    graph = helper.make_graph([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)], "g", [x], [y])
    path = tmp_path / "argmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    result = invoke("describe", path, "-o", tmp_path / "d.onnx")
    assert result.exit_code == 2
    assert "int64" in result.output and "without the argmax" in result.output
    assert not (tmp_path / "d.onnx").exists()


def test_quarter_resolution_logits_are_upsampled_like_torch_bilinear():
    from deploy_unet.processing import Geometry, postprocess, probabilities, upsample_logits

    logits = np.random.default_rng(0).standard_normal((1, 3, 8, 12)).astype(np.float32)
    geometry = Geometry(30, 45, 32, 48, "pad", output_stride=4)
    want = F.interpolate(torch.from_numpy(logits), size=(32, 48), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(upsample_logits(logits, geometry), want, atol=1e-5)
    assert postprocess(logits, geometry).shape == (1, 30, 45)
    assert probabilities(logits, geometry).shape == (1, 3, 30, 45)
    np.testing.assert_array_equal(postprocess(logits, geometry)[0], want[0].argmax(0)[:30, :45])


def test_describe_of_a_deploy_unet_file_restates_only_what_is_given(tmp_path, thin_unet_onnx):
    _, path = thin_unet_onnx
    out = tmp_path / "named.onnx"
    before = read_model_info(path)
    names = [f"c{i}" for i in range(before.num_classes)]
    result = invoke("describe", path, "--class-names", ",".join(names), "-o", out)
    assert result.exit_code == 0, result.output
    after = read_model_info(out)
    assert after.class_names == names and after.mean == before.mean and after.divisor == before.divisor
    assert json.loads(read_props(onnx.load(str(out)))["class_names"]) == names
