"""export --pad-in-graph: the graph pads H, W to the divisor itself, equal to the host-side rule."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.describe import read_model_info
from deploy_unet.engine.build import plan_build
from deploy_unet.errors import ShapeContractError
from deploy_unet.export import export_onnx
from deploy_unet.inspection import inspect_onnx
from deploy_unet.precision import quantize
from deploy_unet.runtime import open_runner, run_onnx
from deploy_unet.shapes import min_size_pad_in_graph, pad_to_multiple
from tests.conftest import smooth_images, thin_net

# Off the divisor (8 for the thin depth-3 UNet) on each side by different amounts, plus sizes below it.
ODD_SIZES = [(33, 47), (40, 41), (7, 13), (5, 5), (8, 24)]


@pytest.fixture(scope="module")
def padded_and_plain(tmp_path_factory):
    """(net, pad-in-graph file, plain file) of one thin UNet; the pad-in-graph export size is odd."""
    net = thin_net("unet")
    folder = tmp_path_factory.mktemp("pig")
    plain = export_onnx(net, folder / "plain.onnx", height=32, width=32, verify=False).path
    padded = export_onnx(net, folder / "pig.onnx", height=37, width=29, pad_in_graph=True).path
    return net, padded, plain


def ort_run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_onnx_pad_reflect_is_numpy_reflect_not_symmetric():
    """The host rule (shapes.py, the C++ runtime) is numpy 'reflect'; the ONNX Pad op must match it."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 5])
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 3, 2])
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    graph = helper.make_graph([node], "pad", [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    widths = [(0, 0), (0, 0), (0, 3), (0, 2)]
    np.testing.assert_array_equal(got, np.pad(x, widths, mode="reflect"))
    assert not np.array_equal(got, np.pad(x, widths, mode="symmetric"))
    # and the bottom/right rule of shapes.pad_to_multiple is the same numbers
    host, _ = pad_to_multiple(np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7), 4)
    torch_pad = torch.nn.functional.pad(torch.arange(35.0).reshape(1, 1, 5, 7), (0, 1, 0, 3), mode="reflect")
    np.testing.assert_array_equal(host, torch_pad.numpy())


def test_graph_has_dynamic_hw_and_says_it_pads(padded_and_plain):
    _, padded, plain = padded_and_plain
    dims = [d.dim_param or d.dim_value for d in onnx.load(padded).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert read_model_info(padded).pad_in_graph and not read_model_info(plain).pad_in_graph
    assert inspect_onnx(padded)["padding"] == "in graph (reflect)"
    assert inspect_onnx(plain)["padding"] == "caller"


@pytest.mark.parametrize("h, w", ODD_SIZES)
def test_pad_in_graph_equals_host_pad_in_ort_and_torch(padded_and_plain, h, w):
    net, padded, plain = padded_and_plain
    x = smooth_images(2, 3, h, w, seed=h * w)
    got = ort_run(padded, x)  # the bare ORT session: nothing pads but the graph
    host_ort = run_onnx(plain, x, pad=True)
    xp, padding = pad_to_multiple(x, net.divisor)
    with torch.no_grad():
        host_torch = net(torch.from_numpy(xp)).numpy()[..., :h, :w]
    assert got.shape == (2, net.num_classes, h, w)
    scale = max(1.0, float(np.abs(host_torch).max()))
    np.testing.assert_allclose(got, host_ort, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(got, host_torch, atol=1e-5 * scale, rtol=0)


def test_runner_neither_refuses_nor_pads(padded_and_plain, monkeypatch):
    _, padded, _ = padded_and_plain
    import deploy_unet.runtime.base as base

    def no_host_pad(*_a, **_k):
        raise AssertionError("the runner padded on the host for a pad-in-graph file")

    monkeypatch.setattr(base, "pad_to_multiple", no_host_pad)
    x = smooth_images(1, 3, 19, 30)
    for pad in (False, True):
        assert run_onnx(padded, x, pad=pad).shape[-2:] == (19, 30)


def test_below_minimum_size_is_one_clear_error(padded_and_plain, tmp_path):
    net, padded, _ = padded_and_plain
    smallest = min_size_pad_in_graph(net.divisor)
    assert smallest == 5  # divisor 8: a 4-row input would need a 4-row reflection of itself
    run_onnx(padded, smooth_images(1, 3, smallest, 9))
    with pytest.raises(ShapeContractError, match=r"height 4 is below 5, the smallest size .* multiple of 8"):
        run_onnx(padded, smooth_images(1, 3, 4, 9))
    with pytest.raises(ShapeContractError, match="width 3 is below 5"):
        export_onnx(net, tmp_path / "tiny.onnx", height=16, width=3, pad_in_graph=True)
    assert not (tmp_path / "tiny.onnx").exists()


def test_min_size_rule_is_exactly_where_reflect_stops_working():
    for d in (1, 2, 4, 8, 16, 32):
        smallest = min_size_pad_in_graph(d)
        for s in range(1, 2 * d + 2):
            pad = (-s) % d
            assert (pad < s or pad == 0) == (s >= smallest), (d, s)


def test_torch_backend_on_pad_in_graph_onnx_pads_the_same_way(padded_and_plain, tmp_path):
    net, padded, _ = padded_and_plain
    ckpt = tmp_path / "thin.pt"
    save_checkpoint(ckpt, net)
    x = smooth_images(1, 3, 21, 34)
    with open_runner(padded, "torch", checkpoint=ckpt) as runner:
        got = runner.infer({"input": x})["logits"]
    np.testing.assert_allclose(got, ort_run(padded, x), atol=1e-4, rtol=0)


def test_engine_profile_checks_ranges_not_divisibility(padded_and_plain):
    _, padded, plain = padded_and_plain
    plan = plan_build(padded, min_shape="1x3x5x7", opt_shape="1x3x37x29", max_shape="2x3x99x61")
    assert plan.profiles[0].min == (1, 3, 5, 7)
    assert plan_build(padded).profiles[0].min == (1, 3, 5, 5)  # default min: the smallest valid size
    with pytest.raises(ShapeContractError, match=r"--min-shape 1x3x4x7: height 4 is below 5"):
        plan_build(padded, min_shape="1x3x4x7")
    with pytest.raises(ShapeContractError, match="min <= opt <= max"):
        plan_build(padded, min_shape="1x3x40x40", opt_shape="1x3x37x29")
    with pytest.raises(ShapeContractError, match="not divisible by 8"):
        plan_build(plain, opt_shape="1x3x37x32")


@pytest.mark.parametrize("precision, target", [("fp16", "tensorrt"), ("int8", "tensorrt"), ("int8", "onnxruntime")])
def test_pad_in_graph_file_quantizes(padded_and_plain, tmp_path, precision, target):
    from tests.test_precision import _assert_common_qdq_rules, _graph

    _, padded, _ = padded_and_plain
    res = quantize(padded, precision, target=target, output=tmp_path / "q.onnx", calib="synthetic:seed=1,size=37x29",
                   calib_samples=8, eval_source="synthetic:seed=2,size=37x29", eval_samples=4, progress=False)
    assert read_model_info(res.path).pad_in_graph
    x = smooth_images(1, 3, 27, 35)
    fp32, low = ort_run(padded, x), ort_run(res.path, x)
    assert low.shape == fp32.shape
    assert np.abs(low - fp32).max() <= 0.1 * np.abs(fp32).max()
    if precision == "int8":
        model, producers, _ = _assert_common_qdq_rules(res.path, symmetric_activations=target == "tensorrt")
        float_names = {v.name for v in onnx.shape_inference.infer_shapes(model).graph.value_info
                       if v.type.tensor_type.elem_type == TensorProto.FLOAT} | {"input"}
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":  # only float data is quantized, never the int64 pads
                assert n.input[0] in float_names, n.name
            if n.op_type == "Pad" and target == "tensorrt":
                assert n.input[0] == "input"  # reflect pad of the float input; the first Conv gets the Q/DQ
        _, producers, _, consumers = _graph(res.path)
        if target == "tensorrt":
            assert producers["logits"].op_type == "Slice"  # the crop back is the last op, on float logits
        else:  # ORT quantizes Pad and Slice as data movement: one scale in and out, so they stay exact
            for n in model.graph.node:
                if n.op_type in ("Pad", "Slice"):
                    (q,) = consumers[n.output[0]]
                    assert producers[n.input[0]].op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
                    assert producers[n.input[0]].input[1:] == q.input[1:]


def test_export_at_a_divisible_size_still_takes_any_size(tmp_path):
    """The exporter sees pads of 0 at a divisible sample size; the graph must not specialize on that.
    The parity gate runs the file at a size off the divisor (and would refuse to write it)."""
    net = thin_net("unet")
    result = export_onnx(net, tmp_path / "pig16.onnx", height=16, width=16, pad_in_graph=True)
    off_divisor = [k for k in result.parity if all(int(v) % 8 for v in k.split("x")[2:])]
    assert off_divisor == ["2x3x17x31"]  # the traced 2x3x16x24, H + 1 and W + 7
    x = smooth_images(1, 3, 13, 30)
    xp, _ = pad_to_multiple(x, 8)
    with torch.no_grad():
        host = net(torch.from_numpy(xp)).numpy()[..., :13, :30]
    np.testing.assert_allclose(ort_run(result.path, x), host, atol=1e-5 * max(1.0, np.abs(host).max()), rtol=0)


def test_cli_refuses_a_size_below_the_minimum_in_one_line(tmp_path):
    from click.testing import CliRunner

    from deploy_unet.cli import cli

    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(cli, ["export", "--arch", "unet", "--depth", "3", "--base-channels", "4",
                                      "--pad-in-graph", "--height", "4", "--width", "40", "-o", str(out)])
    assert result.exit_code == 2
    assert "height 4 is below 5" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_bench_times_off_divisor_sizes_of_a_pad_in_graph_file(padded_and_plain):
    from deploy_unet.bench import bench_runner
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    _, padded, plain = padded_and_plain
    with OnnxRuntimeRunner(padded) as runner:
        result = bench_runner(runner, height=27, width=35, warmup=0, iters=2, phase_clock=None)
        assert len(result.samples_ms) == 2
        with pytest.raises(ShapeContractError, match="height 3 is below 5"):
            bench_runner(runner, height=3, width=35, warmup=0, iters=1, phase_clock=None)
    with OnnxRuntimeRunner(plain) as runner, pytest.raises(ShapeContractError, match="not divisible by 8"):
        bench_runner(runner, height=27, width=35, warmup=0, iters=1, phase_clock=None)


def test_engine_manifest_says_pad_in_graph(padded_and_plain):
    from dataclasses import replace

    from test_manifest import make_manifest

    from deploy_unet.engine.manifest import model_section

    _, padded, plain = padded_and_plain
    info = read_model_info(padded)
    assert model_section(info)["pad_in_graph"] is True
    assert model_section(read_model_info(plain))["pad_in_graph"] is False
    # the runner's view: from the ONNX metadata in the manifest, or from the plain model section alone
    manifest = replace(make_manifest(), onnx={"metadata": info.to_props()}, model=model_section(info))
    assert manifest.model_info().pad_in_graph
    assert replace(manifest, onnx={}).model_info().pad_in_graph
    assert not make_manifest().model_info().pad_in_graph
