"""Precision: every Q/DQ rule asserted on produced graphs, cache reuse, the gate, the fp16 overflow policy."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ArtifactError, ConfigError, GateFailedError
from deploy_unet.metadata import ModelInfo, write_props
from deploy_unet.precision import calibration, check_gate, gate, quantize
from deploy_unet.precision.int8 import check_opset

CALIB = "synthetic:seed=1,size=32x32"
EVAL = "synthetic:seed=2,size=32x32"
FAST = dict(calib=CALIB, calib_samples=8, eval_source=EVAL, eval_samples=4, progress=False)


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory):
    """A thin UNet (depth 2, ConvTranspose up, 3 classes) exported once for the whole module."""
    import torch

    from deploy_unet.export import export_onnx
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    net = create_net("unet", num_classes=3, depth=2, base_channels=8)
    with torch.no_grad():  # a strong random head, so even an untrained net predicts varied masks
        net.head.weight.normal_(0.0, 1.0)
        net.head.bias.zero_()
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    export_onnx(net, path, height=32, width=32, mean=[0.5] * 3, std=[0.25] * 3, verify=False)
    return path


@pytest.fixture(scope="module")
def eval_images(tmp_path_factory):
    """Held-out images without masks: the gate then compares against the fp32 predictions, which
    (unlike ground truth for an untrained net) makes 'worse' well defined."""
    from deploy_unet.data import SyntheticSpec, synthetic_batch

    path = tmp_path_factory.mktemp("eval") / "eval.npy"
    np.save(path, synthetic_batch(SyntheticSpec(seed=2, height=32, width=32), 0, 4, num_classes=3)[0])
    return str(path)


def _graph(path):
    model = onnx.load(path)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return model, producers, inits, consumers


def _assert_common_qdq_rules(path, symmetric_activations=True):
    model, producers, inits, _ = _graph(path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    for n in qdq:
        assert len(n.input) == 3
        zp = inits[n.input[2]]
        is_bias = n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0, np.int8)).dtype == np.int32
        is_weight = n.op_type == "DequantizeLinear" and n.output[0] in weights
        if symmetric_activations or is_weight or is_bias:
            # symmetric: zero point 0, int8 (int32 only for ORT's quantized biases)
            assert not zp.any(), n.name
            assert zp.dtype == (np.int32 if is_bias else np.int8)
        else:
            assert zp.dtype == np.uint8  # the onnxruntime target's U8S8 activations
    for io in list(model.graph.input) + list(model.graph.output):
        assert io.type.tensor_type.elem_type == TensorProto.FLOAT
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            dq = producers[n.input[1]]
            assert dq.op_type == "DequantizeLinear"
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert axis == (0 if n.op_type == "Conv" else 1)
            weight_shape = inits[dq.input[0]].shape
            assert inits[dq.input[0]].dtype == np.int8
            assert inits[dq.input[1]].shape == (weight_shape[axis],)  # per-channel scales
    return model, producers, inits


def test_int8_tensorrt_placement_rules(unet_onnx, tmp_path):
    res = quantize(unet_onnx, "int8", target="tensorrt", output=tmp_path / "t.onnx", **FAST)
    model, producers, inits = _assert_common_qdq_rules(res.path)
    _, _, _, consumers = _graph(res.path)
    ops = [n.op_type for n in model.graph.node]
    assert "ConvTranspose" in ops and "Concat" in ops
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "MaxPool"):  # activation inputs quantized
            assert producers[n.input[0]].op_type == "DequantizeLinear", n.name
        if n.op_type == "Conv":  # nothing between a Conv and its ReLU (so they fuse)
            for c in consumers.get(n.output[0], []):
                assert c.op_type != "QuantizeLinear" or any(
                    cc.op_type == "Concat" for cc in consumers.get(c.output[0], [])
                )
        if n.op_type == "Concat":  # inputs share one scale
            scales = []
            for name in n.input:
                dq = producers[name]
                assert dq.op_type == "DequantizeLinear"
                scales.append(float(inits[dq.input[1]]))
            assert len(set(scales)) == 1, scales
    logits = model.graph.output[0].name
    assert producers[logits].op_type == "Conv"  # no Q/DQ on the logits
    assert not any(n.op_type == "QuantizeLinear" and logits in n.input for n in model.graph.node)
    info = read_model_info(res.path)
    assert info.precision == "int8"
    assert info.extra["quant_target"] == "tensorrt" and info.extra["calib_source"] == CALIB
    assert info.extra["calib_samples"] == "8" and info.extra["quant_method"] == "minmax"


def test_int8_openvino_placement_rules(unet_onnx, tmp_path):
    """NNCF's pattern: uint8 (zero point 0) where the tensor is non-negative, int8 elsewhere; no Q/DQ after
    MaxPool or a quantized Concat; weights and Concat scale sharing as the tensorrt placement; same ranges."""
    cache = tmp_path / "calib.json"
    ov = quantize(unet_onnx, "int8", target="openvino", calib_cache=cache, **{**FAST, "eval_source": None})
    assert ov.path.name == "unet.int8.ov.onnx"
    trt = quantize(unet_onnx, "int8", target="tensorrt", calib_cache=cache, output=tmp_path / "t.onnx",
                   **{**FAST, "eval_source": None})
    assert_openvino_placement(ov.path, unet_onnx, trt.path)


def assert_openvino_placement(ov_path, fp32_path, trt_path):
    """The openvino placement's rules on ``ov_path``, against the fp32 file it came from and the tensorrt
    placement made from the same calibration (also run on the pipeline's files, tests/test_openvino.py)."""
    model, producers, inits, consumers = _graph(ov_path)
    fp32_producers = {o: n for n in onnx.load(fp32_path).graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            dq = producers[n.input[1]]  # per-channel symmetric int8 weights on the output-channel axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert axis == (0 if n.op_type == "Conv" else 1)
            assert inits[dq.input[0]].dtype == np.int8 and not inits[dq.input[2]].any()
            assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[axis],)
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    unsigned = [q for q in acts if inits[q.input[2]].dtype == np.uint8]
    signed = [q for q in acts if inits[q.input[2]].dtype == np.int8]
    assert unsigned and signed and len(unsigned) + len(signed) == len(acts)
    assert all(not inits[q.input[2]].any() for q in acts)  # zero point 0 everywhere
    for q in unsigned:  # only ReLU outputs (non-negative) that feed no Concat are unsigned
        assert fp32_producers[q.input[0]].op_type == "Relu"
        readers = [c for d in consumers[q.output[0]] for c in consumers[d.output[0]]]
        assert not any(c.op_type == "Concat" for c in readers)
    input_q = [q for q in acts if q.input[0] == model.graph.input[0].name]
    assert input_q and inits[input_q[0].input[2]].dtype == np.int8  # the normalized input can be negative
    for n in model.graph.node:
        if n.op_type == "Concat":  # quantized inputs, one scale, one zero point type
            dqs = [producers[name] for name in n.input]
            assert all(d.op_type == "DequantizeLinear" for d in dqs)
            assert len({float(inits[d.input[1]]) for d in dqs}) == 1
            assert len({inits[d.input[2]].dtype for d in dqs}) == 1
        if n.op_type in ("MaxPool", "Concat"):  # read directly by the next Conv, not quantized again
            assert producers[n.input[0]].op_type == "DequantizeLinear"
            for c in consumers[n.output[0]]:
                assert c.op_type in ("Conv", "ConvTranspose"), c.op_type
        if n.op_type in ("Conv", "ConvTranspose"):
            src = producers.get(n.input[0])
            assert src is not None and src.op_type in ("DequantizeLinear", "MaxPool", "Concat"), n.name
    assert not any(q.input[0] == model.graph.output[0].name for q in acts)  # logits stay float
    assert sum(producers.get(n.input[0]) is not None and producers[n.input[0]].op_type in ("MaxPool", "Concat")
               for n in model.graph.node if n.op_type == "Conv") > 0
    # the same calibration ranges as the tensorrt placement: uint8 scale x 255 == int8 scale x 127
    t_model, t_producers, t_inits, _ = _graph(trt_path)
    t_scale = {n.input[0]: float(t_inits[n.input[1]]) for n in t_model.graph.node if n.op_type == "QuantizeLinear"}
    for q in acts:
        levels = 255 if q in unsigned else 127
        assert float(inits[q.input[1]]) * levels == pytest.approx(t_scale[q.input[0]] * 127, rel=1e-6)
    assert len(acts) < len(t_scale)  # fewer Q/DQ than the tensorrt placement (none after MaxPool/Concat)
    assert read_model_info(ov_path).extra["quant_target"] == "openvino"


def test_int8_openvino_exclusions_and_fallback(unet_onnx, tmp_path):
    """An excluded MaxPool: its input is not quantized, so the Conv after it quantizes its own input; the
    openvino target keeps excluded layers in fp32 (fp16 islands are the tensorrt placement's)."""
    from deploy_unet.precision import mixed

    fp32 = mixed.name_nodes(onnx.load(unet_onnx))
    pool = next(n for n in fp32.graph.node if n.op_type == "MaxPool")
    res = quantize(unet_onnx, "int8", target="openvino", output=tmp_path / "x.onnx", exclude=[pool.name],
                   **{**FAST, "eval_source": None})
    model, producers, _, consumers = _graph(res.path)
    node = next(n for n in model.graph.node if n.name == pool.name)
    assert producers[node.input[0]].op_type != "DequantizeLinear"
    assert [c.op_type for c in consumers[node.output[0]]] == ["QuantizeLinear"]  # re-quantized for the Conv
    assert {g.op for g in mixed.groups_for(fp32, "int8", "openvino")} >= {"Conv", "MaxPool", "Concat"}
    with pytest.raises(ConfigError, match="fallback-precision fp16"):
        quantize(unet_onnx, "int8", target="openvino", output=tmp_path / "y.onnx", fallback_precision="fp16",
                 exclude=[pool.name], **{**FAST, "eval_source": None})


def test_int8_onnxruntime_target_rules_and_runs(unet_onnx, tmp_path):
    res = quantize(unet_onnx, "int8", target="onnxruntime", output=tmp_path / "o.onnx", **FAST)
    model, producers, inits = _assert_common_qdq_rules(res.path, symmetric_activations=False)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # unused domains stripped
    # every activation quantized, and each ReLU folded into the uint8 Q after its Conv: zero point 0 is
    # uint8's qmin, so the Q clamps at 0 exactly as the ReLU did (this is what makes ORT CPU fast)
    relus_before = sum(n.op_type == "Relu" for n in onnx.load(unet_onnx).graph.node)
    assert relus_before > 0 and not any(n.op_type == "Relu" for n in model.graph.node)
    conv_out = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    clamping_q = [n for n in model.graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] in conv_out and int(inits[n.input[2]]) == 0]
    assert len(clamping_q) == relus_before
    assert res.gate.mask_agreement > 0.9
    assert read_model_info(res.path).extra["quant_target"] == "onnxruntime"


def test_opset_below_13_is_refused(unet_onnx):
    model = onnx.load(unet_onnx)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 12
    with pytest.raises(ConfigError, match="opset 12"):
        check_opset(model)


def test_cache_reuse_gives_identical_file_and_mismatch_is_refused(unet_onnx, tmp_path):
    cache = tmp_path / "ranges.json"
    first = quantize(unet_onnx, "int8", calib_cache=cache, output=tmp_path / "a.onnx", **FAST)
    assert not first.from_cache and cache.is_file()
    second = quantize(unet_onnx, "int8", calib_cache=cache, output=tmp_path / "b.onnx", **FAST)
    assert second.from_cache
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with pytest.raises(ArtifactError, match="samples 8 != 9"):
        quantize(unet_onnx, "int8", calib_cache=cache, output=tmp_path / "c.onnx",
                 **{**FAST, "calib_samples": 9})
    payload = json.loads(cache.read_text())
    payload["model_fingerprint"] = "0" * 64
    cache.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match="different model"):
        quantize(unet_onnx, "int8", calib_cache=cache, output=tmp_path / "d.onnx", **FAST)
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "d.onnx").exists()


def test_too_few_samples_and_same_sources_are_refused(unet_onnx, tmp_path):
    with pytest.raises(ConfigError, match="too few"):
        quantize(unet_onnx, "int8", output=tmp_path / "x.onnx", **{**FAST, "calib_samples": 4})
    np.save(tmp_path / "five.npy", np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ConfigError, match="only 5 samples"):
        quantize(unet_onnx, "int8", output=tmp_path / "x.onnx", **{**FAST, "calib": str(tmp_path / "five.npy")})
    with pytest.raises(ConfigError, match="must differ"):
        quantize(unet_onnx, "int8", output=tmp_path / "x.onnx", **{**FAST, "eval_source": CALIB})
    assert not (tmp_path / "x.onnx").exists()


def test_gate_passes_and_fails_on_purpose(unet_onnx, eval_images, tmp_path):
    from deploy_unet.data import load_samples

    info = read_model_info(unet_onnx)
    samples = load_samples(eval_images, info, 4)
    same = gate.evaluate(unet_onnx, unet_onnx, samples, info.num_classes, max_dice_drop=0.0)
    assert same.passed and same.dice_drop == 0.0 and same.mask_agreement == 1.0
    # a broken candidate: the head's weights negated flips its argmax almost everywhere
    model = onnx.load(unet_onnx)
    head = [n for n in model.graph.node if n.output[0] == model.graph.output[0].name][0]
    for t in model.graph.initializer:
        if t.name in head.input[1:]:
            t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    report = gate.evaluate(unet_onnx, broken, samples, info.num_classes, max_dice_drop=0.01)
    assert report.reference == "fp32 predictions"
    assert not report.passed and report.mask_agreement < 0.9
    with pytest.raises(GateFailedError, match="accuracy gate failed"):
        from deploy_unet.precision import QuantizeResult

        check_gate(QuantizeResult(broken, "int8", "tensorrt", "minmax", CALIB, 8, False, report))


def test_cli_quantize_gate_exit_codes(unet_onnx, eval_images, tmp_path):
    runner = CliRunner()
    common = ["quantize", str(unet_onnx), "--precision", "int8", "--calib", CALIB, "--calib-samples", "8",
              "--eval", eval_images, "--eval-samples", "4"]
    ok = runner.invoke(cli, [*common, "--max-dice-drop", "1", "-o", str(tmp_path / "ok.onnx")])
    assert ok.exit_code == 0, ok.output
    assert "wrote" in ok.output and "mask agreement" in ok.output
    # a cache with absurdly narrow ranges (crafted for this model) saturates every activation: gate fails
    cache = tmp_path / "narrow.json"
    calibration.calibrate(onnx.load(unet_onnx), read_model_info(unet_onnx), CALIB, 8, cache=cache, progress=False)
    payload = json.loads(cache.read_text())
    payload["ranges"] = {k: [-1e-4, 1e-4] for k in payload["ranges"]}
    cache.write_text(json.dumps(payload))
    bad = runner.invoke(cli, [*common, "--calib-cache", str(cache), "-o", str(tmp_path / "bad.onnx")])
    assert bad.exit_code == 1, bad.output
    assert "accuracy gate failed" in bad.output
    usage = runner.invoke(cli, ["quantize", str(tmp_path / "missing.onnx"), "--precision", "int8"])
    assert usage.exit_code == 2 and "does not exist" in usage.output


def _overflow_model(path):
    """Conv (weights 1e4) -> Relu -> Conv (weights 1e-4): the middle activation is ~1e5, beyond fp16."""
    rng = np.random.default_rng(0)
    w1 = (np.abs(rng.standard_normal((4, 3, 3, 3))) * 1e4).astype(np.float32)
    w2 = (rng.standard_normal((3, 4, 1, 1)) * 1e-4).astype(np.float32)
    w3 = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["big"], name="big_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["big"], ["big_relu"], name="big_relu"),
        helper.make_node("Conv", ["big_relu", "w2"], ["small"], name="shrink_conv"),
        helper.make_node("Conv", ["small", "w3"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "overflow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    write_props(model, ModelInfo(arch="tiny", divisor=1, in_channels=3, num_classes=3).to_props())
    onnx.save(model, path)


def test_fp16_keeps_overflowing_nodes_fp32(tmp_path):
    import onnxruntime as ort

    src = tmp_path / "overflow.onnx"
    _overflow_model(src)
    res = quantize(src, "fp16", output=tmp_path / "o16.onnx", **FAST)
    assert {"big_conv", "big_relu", "shrink_conv"} <= set(res.kept_fp32)
    assert "head" not in res.kept_fp32
    model = onnx.load(res.path)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["w1"].data_type == TensorProto.FLOAT and inits["w3"].data_type == TensorProto.FLOAT16
    for io in list(model.graph.input) + list(model.graph.output):
        assert io.type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    # without the policy the same net overflows: proof that the policy is what saved it
    from deploy_unet.precision.fp16 import convert_fp16

    calib, _ = calibration.calibrate(onnx.load(src), read_model_info(src), CALIB, 8, progress=False)
    naive, kept = convert_fp16(onnx.load(src), calib, limit=float("inf"))
    assert kept == []
    naive_path = tmp_path / "naive.onnx"
    onnx.save(naive, naive_path)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(naive).graph.value_info}
    assert types["big"] == TensorProto.FLOAT16  # the naive graph stores the ~1e5 activation as fp16,
    with np.errstate(over="ignore"):  # the overflow is the point
        assert np.isinf(np.float16(calib.absmax("big")))  # which a real fp16 engine rounds to inf
    # (ORT CPU computes fp16 Conv in fp32 internally, so it cannot show the overflow itself)
    kept_types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    big_out = next(n.output[0] for n in model.graph.node if n.name == "big_conv")
    assert kept_types[big_out] == TensorProto.FLOAT
    assert read_model_info(res.path).precision == "fp16"
