"""Precision on volumes (issue 24 item 3): fp16 and int8 in both placements on 3D nets (Conv3d,
ConvTranspose3d with per-channel weight scales on axis 1, Instance/GroupNorm kept float), per-layer error,
auto-fallback, validate (mask agreement per volume) and bench on 5-D inputs."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deploy_unet.bench import bench, parse_sizes
from deploy_unet.data import load_samples
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.export import export_onnx
from deploy_unet.nets import create_net
from deploy_unet.precision import quantize
from deploy_unet.runtime import open_runner
from deploy_unet.validate import Sample, validate

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def instance_net(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vol")
    path = folder / "inst.onnx"
    net = create_net("unet3d", depth=2, base_channels=4, norm="instance")
    export_onnx(net, path, depth=8, height=16, width=16)
    return path


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_int8_tensorrt_placement_on_conv3d_and_convtranspose3d(instance_net, tmp_path):
    result = quantize(instance_net, "int8", calib="synthetic:seed=1", calib_samples=8, eval_source=None,
                      output=tmp_path / "i8.onnx", progress=False)
    model = onnx.load(result.path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = _producers(model)
    transposes = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert len(transposes) == 2
    for node in transposes:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        weight = inits[dq.input[0]]
        assert axis == 1 and weight.ndim == 5 and weight.dtype == np.int8  # [Cin, Cout/g, kD, kH, kW]
        assert inits[dq.input[1]].shape == (weight.shape[1],)  # one scale per output channel
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[node.input[1]]
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0 and inits[dq.input[0]].ndim == 5
    # InstanceNormalization stays float: nothing quantizes its input or its scale/bias
    for node in (n for n in model.graph.node if n.op_type == "InstanceNormalization"):
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 16, 24)).astype(np.float32)
    with open_runner(result.path) as runner:
        assert runner.infer({"input": x})["logits"].shape == (2, 3, 8, 16, 24)


def test_int8_onnxruntime_target_and_fp16_keep_volume_norms_float(instance_net, tmp_path):
    ort = quantize(instance_net, "int8", target="onnxruntime", calib="synthetic:seed=1", calib_samples=8,
                   eval_source=None, output=tmp_path / "i8.ort.onnx", progress=False)
    x = np.random.default_rng(1).normal(size=(1, 1, 8, 16, 16)).astype(np.float32)
    with open_runner(ort.path) as runner:
        assert runner.infer({"input": x})["logits"].shape == (1, 3, 8, 16, 16)
    fp16 = quantize(instance_net, "fp16", calib="synthetic:seed=1", calib_samples=8, eval_source=None,
                    output=tmp_path / "h.onnx", progress=False)
    model = onnx.load(fp16.path)
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and {n.name for n in norms} <= set(fp16.kept_fp32)
    # kept fp32 for real: the scale of every InstanceNormalization is a float32 tensor
    inits = {t.name: t for t in model.graph.initializer}
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in norms)


def test_groupnorm_volume_net_fp16_keeps_its_norms(tmp_path):
    path = tmp_path / "g.onnx"
    export_onnx(create_net("unet3d", depth=1, base_channels=8, norm="group"), path, depth=4, height=8, width=8)
    fp16 = quantize(path, "fp16", calib="synthetic:seed=1", calib_samples=8, eval_source=None, progress=False)
    ops = {n.name: n.op_type for n in onnx.load(fp16.path).graph.node}
    norm_ops = {k for k, v in ops.items() if v in ("InstanceNormalization", "GroupNormalization")}
    assert norm_ops and norm_ops <= set(fp16.kept_fp32)


@pytest.fixture
def shipped_volume(shipped_unet3d_onnx):
    return shipped_unet3d_onnx


def test_shipped_3d_net_int8_passes_its_gates_and_auto_fallback_runs(shipped_volume, tmp_path):
    result = quantize(shipped_volume, "int8", calib="synthetic:seed=1", calib_samples=8, eval_samples=4,
                      output=tmp_path / "s8.onnx", progress=False)
    assert result.gate.passed and result.gate.dice_drop <= 0.01
    tight = quantize(shipped_volume, "int8", calib="synthetic:seed=1", calib_samples=8, eval_samples=2,
                     max_rel_l2=0.012, auto_fallback=True, rank="local", output=tmp_path / "fb.onnx",
                     progress=False)
    assert tight.gate.passed and tight.kept_higher  # some layers went back to fp16 to hold the gate


def test_validate_reports_mask_agreement_per_volume_and_bench_times_5d(shipped_volume):
    info = read_model_info(shipped_volume)
    samples = load_samples("synthetic:seed=2", info, n=3)
    with open_runner(shipped_volume) as cand, open_runner(shipped_volume) as ref:
        report = validate(cand, ref, [Sample(samples.images[i:i + 1], samples.masks[i:i + 1]) for i in range(3)])
    out = report.outputs[0]
    assert out.shape == [1, 3, 32, 64, 64] and out.volume_agreement == [100.0, 100.0, 100.0]
    assert out.candidate_vs_truth.mean_dice > 0.95  # the shipped net segments its held-out volumes
    assert parse_sizes("32x64x64,64x64") == [(32, 64, 64), (64, 64)]
    result = bench([shipped_volume], sizes=[(16, 32, 32)], iters=2, warmup=0, rounds=1, progress=False)
    assert result.results[0].size == "16x32x32" and result.results[0].depth == 16
    with pytest.raises(ShapeContractError, match="^depth 12 is not divisible by 8"):
        bench([shipped_volume], sizes=[(12, 32, 32)], iters=1, warmup=0, progress=False)
    with pytest.raises(ConfigError, match="give DxHxW"):
        bench([shipped_volume], sizes=[(32, 32)], iters=1, warmup=0, progress=False)
