"""Nets the reference export path could not take (issue 27 items 1-3, 5): exporter fallback, failures that
name their cause, structured and low-resolution outputs; each that exports goes through quantize (both
placements), validate, predict (masks at each image's size) and triton-repo."""

from __future__ import annotations

import inspect

import numpy as np
import onnxruntime as ort
import torch
from click.testing import CliRunner

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from tests import any_nets
from tests.test_foreign_onnx import through_everything


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def export(tmp_path, name, *options):
    out = tmp_path / f"{name}.onnx"
    result = invoke("export", "--model", f"tests.any_nets:{name}", "--height", 32, "--width", 32, "-o", out, *options)
    return out, result


def line_of(marker: str) -> int:
    lines, _ = inspect.getsourcelines(any_nets)  # a module's lines start at 1
    return next(i for i, text in enumerate(lines, 1) if f"# {marker}" in text)


def test_data_dependent_branch_that_matters_is_refused_in_few_lines_naming_it(tmp_path, capfd):
    out, result = export(tmp_path, "DataDependent")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) <= 4, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: the TorchScript exporter traced one branch of the data-dependent condition")
    assert f"any_nets.py:{line_of('BRANCH')} (return y * 2 if y.mean() > 0 else y" in error
    assert "torch.where" in error and not out.exists()
    captured = capfd.readouterr()
    assert "GraphModule" not in captured.err + captured.out and "def forward" not in captured.err + captured.out
    # --exporter dynamo: torch.export's own refusal, its cause class and the user's line, nothing of the dump
    out, result = export(tmp_path, "DataDependent", "--exporter", "dynamo")
    assert result.exit_code == 2
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: torch.export cannot export the net: data-dependent branch")
    assert f"any_nets.py:{line_of('BRANCH')}" in error and "--exporter auto falls back" in error
    assert "Exception summary" not in result.output and "GraphModule" not in capfd.readouterr().err


def test_data_dependent_guard_falls_back_to_torchscript_and_is_proved(tmp_path):
    out, result = export(tmp_path, "NanGuard")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert any("falling back to the TorchScript exporter" in n and f"any_nets.py:{line_of('GUARD')}" in n
               for n in notes), result.output
    assert any("equals PyTorch on 6 inputs" in n for n in notes)
    info = read_model_info(out)
    assert info.extra["exporter"] == "torch.onnx.export(dynamo=False)" and "traced_branches" in info.extra
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 3, 10, 14), np.float32)})[0].shape == (3, 3, 10, 14)
    through_everything(out, out, tmp_path)


def test_dict_with_quarter_resolution_logits_exports_and_predicts_masks_at_image_size(tmp_path):
    out, result = export(tmp_path, "DictQuarter")
    assert result.exit_code == 0, result.output
    assert "the net returns dict (aux, logits): exporting 'logits'" in result.output
    info = read_model_info(out)
    assert (info.output_stride, info.extra["output_selected"], info.num_classes) == (4, "logits", 3)
    net = any_nets.DictQuarter()
    x = torch.randn(2, 3, 24, 40)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    torch.manual_seed(0)  # the export ran with the same seed: compare shapes, not weights
    assert got.shape == (2, 3, 6, 10) == tuple(net(x)["logits"].shape)
    through_everything(out, out, tmp_path)


def test_model_output_dataclass_upsampled_in_graph(tmp_path):
    out, result = export(tmp_path, "QuarterLogits", "--upsample-in-graph")
    assert result.exit_code == 0, result.output
    assert "SemanticSegmenterOutput (logits)" in result.output and "upsampled in the graph" in result.output
    info = read_model_info(out)
    assert info.output_stride == 1 and info.extra["upsampled_in_graph"] == "bilinear from 1/4"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.ones((1, 3, 40, 24), np.float32)})[0].shape == (1, 4, 40, 24)
    # with --pad-in-graph too: any size in, full-size logits out (the upsampling inside the padding)
    padded, result = export(tmp_path, "QuarterLogits", "--upsample-in-graph", "--pad-in-graph")
    assert result.exit_code == 0, result.output
    assert read_model_info(padded).extra["upsampled_in_graph"] == "bilinear from 1/4"
    session = ort.InferenceSession(str(padded), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.ones((1, 3, 37, 29), np.float32)})[0].shape == (1, 4, 37, 29)
    _, result = export(tmp_path, "QuarterLogits", "--pad-in-graph")
    assert result.exit_code == 2 and "add --upsample-in-graph" in result.output
    # without it: recorded at 1/4; with a key the dataclass lacks: one line listing its tensors
    out, result = export(tmp_path, "QuarterLogits", "--output-key", "pred")
    assert result.exit_code == 2
    assert "error: the net returned SemanticSegmenterOutput without a tensor 'pred'; its tensors: logits" in result.output


def test_tuple_of_deep_supervision_heads_exports_the_chosen_head(tmp_path):
    out, result = export(tmp_path, "DeepSupervision", "--output-index", "2")
    assert result.exit_code == 0, result.output
    assert read_model_info(out).extra["output_selected"] == "[2]"
    through_everything(out, out, tmp_path)
    # the library call with the net in hand: the file's logits are head 2's, not head 0's
    from deploy_unet.export import export_onnx

    net = any_nets.DeepSupervision().eval()
    lib = export_onnx(net, tmp_path / "lib.onnx", height=16, width=16, output_index=2)
    x = torch.randn(1, 3, 16, 20)
    got = ort.InferenceSession(str(lib.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        heads = [h.numpy() for h in net(x)]
    np.testing.assert_allclose(got, heads[2], atol=1e-5)
    assert not np.allclose(got, heads[0], atol=1e-3)
    _, result = export(tmp_path, "DeepSupervision", "--output-index", "3")
    assert result.exit_code == 2 and "--output-index 3: the net returned a tuple of 3" in result.output


def test_an_operator_no_exporter_translates_is_named(tmp_path):
    out, result = export(tmp_path, "Svd")
    assert result.exit_code == 2
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "unsupported operator" in error and "svd" in error and "custom_translation_table" in error
    assert not out.exists()
