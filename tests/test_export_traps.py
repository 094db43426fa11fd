"""torch.export's traps (0/1 specialization, duck sizing), the per-axis parity check that catches a graph
baked to one size, the one-line stage errors of export and quantize, and ``--model-arg``."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import deploy_unet.export as export_module
from deploy_unet.cli import cli
from deploy_unet.errors import ConfigError, GateFailedError, StageError, first_line
from deploy_unet.export import AXIS_INDEX, check_shapes, export_onnx, trace_shape
from deploy_unet.nets.loading import import_model, load_net, parse_model_args
from tests.conftest import smooth_images, thin_net

NETS_MODULE = '''
import torch
from torch import nn
import torch.nn.functional as F


class BranchOnBatch(nn.Module):
    """Correct in eager at every batch; its exported graph keeps only the branch of the traced batch."""
    divisor = 2

    def __init__(self, baked=2):
        super().__init__()
        self.baked = baked
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if x.shape[0] == self.baked else y


class FixedSize(nn.Module):
    """A learned positional map of one size (as a ViT's positional embedding): H and W cannot vary."""
    divisor = 4

    def __init__(self, size=16):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, size // 4, size // 4))
        self.embed = nn.Conv2d(3, 4, 4, stride=4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return F.interpolate(self.head(self.embed(x) + self.pos), scale_factor=4)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot trace it."""
    divisor = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            return y
        return -y


def build(width=4, classes=2, norm=None):
    layers = [nn.Conv2d(3, width, 3, padding=1)]
    if norm == "group":
        layers.append(nn.GroupNorm(2, width))
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(width, classes, 1))
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    folder = tmp_path.parent / f"{tmp_path.name}-modules"  # outside tmp_path: tests list what they wrote there
    folder.mkdir(exist_ok=True)
    (folder / "trap_nets.py").write_text(NETS_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    import trap_nets

    return importlib.reload(trap_nets)


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


# --- the traced sample and the shapes checked ---------------------------------------------------------


@pytest.mark.parametrize("export, dynamic, expected", [
    ((1, 3, 256, 256), "all", (2, 3, 256, 272)),  # batch off 0/1; H != W (square sample: one symbol)
    ((1, 3, 256, 320), "all", (2, 3, 256, 320)),  # already distinct: only the batch moves
    ((4, 3, 64, 64), "all", (4, 3, 64, 80)),
    ((1, 3, 64, 64), "batch", (2, 3, 64, 64)),  # H, W static: their equality bakes nothing
    ((1, 3, 64, 64), "hw", (1, 3, 64, 80)),  # batch static 1 is fine: it is fixed anyway
    ((2, 3, 16, 16), "none", (2, 3, 16, 16)),
    ((1, 3, 2, 4), "all", (2, 3, 4, 6)),  # pairwise distinct: H 2 == batch 2 moves up, then W 4 == H 4
])
def test_trace_shape_keeps_dynamic_axes_off_0_1_and_apart(export, dynamic, expected):
    # step 16 for the 256/64 cases, 2 for the tiny one
    step = 2 if export[2] < 8 else 16
    assert trace_shape(export, dynamic, step) == expected


def test_check_shapes_change_one_dynamic_axis_at_a_time():
    traced = (2, 3, 64, 80)
    shapes = check_shapes(traced, (1, 3, 64, 64), "all", 16)
    assert shapes[0] == (traced, None)
    singles = [(s, a) for s, a in shapes if a is not None]
    assert [a for _, a in singles] == ["batch", "height", "width"]
    for shape, axis in singles:
        differs = [name for name, i in AXIS_INDEX.items() if shape[i] != traced[i]]
        assert differs == [axis]
    assert (1, 3, 64, 64) in [s for s, _ in shapes]  # the export shape itself is checked too
    assert [a for _, a in check_shapes(traced, traced, "hw", 16)] == [None, "height", "width"]


def test_square_export_traces_off_square_and_runs_at_other_sizes(tmp_path):
    net = thin_net("unet")
    path = tmp_path / "u.onnx"
    result = export_onnx(net, path, height=32, width=32)
    assert result.trace_shape == (2, 3, 32, 40)
    assert result.info.export_shape == [1, 3, 32, 32]  # what the user asked for stays the export shape
    assert result.info.extra["trace_shape"] == "2x3x32x40"
    assert {"2x3x32x40", "1x3x32x40", "2x3x40x40", "2x3x32x48", "1x3x32x32"} <= set(result.parity)


# --- a graph baked to one size is refused, naming the axis ------------------------------------------------


def test_graph_baked_to_the_traced_batch_is_refused_naming_batch(tmp_path, nets):
    path = tmp_path / "b.onnx"
    with pytest.raises(ConfigError) as err:
        export_onnx(nets.BranchOnBatch(baked=2), path, height=8, width=12)
    text = str(err.value)
    assert "the exported graph only runs at the traced batch 2" in text
    assert "at input 1x3x8x12 (only the batch changed from the traced 2x3x8x12)" in text
    assert "--dynamic hw and --batch N" in text
    assert list(tmp_path.iterdir()) == []


def test_the_old_batch_1_sample_is_caught_by_the_per_axis_check(tmp_path, nets):
    # The old default traced at batch 1: a graph baked there must not pass either.
    path = tmp_path / "b1.onnx"
    with pytest.raises(ConfigError, match="only runs at the traced batch 1: at input 2x3x8x12"):
        export_onnx(nets.BranchOnBatch(baked=1), path, height=8, width=12, trace=(1, 3, 8, 12))
    assert not path.exists()


def test_the_same_net_exports_when_batch_is_static(tmp_path, nets):
    net = nets.BranchOnBatch(baked=2).eval()
    path = tmp_path / "b.onnx"
    export_onnx(net, path, height=8, width=12, batch=2, dynamic="hw")
    x = smooth_images(2, 3, 10, 14)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_a_net_that_takes_one_size_is_refused_before_export(tmp_path, nets, monkeypatch):
    calls = []
    monkeypatch.setattr(export_module, "_torch_export", lambda *a: calls.append(a))
    with pytest.raises(ConfigError) as err:
        export_onnx(nets.FixedSize(16), tmp_path / "f.onnx", height=16, width=16)
    text = str(err.value)
    assert "the net runs at 1x3x16x16 but not at 2x3x16x20 (width changed" in text  # the batch is not blamed
    assert "--dynamic batch and --height/--width" in text
    assert calls == []  # refused before the slow export
    monkeypatch.undo()
    export_onnx(nets.FixedSize(16), tmp_path / "f.onnx", height=16, width=16, dynamic="batch")


def test_an_axis_the_exporter_made_static_is_named(tmp_path, monkeypatch):
    real = export_module._torch_export

    def static_height(net, sample, dynamic, opset):
        model = real(net, sample, dynamic, opset)
        dim = model.graph.input[0].type.tensor_type.shape.dim[2]
        dim.ClearField("dim_param")
        dim.dim_value = sample.shape[2]
        return model

    monkeypatch.setattr(export_module, "_torch_export", static_height)
    with pytest.raises(ConfigError, match=r"torch.export fixed the height to 16 \(traced at 2x3x16x24\).*--dynamic batch"):
        export_onnx(thin_net("unet"), tmp_path / "s.onnx", height=16, width=16)
    assert list(tmp_path.iterdir()) == []


def test_numbers_off_at_the_traced_shape_stay_a_parity_failure(tmp_path):
    with pytest.raises(GateFailedError, match="differs from PyTorch at input 2x3x16x24"):
        export_onnx(thin_net("unet"), tmp_path / "p.onnx", height=16, width=16, tolerance=-1.0)


# --- stage errors ---------------------------------------------------------------------------------------------


def test_torch_export_failure_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, nets):
    """Issue 27: the line names the cause class and the user's line; --debug adds the traceback and the log."""
    out = tmp_path / "d.onnx"
    args = ["export", "--model", "trap_nets:DataDependent", "--height", 8, "--width", 8, "-o", out]
    result = invoke(*args, "--exporter", "dynamo")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert lines[0].startswith("error: torch.export cannot export the net: data-dependent branch: a condition on "
                               "tensor values at ")
    assert "trap_nets.py:" in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
    # auto falls back to the TorchScript exporter, whose one-branch trace is caught on inputs that move the branch
    result = invoke(*args)
    assert result.exit_code == 2 and "traced one branch of the data-dependent condition" in result.output
    assert list(tmp_path.iterdir()) == []
    debug = invoke("--debug", *args, "--exporter", "dynamo")
    assert debug.exit_code == 2
    assert "Traceback" in debug.output and "error: torch.export cannot export the net" in debug.output
    assert (tmp_path / "d.onnx.export.log").read_text()  # what torch printed, kept out of the terminal


@pytest.mark.parametrize("stage, target, hint", [
    ("onnx.checker", "_check", ""),
    ("onnxslim", "_simplify", "re-run with --no-simplify"),
])
def test_checker_and_onnxslim_failures_keep_the_onnx_with_debug(tmp_path, monkeypatch, stage, target, hint):
    def boom(model):
        raise RuntimeError(f"{stage} broke\nsecond line")

    monkeypatch.setattr(export_module, target, boom)
    out = tmp_path / "u.onnx"
    args = ["export", "--depth", 2, "--base-channels", 4, "--height", 16, "--width", 16, "-o", out]
    result = invoke(*args)
    assert result.exit_code == 1
    assert f"error: {stage} failed for unet: RuntimeError: {stage} broke" in result.output
    assert "second line" not in result.output and hint in result.output
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / f"u.failed-{stage.replace('.', '-')}.onnx"
    result = invoke("--debug", *args)
    assert result.exit_code == 1 and f"kept as {kept}" in result.output
    onnx.checker.check_model(onnx.load(kept))  # the intermediate, loadable for inspection
    assert not out.exists()


def test_parity_failure_with_debug_keeps_the_file_under_a_failed_name(tmp_path):
    out = tmp_path / "u.onnx"
    result = invoke("--debug", "export", "--depth", 2, "--base-channels", 4, "--height", 16, "--width", 16,
                    "--tolerance", -1, "-o", out)
    assert result.exit_code == 1
    assert (tmp_path / "u.failed-parity.onnx").is_file() and not out.exists()


def test_first_line_drops_onnxruntime_source_locations():
    exc = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'v' "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91 "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, bool) input_shape_size == "
        "requested_shape_size was false. Input shape:{2,32,16,24}, requested shape:{2,16,384}\nnext")
    assert first_line(exc) == (
        "RuntimeError: Non-zero status code returned while running Reshape node. Name:'v' Status Message: "
        "input_shape_size == requested_shape_size was false. Input shape:{2,32,16,24}, requested shape:{2,16,384}")


def test_quantize_stage_failure_is_one_line_and_writes_nothing(tmp_path, thin_unet_onnx, monkeypatch):
    import deploy_unet.precision.int8 as int8

    _, model = thin_unet_onnx

    def boom(*_):
        raise KeyError("Conv_3")

    monkeypatch.setattr(int8, "quantize_for_tensorrt", boom)
    out = tmp_path / "q.onnx"
    result = invoke("quantize", model, "--precision", "int8", "--calib-samples", 8, "--no-eval", "-o", out)
    assert result.exit_code == 1
    assert f"error: Q/DQ insertion (tensorrt placement) failed for {model}: KeyError: 'Conv_3'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_quantize_gate_failure_keeps_the_candidate_with_debug(tmp_path, thin_unet_onnx, monkeypatch):
    from deploy_unet.precision import gate

    _, model = thin_unet_onnx
    monkeypatch.setattr(gate, "evaluate", lambda *a, **k: (_ for _ in ()).throw(ValueError("session died")))
    out = tmp_path / "q.onnx"
    args = ["quantize", model, "--precision", "fp16", "--calib-samples", 8, "--eval-samples", 2, "-o", out]
    result = invoke("--debug", *args)
    assert result.exit_code == 1
    assert "error: accuracy gate failed for" in result.output and "ValueError: session died" in result.output
    kept = tmp_path / "q.failed-accuracy-gate.onnx"
    assert kept.is_file() and not out.exists()
    assert onnx.load(kept).graph.node  # the fp16 candidate that was being evaluated


def test_stage_error_is_exit_1_and_names_stage_and_model():
    err = StageError("onnxslim", "custom:pkg:Net", ValueError("bad\nworse"), hint="re-run with --no-simplify")
    assert err.exit_code == 1
    assert str(err).startswith("onnxslim failed for custom:pkg:Net: ValueError: bad; re-run with --no-simplify")


# --- --model with constructor arguments ---------------------------------------------------------------------------


def test_model_args_parse_literals_json_and_plain_strings():
    assert parse_model_args(["classes=4", "encoder_weights=None", "encoder_name=resnet18", "channels=(8, 16)",
                             "norm=instance", "flag=true", "ratio=0.5", "name='quoted'"]) == {
        "classes": 4, "encoder_weights": None, "encoder_name": "resnet18", "channels": (8, 16),
        "norm": "instance", "flag": True, "ratio": 0.5, "name": "quoted"}
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_model_args(["classes"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_model_args(["a=1", "a=2"])


def test_model_args_reach_the_constructor_and_bad_ones_list_the_accepted(nets):
    net = import_model("trap_nets:build", {"width": 6, "classes": 3})
    assert net[0].out_channels == 6 and net[-1].out_channels == 3
    with pytest.raises(ConfigError, match=r"does not accept these --model-arg values .*it takes: width, classes, norm"):
        import_model("trap_nets:build", {"depth": 3})
    with pytest.raises(ConfigError, match=r"failed to build with width=-1"):
        import_model("trap_nets:build", {"width": -1})
    loaded = load_net(model="trap_nets:FixedSize", model_args={"size": 32})
    assert loaded.divisor == 4 and loaded.net_config == {"size": 32}  # the net states its divisor itself


def test_export_cli_with_model_args_records_them(tmp_path, nets):
    out = tmp_path / "m.onnx"
    result = invoke("export", "--model", "trap_nets:build", "--model-arg", "width=6", "--model-arg", "classes=3",
                    "--model-arg", "norm=group", "--divisor", 1, "--height", 12, "--width", 12, "-o", out)
    assert result.exit_code == 0, result.output
    from deploy_unet.describe import read_model_info

    info = read_model_info(out)
    assert info.net_config == {"width": 6, "classes": 3, "norm": "group"} and info.num_classes == 3
    assert info.arch == "custom:trap_nets:build"


def test_model_arg_without_model_is_refused():
    result = invoke("export", "--depth", 2, "--model-arg", "width=4")
    assert result.exit_code == 2 and "error: --model-arg goes with --model" in result.output


# --- int8 for ONNX Runtime: shared biases (GroupNorm) ---------------------------------------------------------------


class _GroupNormNet(nn.Module):
    divisor = 1

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(12):
            layers += [nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_group_norm_net_quantizes_for_onnxruntime_despite_orts_bias_copy_names(tmp_path, monkeypatch):
    import deploy_unet.precision.int8 as int8
    from deploy_unet.precision import quantize

    torch.manual_seed(0)
    model = tmp_path / "gn.onnx"
    export_onnx(_GroupNormNet(), model, height=16, width=16)
    # The exporter shares one bias constant among all GroupNorms; each node now gets its own.
    graph = onnx.load(model)
    unshared = int8.unshare_biases(graph)
    biases = [n.input[2] for n in unshared.graph.node if n.op_type in int8.BIAS_SLOT_OPS and len(n.input) > 2]
    assert len(biases) == len(set(biases)) > 12
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in unshared.graph.initializer}
    originals = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    for node_new, node_old in zip(unshared.graph.node, graph.graph.node):
        if node_new.op_type in int8.BIAS_SLOT_OPS and len(node_new.input) > 2:
            np.testing.assert_array_equal(inits[node_new.input[2]], originals[node_old.input[2]])

    result = quantize(model, "int8", target="onnxruntime", calib_samples=8, eval_source=None, progress=False)
    quantized = onnx.load(result.path)
    onnx.checker.check_model(quantized)
    # and no value_info: quant_pre_process's merged symbolic dims misled ORT's buffer planner (SwinUNETR)
    assert len(quantized.graph.value_info) == 0
    # Without the un-sharing, ORT's own copies collide with an activation's name (onnxruntime#24705).
    monkeypatch.setattr(int8, "unshare_biases", lambda m: m)
    with pytest.raises(StageError, match="ORT quantize_static failed .*single static assignment"):
        quantize(model, "int8", target="onnxruntime", calib_samples=8, eval_source=None, progress=False,
                 output=tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()
