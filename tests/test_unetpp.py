"""UNet++: nested wiring, deep-supervision heads, --heads / --prune exports, int8 Concat scales, CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ConfigError
from deploy_unet.export import export_onnx
from deploy_unet.nets import create_net
from deploy_unet.nets.unetpp import node_name
from tests.conftest import _randomize_norm_stats, smooth_images

DEPTH, BASE, SIZE = 3, 4, 32
NODE_RE = re.compile(r"x_(\d+)_(\d+)\.")
HEAD_RE = re.compile(r"^head\.(\d+)\.")


def tiny(**overrides):
    torch.manual_seed(0)
    net = create_net("unetpp", depth=DEPTH, base_channels=BASE, num_classes=3, **overrides).eval()
    _randomize_norm_stats(net)
    return net


def with_weights_of(source, **overrides):
    """A net in another output mode carrying ``source``'s weights (all modes share one state_dict)."""
    net = create_net("unetpp", **{**source.config, "heads": None, "prune": None, **overrides}).eval()
    net.load_state_dict(source.state_dict())
    return net


@pytest.fixture(scope="module")
def full_net():
    return tiny()


@pytest.fixture(scope="module")
def sample():
    return smooth_images(2, 3, SIZE, SIZE, seed=3)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, full_net):
    """ONNX files of the same weights: heads=mean, heads=last, prune=1, prune=2 (exported once)."""
    folder = tmp_path_factory.mktemp("unetpp")
    modes = {"mean": {}, "last": {"heads": "last"}, "prune1": {"prune": 1}, "prune2": {"prune": 2}}
    paths = {}
    for name, overrides in modes.items():
        paths[name] = folder / f"{name}.onnx"
        export_onnx(with_weights_of(full_net, **overrides), paths[name], height=SIZE, width=SIZE,
                    mean=[0.5] * 3, std=[0.25] * 3)
    return paths


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def torch_heads(net, x):
    with torch.no_grad():
        return [h.numpy() for h in net.forward_heads(torch.from_numpy(x))]


# --- wiring ------------------------------------------------------------------------------------------


def test_nested_node_input_channels_follow_the_dense_skips():
    net = tiny()
    widths = [BASE * 2**i for i in range(DEPTH + 1)]
    assert net.nodes[node_name(0, 0)][0].in_channels == 3
    for i in range(1, DEPTH + 1):
        assert net.nodes[node_name(i, 0)][0].in_channels == widths[i - 1]
    nested = [(i, j) for j in range(1, DEPTH + 1) for i in range(DEPTH + 1 - j)]
    assert len(net.nodes) == DEPTH + 1 + len(nested) == 10
    for i, j in nested:
        node = net.nodes[node_name(i, j)]
        # j same-level inputs X(i,0..j-1) of width_i, plus the upsampled X(i+1,j-1) brought to width_i
        assert node.up.up.in_channels == widths[i + 1] and node.up.up.out_channels == widths[i]
        assert node.block[0].in_channels == (j + 1) * widths[i]
        assert node.block[-3].out_channels == widths[i]
    assert [h.in_channels for h in net.head] == [widths[0]] * DEPTH


@pytest.mark.parametrize("level", [1, 2, 3])
def test_each_head_depends_exactly_on_the_nodes_with_i_plus_j_at_most_its_level(level):
    net = tiny().train()  # train mode: gradients reach every parameter the head reads
    x = torch.from_numpy(smooth_images(2, 3, SIZE, SIZE))
    net.forward_heads(x)[level - 1].square().mean().backward()
    reached = {name.split(".")[1] for name, p in net.named_parameters()
               if name.startswith("nodes.") and p.grad is not None and p.grad.abs().sum() > 0}
    expected = {node_name(i, j) for i in range(DEPTH + 1) for j in range(DEPTH + 1 - i) if i + j <= level}
    assert reached == expected
    heads_reached = [j for j, h in enumerate(net.head, start=1) if h.weight.grad is not None]
    assert heads_reached == [level]


def test_pruned_net_calls_only_its_sub_network_and_equals_the_full_nets_head(full_net, sample):
    pruned = with_weights_of(full_net, prune=2)
    called = set()
    for name, module in pruned.nodes.items():
        module.register_forward_pre_hook(lambda _m, _a, name=name: called.add(name))
    with torch.no_grad():
        out = pruned(torch.from_numpy(sample)).numpy()
    assert called == {"x_0_0", "x_1_0", "x_2_0", "x_0_1", "x_1_1", "x_0_2"}
    np.testing.assert_allclose(out, torch_heads(full_net, sample)[1], rtol=0, atol=1e-6)
    assert pruned.divisor == 4 and full_net.divisor == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"prune": 0}, "prune=0 is out of range"),
    ({"prune": 4}, "heads 1..3"),
    ({"prune": 2, "heads": "mean"}, "outputs head 2 alone"),
    ({"heads": "max"}, "heads='max' is not valid"),
])
def test_invalid_output_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_net("unetpp", depth=DEPTH, **kwargs)


# --- export modes ------------------------------------------------------------------------------------


def test_heads_mean_and_last_exports_equal_the_average_and_the_last_head(exports, full_net, sample):
    heads = torch_heads(full_net, sample)
    np.testing.assert_allclose(run_ort(exports["mean"], sample), np.mean(heads, axis=0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(run_ort(exports["last"], sample), heads[-1], rtol=0, atol=1e-5)
    assert not np.allclose(heads[-1], np.mean(heads, axis=0), atol=1e-3)  # the two modes do differ


@pytest.mark.parametrize("level", [1, 2])
def test_pruned_export_is_smaller_holds_only_its_nodes_and_equals_head_l(exports, full_net, sample, level):
    pruned, full = onnx.load(exports[f"prune{level}"]), onnx.load(exports["last"])
    params = [sum(int(np.prod(t.dims)) for t in m.graph.initializer) for m in (pruned, full)]
    assert len(pruned.graph.node) < len(full.graph.node) and params[0] < params[1]
    # Every weight names the module it came from (nodes.x_i_j..., head.k...): none beyond level L.
    nodes, heads = set(), set()
    for t in pruned.graph.initializer:
        if m := NODE_RE.search(t.name):
            nodes.add((int(m.group(1)), int(m.group(2))))
        elif m := HEAD_RE.search(t.name):
            heads.add(int(m.group(1)) + 1)
    assert nodes == {(i, j) for i in range(level + 1) for j in range(level + 1 - i)}
    assert heads == {level}
    concat_inputs = sorted(len(n.input) for n in pruned.graph.node if n.op_type == "Concat")
    assert concat_inputs == sorted(j + 1 for j in range(1, level + 1) for _ in range(level + 1 - j))
    x = smooth_images(1, 3, 2 * SIZE, SIZE + 8, seed=5)  # a second, non-square size
    np.testing.assert_allclose(run_ort(exports[f"prune{level}"], x), torch_heads(full_net, x)[level - 1],
                               rtol=0, atol=1e-5)


def test_metadata_records_the_output_mode(exports):
    info = {name: read_model_info(path) for name, path in exports.items()}
    assert info["mean"].extra["output_mode"].startswith("mean: average of heads 1..3")
    assert info["last"].extra["output_mode"].startswith("last: head 3 of 3")
    assert info["prune2"].extra["output_mode"].startswith("prune 2: head 2 of 3")
    assert info["prune2"].net_config["prune"] == 2 and info["prune2"].net_config["heads"] == "last"
    assert info["mean"].net_config["heads"] == "mean" and info["mean"].net_config["prune"] is None
    assert (info["mean"].divisor, info["prune2"].divisor, info["prune1"].divisor) == (8, 4, 2)
    assert info["prune2"].contract_reason == "2**2 for UNet++ pruned to level 2"


# --- int8: every input of a Concat (many here) shares one scale ---------------------------------------


def test_int8_tensorrt_concats_with_many_inputs_share_one_scale(exports, tmp_path):
    from onnx import numpy_helper

    from deploy_unet.precision import quantize

    res = quantize(exports["mean"], "int8", target="tensorrt", output=tmp_path / "t.onnx",
                   calib="synthetic:seed=1,size=32x32", calib_samples=8, eval_source=None, progress=False)
    model = onnx.load(res.path)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert max(len(n.input) for n in concats) == DEPTH + 1  # X(0,3): X(0,0..2) + upsampled X(1,2)
    for n in concats:
        dqs = [producers[name] for name in n.input]
        assert all(dq.op_type == "DequantizeLinear" for dq in dqs), n.name
        scales = {float(inits[dq.input[1]]) for dq in dqs}
        assert len(scales) == 1, (n.name, scales)
        for consumer in (c for c in model.graph.node if n.output[0] in c.input):
            if consumer.op_type == "QuantizeLinear":  # the Conv after the concat re-quantizes at the same scale
                assert float(inits[consumer.input[1]]) in scales


# --- CLI -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, full_net):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_unetpp.pt"
    save_checkpoint(path, full_net, mean=[0.45] * 3, std=[0.15] * 3,
                    extra={"recommended_export_shape": [1, 3, SIZE, SIZE]})
    return path


def test_cli_export_prune_from_checkpoint_and_inspect_shows_the_mode(tiny_checkpoint, tmp_path, sample):
    out = tmp_path / "p2.onnx"
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--checkpoint", str(tiny_checkpoint), "--prune", "2",
                                 "--height", "32", "--width", "32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "divisor 4" in result.output
    report = json.loads(runner.invoke(cli, ["inspect", "--json", str(out)]).output)
    assert report["metadata"]["output_mode"].startswith("prune 2")
    assert "output_mode" in runner.invoke(cli, ["inspect", str(out)]).output


@pytest.mark.parametrize("args, match", [
    (["--heads", "mean", "--prune", "2"], "drop --heads mean"),
    (["--prune", "4"], "prune=4 is out of range"),
])
def test_cli_export_bad_output_options_exit_2_and_write_nothing(tiny_checkpoint, tmp_path, args, match):
    out = tmp_path / "bad.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(tiny_checkpoint), *args, "-o", str(out)])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_heads_on_plain_unet_is_rejected(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--arch", "unet", "--heads", "last", "-o", str(tmp_path / "u.onnx")])
    assert result.exit_code == 2 and "unknown option(s) heads for net 'unet'" in result.output


def test_pipeline_accepts_arch_unetpp(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "pipeline", "--arch", "unetpp", "--checkpoint", str(tiny_checkpoint), "-o", str(out),
        "--precisions", "fp32,int8", "--int8-targets", "tensorrt", "--calib-samples", "8",
        "--eval-samples", "2", "--iters", "2", "--no-engines",
    ])
    assert result.exit_code in (0, 1), result.output  # random weights: an int8 gate may fail, never crash
    assert "Traceback" not in result.output
    info = read_model_info(out / "unetpp.onnx")
    assert info.arch == "unetpp" and info.export_shape == [1, 3, SIZE, SIZE]
    assert (out / "unetpp.int8.onnx").is_file() and (out / "report.md").is_file()


def test_pipeline_default_checkpoint_for_unetpp_is_the_shipped_one():
    from deploy_unet.checkpoint import load_checkpoint
    from deploy_unet.pipeline import default_checkpoint

    ckpt = load_checkpoint(default_checkpoint("unetpp"))
    assert ckpt.arch == "unetpp" and ckpt.net_config["depth"] == 4 and ckpt.net_config["base_channels"] == 16
    assert ckpt.path.stat().st_size < 10e6


def test_validate_a_pruned_export_against_its_checkpoint_compares_like_with_like(tiny_checkpoint, tmp_path):
    """The checkpoint's own output is the mean of the heads; a --prune 1 export computes head 1. validate
    rebuilds the reference from the export's metadata (same weights, sha256 checked), so fp32 gates hold."""
    out = tmp_path / "p1.onnx"
    runner = CliRunner()
    assert runner.invoke(cli, ["export", "--checkpoint", str(tiny_checkpoint), "--prune", "1",
                               "--height", "32", "--width", "32", "-o", str(out)]).exit_code == 0
    report = tmp_path / "val.json"
    result = runner.invoke(cli, ["validate", str(out), "--reference", str(tiny_checkpoint),
                                 "--data", "synthetic:size=32x32", "--samples", "2", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["outputs"][0]["rel_l2"] < 1e-5
