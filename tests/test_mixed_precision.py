"""Layer-wise comparison, exclusions, fp16 islands and the auto-fallback search, on graphs built to fail.

The int8 net that fails is a thin UNet with one *outlier channel*: a BatchNorm channel scaled by 1024 and
the next conv's weights for that channel divided by 1024. fp32 computes exactly the same function (powers
of two), but the activation's per-tensor int8 range is then 1024x too wide for its other channels, the
classic PTQ failure. The fp16 net that fails adds and removes 2048 around a small signal (fp16 keeps 1
bit below the units there), which no value-range rule catches.
"""

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ConfigError
from deploy_unet.metadata import ModelInfo, write_props
from deploy_unet.precision import gate, quantize
from deploy_unet.precision.layerwise import GraphView, compare_layers, match_tensors

CALIB = "synthetic:seed=1,size=32x32"
FAST = dict(calib=CALIB, calib_samples=8, eval_samples=4, progress=False)
GATE = dict(min_mask_agreement=99.5, max_dice_drop=1.0)  # mask agreement decides (Dice of rare classes is noisy)


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory):
    """(path, the conv reading the outlier tensor): fp32-exact, int8-hostile."""
    import torch

    from deploy_unet.export import export_onnx
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    net = create_net("unet", num_classes=3, depth=2, base_channels=8).eval()
    with torch.no_grad():
        net.head.weight.normal_(0.0, 1.0)  # a strong random head: varied masks from an untrained net
        net.head.bias.zero_()
        bn, conv2 = net.up[-1].block[1], net.up[-1].block[3]
        bn.weight[0] *= 1024.0
        bn.bias[0] *= 1024.0
        conv2.weight[:, 0] /= 1024.0
    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    export_onnx(net, path, height=32, width=32, mean=[0.5] * 3, std=[0.25] * 3)  # parity-checked vs torch
    model = onnx.load(path)
    consumer = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "up.1.block.3.weight")
    return path, consumer.name


@pytest.fixture(scope="module")
def eval_npy(tmp_path_factory):
    """Held-out images without masks: the gate compares with the fp32 predictions."""
    from deploy_unet.data import SyntheticSpec, synthetic_batch

    path = tmp_path_factory.mktemp("eval") / "eval.npy"
    np.save(path, synthetic_batch(SyntheticSpec(seed=2, height=32, width=32), 0, 4, num_classes=3)[0])
    return str(path)


@pytest.fixture(scope="module")
def candidates(outlier_onnx, eval_npy, tmp_path_factory):
    """Plain int8 (both placements) and fp16 of the outlier net."""
    src, _ = outlier_onnx
    out = tmp_path_factory.mktemp("cands")
    files = {}
    for key, prec, target in (("trt", "int8", "tensorrt"), ("ort", "int8", "onnxruntime"), ("fp16", "fp16", "tensorrt")):
        files[key] = quantize(src, prec, target=target, output=out / f"{key}.onnx", eval_source=None,
                              calib_cache=out / "calib.json" if prec == "int8" else None, **FAST).path
    return files


def _images(n=3, size=32, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(n)]


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor, initializer and node renamed to an opaque name, as other exporters and tools do."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    names = {}
    for v in [*g.input, *g.output]:
        names[v.name] = v.name  # IO names stay: they are the file's interface
    for t in g.initializer:
        names.setdefault(t.name, f"w{len(names)}")
    for n in g.node:
        for o in n.output:
            names.setdefault(o, f"t{len(names)}")
    for i, n in enumerate(g.node):
        n.name = f"n{i}"
        n.input[:] = [names.get(x, x) for x in n.input]
        n.output[:] = [names.get(x, x) for x in n.output]
    for t in g.initializer:
        t.name = names[t.name]
    del g.value_info[:]
    return model


# --- matching and the per-layer comparison -------------------------------------------------------------


def test_matching_survives_qdq_cast_onnxslim_and_renaming(outlier_onnx, candidates, tmp_path):
    import onnxslim

    src, _ = outlier_onnx
    ref = onnx.load(src)
    ref_convs = [n.output[0] for n in ref.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    renamed = tmp_path / "renamed.onnx"
    onnx.save(_renamed(ref), renamed)
    slimmed = tmp_path / "ort_slim.onnx"
    onnx.save(onnxslim.slim(onnx.load(candidates["ort"])), slimmed)
    files = {"renamed": renamed, "slimmed": slimmed, **candidates}
    for key, path in files.items():
        matches = {m.ref: m.cand for m in match_tensors(ref, onnx.load(path))}
        assert all(c in matches for c in ref_convs), (key, [c for c in ref_convs if c not in matches])
    # ORT's quantizer renames the logits' producer and folds every ReLU into a Q; fp16 renames cast outputs
    ort_matches = {m.ref: m.cand for m in match_tensors(ref, onnx.load(candidates["ort"]))}
    relus = [n.output[0] for n in ref.graph.node if n.op_type == "Relu"]
    assert relus and all(ort_matches[r].endswith("_DequantizeLinear_Output") for r in relus)
    assert not any(n.op_type == "Relu" for n in onnx.load(candidates["ort"]).graph.node)
    # the pairs are right, not just present: the renamed copy is the same net, so every tensor agrees to
    # float rounding (the candidate session runs ORT's optimized kernels, the reference none), and a quantized
    # tensor paired with the wrong fp32 tensor would show an SQNR near or below 0 dB
    reports = compare_layers(src, [renamed, candidates["trt"], candidates["ort"], candidates["fp16"]], _images())
    assert all(x.sqnr_db > 100 and x.nonfinite == 0 for x in reports[0].layers)
    assert len(reports[0].layers) == len(GraphView.of(ref).value_tensors()) and reports[0].unmatched == 0
    _, victim = outlier_onnx
    for report in reports[1:]:
        assert report.unmatched == 0
        upstream = [x for x in report.layers if x.index < next(y.index for y in report.layers if y.node == victim)]
        assert min(x.sqnr_db for x in upstream) > 10, report.candidate  # before the outlier does its damage
    fp16 = reports[3]
    assert min(x.sqnr_db for x in fp16.layers) > 40  # fp16 rounding only
    assert fp16.precision == "fp16" and max(x.max_abs_ref for x in fp16.layers) > 100  # the outlier channel


def test_per_layer_finds_a_layer_whose_scale_is_ruined(outlier_onnx, candidates, tmp_path):
    """Scale of one activation Q/DQ (a conv's input, mid-net) times 100: that conv is the worst layer."""
    src, outlier = outlier_onnx
    # the outlier's reader in fp32, so the net's only int8 trouble is the one made here
    clean = quantize(src, "int8", exclude=[outlier], fallback_precision="fp32", output=tmp_path / "clean.onnx",
                     eval_source=None, **FAST).path
    model = onnx.load(clean)
    producers = {o: n for n in model.graph.node for o in n.output}
    uses = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    convs = [n for n in model.graph.node if n.op_type == "Conv" and producers[n.input[0]].op_type == "DequantizeLinear"
             and uses[producers[n.input[0]].input[1]] == 2]  # its own scale (one Q, one DQ), not a Concat's
    (fine,) = compare_layers(src, [clean], _images(4))
    local = {x.node: x.local_sqnr_db for x in fine.layers}
    victim = max(convs, key=lambda n: local[n.name])  # the conv that adds the *least* error before the ruin
    scale = producers[victim.input[0]].input[1]
    for t in model.graph.initializer:
        if t.name == scale:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(100), t.name))
    ruined = tmp_path / "ruined.onnx"
    onnx.save(model, ruined)
    (bad,) = compare_layers(src, [ruined], _images(4))
    assert bad.worst(1)[0].node == victim.name
    assert fine.worst(1)[0].node != victim.name  # it is the ruin that makes it the worst
    row = next(x for x in bad.layers if x.node == victim.name)
    before = next(x for x in fine.layers if x.node == victim.name)
    assert row.local_sqnr_db < before.local_sqnr_db - 20 and row.sqnr_db < before.sqnr_db - 10


def test_per_layer_streams_its_samples(outlier_onnx, candidates):
    """Memory does not grow with the sample count: no batch outlives the next one being processed."""
    src, _ = outlier_onnx
    refs = []

    def stream():
        for i in range(6):
            gc.collect()
            assert all(r() is None for r in refs[:-1]), f"batch {len(refs) - 2} still referenced at {i}"
            x = np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)
            refs.append(weakref.ref(x))
            yield x

    (report,) = compare_layers(src, [candidates["trt"]], stream())
    assert report.samples == 6
    from deploy_unet.precision.layerwise import _Stats

    assert not hasattr(_Stats(), "__dict__")  # fixed scalar slots per tensor, nowhere to keep arrays


def test_cli_validate_per_layer_writes_table_json_and_png(outlier_onnx, candidates, tmp_path):
    src, _ = outlier_onnx
    js, png = tmp_path / "layers.json", tmp_path / "layers.png"
    result = CliRunner().invoke(cli, [
        "validate", str(candidates["trt"]), str(candidates["fp16"]), "--reference", str(src),
        "--data", "synthetic:seed=3,size=32x32", "-n", "2", "--per-layer", "--layers-json", str(js),
        "--layers-plot", str(png), "--top", "3", "--gate", "mask_agreement=0", "--gate", "rel_l2=10",
        "--gate", "cosine=0", "--gate", "miou_drop=1",
    ])
    assert result.exit_code == 0, result.output
    assert "adding the most error" in result.output and "up.1.block.3" in result.output
    payload = json.loads(js.read_text())
    assert [Path(c["candidate"]).name for c in payload["candidates"]] == ["trt.onnx", "fp16.onnx"]
    rows = payload["candidates"][0]["layers"]
    assert len(rows) == len(GraphView.of(onnx.load(src)).value_tensors())
    assert {"sqnr_db", "rel_l2", "local_sqnr_db", "max_abs_ref", "fp16_range_share"} <= set(rows[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(cli, ["validate", str(candidates["trt"]), "-r", "models/unet_synthetic.pt", "--per-layer"])
    assert bad.exit_code == 2 and "--per-layer compares ONNX files" in bad.output


# --- exclusions --------------------------------------------------------------------------------------


def _dq_fed(model, name):
    producers = {o: n for n in model.graph.node for o in n.output}
    p = producers.get(name)
    return p is not None and p.op_type == "DequantizeLinear"


def test_exclude_by_name_regex_and_op_type(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    common = dict(eval_source=None, calib_cache=tmp_path / "c.json", **FAST)
    by_name = quantize(src, "int8", exclude=[victim], fallback_precision="fp32", output=tmp_path / "a.onnx", **common)
    model = onnx.load(by_name.path)
    nodes = {n.name: n for n in model.graph.node}
    assert not _dq_fed(model, nodes[victim].input[0]) and not _dq_fed(model, nodes[victim].input[1])
    assert not any(n.op_type == "Cast" for n in model.graph.node)  # fp32 fallback: no island casts
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name != victim]
    assert all(_dq_fed(model, n.input[1]) for n in others)
    assert by_name.kept_higher == {victim: f"--exclude {victim}"}
    meta = json.loads(read_model_info(by_name.path).extra["kept_higher_precision"])
    assert meta == {"precision": "fp32", "layers": [{"node": victim, "why": f"--exclude {victim}"}]}

    by_regex = quantize(src, "int8", exclude=[r"up\.1\..*"], output=tmp_path / "b.onnx", **common)
    model = onnx.load(by_regex.path)
    up1 = {n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.input[1].startswith("up.1.")}
    assert set(by_regex.kept_higher) == up1 and len(up1) == 3  # up.1.up (ConvTranspose), block.0, block.3
    by_op = quantize(src, "int8", exclude_op_types=["ConvTranspose"], output=tmp_path / "c.onnx", **common)
    model = onnx.load(by_op.path)
    ct = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert ct and set(by_op.kept_higher) == {n.name for n in ct}
    assert not any(_dq_fed(model, n.input[1]) for n in ct)
    assert all(_dq_fed(model, n.input[1]) for n in model.graph.node if n.op_type == "Conv")

    with pytest.raises(ConfigError, match="matches no quantizable node"):
        quantize(src, "int8", exclude=["no_such_layer"], output=tmp_path / "x.onnx", **common)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        quantize(src, "int8", exclude=["up.(1"], output=tmp_path / "x.onnx", **common)
    with pytest.raises(ConfigError, match="op types here"):
        quantize(src, "int8", exclude_op_types=["Gemm"], output=tmp_path / "x.onnx", **common)
    with pytest.raises(ConfigError, match="tensorrt placement"):
        quantize(src, "int8", target="onnxruntime", fallback_precision="fp16", output=tmp_path / "x.onnx", **common)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exclude_prints_what_it_kept(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    result = CliRunner().invoke(cli, [
        "quantize", str(src), "--precision", "int8", "--calib", CALIB, "--calib-samples", "8", "--eval", eval_npy,
        "--eval-samples", "4", "--exclude", "up.1.block.3", "--min-mask-agreement", "99.5", "--max-dice-drop", "1",
        "-o", str(tmp_path / "e.onnx"),
    ])
    assert result.exit_code == 0, result.output  # excluding the outlier's reader by its module path fixes it
    assert f"kept in fp16 (1): {victim} [--exclude up.1.block.3]" in result.output


# --- the auto-fallback search ----------------------------------------------------------------------


def _assert_tensorrt_rules(model: onnx.ModelProto) -> None:
    """The TensorRT placement rules of tests/test_precision.py, on a mixed-precision result."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8, n.name  # symmetric int8
        if n.op_type in ("Conv", "ConvTranspose"):
            # a conv is int8 as a whole (input and weight) or not at all
            assert _dq_fed(model, n.input[0]) == _dq_fed(model, n.input[1]), n.name
            for c in consumers.get(n.output[0], []):  # nothing between a conv and its activation (a Q/DQ
                if c.op_type == "QuantizeLinear":  # only where the output goes straight into a Concat)
                    dq = consumers[c.output[0]]
                    assert all(cc.op_type == "Concat" for d in dq for cc in consumers[d.output[0]]), n.name
        if n.op_type == "Concat":  # all int8 on one scale, or all float: never mixed
            fed = [_dq_fed(model, i) for i in n.input]
            assert all(fed) or not any(fed), n.name
            if all(fed):
                assert len({float(inits[producers[i].input[1]]) for i in n.input}) == 1, n.name
    logits = g.output[0].name
    assert producers[logits].op_type != "DequantizeLinear"
    assert not any(n.op_type == "QuantizeLinear" and logits in n.input for n in g.node)


def test_auto_fallback_int8_tensorrt_meets_the_gate_with_few_fp16_layers(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    common = dict(eval_source=eval_npy, calib_cache=tmp_path / "c.json", **FAST, **GATE)
    plain = quantize(src, "int8", output=tmp_path / "plain.onnx", **common)
    assert not plain.gate.passed  # the outlier channel ruins int8 ...
    steps = []
    auto = quantize(src, "int8", output=tmp_path / "auto.onnx", auto_fallback=True, log=steps.append, **common)
    assert auto.gate.passed and auto.fallback.passed  # ... and the search fixes it
    everything = len(auto.fallback.groups)
    assert victim in auto.kept_higher and 1 <= len(auto.kept_higher) < everything
    # an independent measurement of the written file agrees
    info = read_model_info(src)
    from deploy_unet.data import load_samples

    again = gate.evaluate(src, auto.path, load_samples(eval_npy, info, 4), info.num_classes,
                          spec=gate.GateSpec(**{k: v for k, v in GATE.items()}))
    assert again.passed and again.mask_agreement == pytest.approx(auto.gate.mask_agreement)
    model = onnx.load(auto.path)
    _assert_tensorrt_rules(model)
    # the kept conv is a real fp16 island: fp16 weight, fp16 input cast, fp32 again outside
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    conv = nodes[victim]
    assert inits[conv.input[1]].data_type == TensorProto.FLOAT16
    cast = producers[conv.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT16
    typed = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    assert types[conv.output[0]] == TensorProto.FLOAT16
    for io in [*model.graph.input, *model.graph.output]:
        assert io.type.tensor_type.elem_type == TensorProto.FLOAT
    out = ort.InferenceSession(str(auto.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": _images(1)[0]})[0]
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # what the user sees: the steps, and the final line the issue asks for
    assert any(line.startswith("step 1: ") for line in steps)
    line = auto.fallback.summary_line()
    convs = sum(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)
    low = convs - sum(1 for n in auto.kept_higher if nodes[n].op_type in ("Conv", "ConvTranspose"))
    assert line.startswith(f"{low} of {convs} conv layers int8, gate ")
    assert "mask_agreement" in line and f"(was {100 * plain.gate.mask_agreement:.2f})" in line
    meta = json.loads(read_model_info(auto.path).extra["auto_fallback"])
    assert meta["passed"] and {k["node"] for k in meta["kept"]} == set(auto.kept_higher)
    assert all(k["why"].startswith("auto-fallback") for k in meta["kept"])


def test_auto_fallback_ranked_by_local_error_agrees(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    auto = quantize(src, "int8", output=tmp_path / "l.onnx", auto_fallback=True, rank="local",
                    eval_source=eval_npy, calib_cache=tmp_path / "c.json", **FAST, **GATE)
    assert auto.gate.passed and victim in auto.kept_higher
    assert auto.fallback.subset_evaluations == 0  # one layer-wise pass instead of one evaluation per group
    assert auto.fallback.ranking[0][0] == victim  # the outlier's reader adds the most local error


def test_auto_fallback_onnxruntime_placement_keeps_layers_float(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    auto = quantize(src, "int8", target="onnxruntime", output=tmp_path / "o.onnx", auto_fallback=True,
                    eval_source=eval_npy, calib_cache=tmp_path / "c.json", **FAST, **GATE)
    assert auto.gate.passed and victim in auto.kept_higher
    assert len(auto.kept_higher) < len(auto.fallback.groups)
    model = onnx.load(auto.path)
    for name in auto.kept_higher:  # kept layers read float tensors and float weights (ORT would not do that alone)
        node = next(n for n in model.graph.node if n.name == name)
        assert not any(_dq_fed(model, i) for i in node.input if i), name
    ref = onnx.load(src)
    out = ort.InferenceSession(str(auto.path), providers=["CPUExecutionProvider"]).run(None, {"input": _images(1)[0]})[0]
    fp32 = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": _images(1)[0]})[0]
    assert (out.argmax(1) == fp32.argmax(1)).mean() > 0.95


def test_auto_fallback_needs_eval_data(outlier_onnx, tmp_path):
    src, _ = outlier_onnx
    with pytest.raises(ConfigError, match="held-out data"):
        quantize(src, "int8", auto_fallback=True, eval_source=None, output=tmp_path / "x.onnx", **FAST)


def _cancellation_model(path):
    """conv -> +2048 -> -2048 -> head: exact in fp32; in fp16 the +2048 tensor keeps 1 bit below 1."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    big = np.array(2048.0, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["f"], name="features", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["f", "big"], ["shifted"], name="shift_up"),
        helper.make_node("Sub", ["shifted", "big"], ["back"], name="shift_down"),
        helper.make_node("Conv", ["back", "w2"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "cancel",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (big, "big"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    write_props(model, ModelInfo(arch="tiny", divisor=1, in_channels=3, num_classes=3).to_props())
    onnx.save(model, path)


def test_auto_fallback_fp16_keeps_the_fewest_nodes_fp32(tmp_path, eval_npy):
    src = tmp_path / "cancel.onnx"
    _cancellation_model(src)
    common = dict(eval_source=eval_npy, **FAST, **GATE)
    plain = quantize(src, "fp16", output=tmp_path / "p16.onnx", **common)
    assert not plain.kept_fp32  # no value is near fp16's range: the range policy keeps nothing
    assert not plain.gate.passed
    auto = quantize(src, "fp16", output=tmp_path / "a16.onnx", auto_fallback=True, **common)
    assert auto.gate.passed
    # both ends of the cancellation must stay fp32 (one alone still rounds 2048 + x to fp16), nothing else
    assert set(auto.kept_higher) == {"shift_up", "shift_down"}
    model = onnx.load(auto.path)
    typed = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    nodes = {n.name: n for n in model.graph.node}
    assert types[nodes["shift_up"].output[0]] == TensorProto.FLOAT and types["f"] == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert json.loads(read_model_info(auto.path).extra["kept_higher_precision"])["precision"] == "fp32"


def test_cli_auto_fallback_prints_steps_and_the_final_line(outlier_onnx, eval_npy, tmp_path):
    src, victim = outlier_onnx
    common = ["quantize", str(src), "--precision", "int8", "--calib", CALIB, "--calib-samples", "8", "--eval",
              eval_npy, "--eval-samples", "4", "--min-mask-agreement", "99.5", "--max-dice-drop", "1"]
    failed = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "p.onnx")])
    assert failed.exit_code == 1 and "try --auto-fallback" in failed.output
    result = CliRunner().invoke(cli, [*common, "--auto-fallback", "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    assert "step 1: " in result.output and "auto-fallback:" in result.output
    last = result.output.strip().splitlines()[-1]
    assert " conv layers int8, gate " in last and "mask_agreement" in last and "(was " in last
    assert victim in result.output


def test_fp16_keeps_fp32_outputs_when_the_head_stays_fp32(tmp_path):
    """onnxconverter-common declares a blocked last node's output fp16; the file must keep fp32 IO and
    fp32 logits (a head kept in fp32 for range or by the search would otherwise be rounded anyway)."""
    src = tmp_path / "cancel.onnx"
    _cancellation_model(src)
    res = quantize(src, "fp16", exclude=["head"], output=tmp_path / "h16.onnx", eval_source=None, **FAST)
    model = onnx.load(res.path)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    typed = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    head = next(n for n in typed.graph.node if n.name == "head")
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.output]}
    assert types[head.output[0]] == TensorProto.FLOAT
    x = _images(1)[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.dtype == np.float32 and out.shape == ref.shape


def test_pipeline_auto_fallback_makes_int8_meet_its_gates(tmp_path):
    """The outlier net through the main job: its int8 file needs a fallback, gets it, and validates."""
    import torch

    from deploy_unet.checkpoint import save_checkpoint
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    net = create_net("unet", num_classes=3, depth=2, base_channels=8).eval()
    with torch.no_grad():
        net.head.weight.normal_(0.0, 1.0)
        bn, conv2 = net.up[-1].block[1], net.up[-1].block[3]
        bn.weight[0] *= 1024.0
        bn.bias[0] *= 1024.0
        conv2.weight[:, 0] /= 1024.0
    ckpt = tmp_path / "outlier.pt"
    save_checkpoint(ckpt, net, mean=[0.5] * 3, std=[0.25] * 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "pipeline", "--checkpoint", str(ckpt), "-o", str(out), "--height", "64", "--width", "64",
        "--precisions", "fp32,int8", "--int8-targets", "tensorrt", "--calib-samples", "8", "--eval-samples", "4",
        "--iters", "2", "--no-engines", "--auto-fallback",
    ])
    assert result.exit_code == 0, result.output  # every gate, the int8 file's included, holds on seed=2
    report = json.loads((out / "report.json").read_text())
    searched = report["pipeline"]["auto_fallback"]["unet.int8.onnx"]
    assert searched["passed"] is True and searched["kept"]
    assert not list(out.glob("*.ov.onnx"))  # --int8-targets tensorrt alone: no openvino placement, whatever imports
    assert not any(a["target"] == "openvino" for a in report["pipeline"]["artifacts"])
    assert any(f" {op} " in c for c in searched["gate_before"] for op in "<>")  # a failed check: plain int8 fails
    meta = json.loads(read_model_info(out / "unet.int8.onnx").extra["kept_higher_precision"])
    assert [k["node"] for k in meta["layers"]] == [k["node"] for k in searched["kept"]]
    md = (out / "report.md").read_text()
    assert "Layers kept in higher precision (auto-fallback)" in md and searched["kept"][0]["node"] in md
