"""int8 by explicit quantization: QuantizeLinear/DequantizeLinear pairs written into the ONNX graph.

Common to both placements: symmetric (zero point 0, int8), per-channel weights on the output-channel
axis (0 for Conv, 1 for ConvTranspose, whose weight is (C_in, C_out/groups, kH, kW)), per-tensor
activations, opset >= 13 (below 13 QuantizeLinear has no ``axis`` and per-channel Q/DQ is invalid
without any error). Graph inputs and outputs stay float32.

``target="tensorrt"`` (default) -- the placement TensorRT's Q/DQ fusion wants, the one NVIDIA ModelOpt's
ONNX PTQ produces: Q/DQ on the activation input and the weight of every Conv/ConvTranspose and on the
input of pooling; nothing on Conv outputs (so Conv+bias+ReLU fuse into one int8 kernel) and nothing on
the logits; the inputs of each Concat carry Q/DQ with one shared scale (the largest range of the
group), so the concat stays int8 and feeds the next Conv without a re-quantize. Biases stay float
(TensorRT folds them). Written here, directly, from the calibration ranges (see README: why not ModelOpt).

``target="openvino"`` -- the tensorrt placement as NNCF's ``nncf.quantize`` shapes it for OpenVINO: uint8
(zero point 0) activations where the tensor is non-negative, no Q/DQ after MaxPool or a quantized Concat
(see :func:`quantize_for_openvino`).

``target="onnxruntime"`` -- ``onnxruntime.quantization.quantize_static`` in QDQ format (every
activation quantized), which ORT CPU turns into QLinearConv & co. ``quant_pre_process`` (symbolic shape
inference, ``auto_merge=True``) runs in a temp dir because it drops files in the working directory;
the unused opset domains it adds are stripped.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.precision.calibration import Calibration

TARGETS = ("tensorrt", "onnxruntime", "openvino")
MIN_OPSET = 13
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
QMAX = 127.0
UQMAX = 255.0
# Ops that pass quantized values through unchanged (NNCF's QUANTIZE_AGNOSTIC_OPERATIONS for ONNX includes
# MaxPool and GlobalMaxPool): on the openvino target their output is not quantized again.
AGNOSTIC_POOLS = ("MaxPool", "GlobalMaxPool")
NONNEGATIVE_OPS = ("Relu",)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_opset(model: onnx.ModelProto) -> None:
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ConfigError(
            f"model opset {opset} is below {MIN_OPSET}: per-channel QuantizeLinear needs opset >= 13 "
            "(older opsets write an invalid model silently); re-export with `deploy-unet export --opset 18`"
        )


def _scale(absmax: float) -> np.float32:
    # A tensor that is always 0 still needs a positive scale; any value works, 1/127 keeps it tidy.
    return np.float32(absmax / QMAX) if absmax > 0 else np.float32(1.0 / QMAX)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 of a weight along ``axis``: (int8 values, float32 scales)."""
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    absmax = np.abs(moved).max(axis=1)
    scales = np.where(absmax > 0, absmax / QMAX, 1.0 / QMAX).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scales


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def quantize_for_tensorrt(
    model: onnx.ModelProto, calib: Calibration, exclude: Collection[str] = ()
) -> onnx.ModelProto:
    """Insert Q/DQ with TensorRT's placement (see module doc). Returns a new model.

    ``exclude``: names of nodes left without Q/DQ (kept in higher precision): an excluded Conv gets neither
    its input's nor its weight's; an excluded Concat none on any of its inputs and no shared scale; an
    excluded pool none on its input. Scales are shared only among the Concats still quantized, so every
    Concat is all int8 on one scale or not quantized at all.
    """
    return _explicit_qdq(model, calib, exclude, openvino=False)


def quantize_for_openvino(
    model: onnx.ModelProto, calib: Calibration, exclude: Collection[str] = ()
) -> onnx.ModelProto:
    """Insert Q/DQ with the placement NNCF's ``nncf.quantize`` (preset PERFORMANCE) gives an ONNX CNN.

    The tensorrt placement with two changes, both read from NNCF 3.4's output for the shipped UNet and its
    sources (``nncf/quantization/fake_quantize.py: symmetric_range``, ``nncf/onnx/graph/metatypes/groups.py``):

    - **unsigned activations**: a quantized tensor (or Concat group) whose calibrated minimum is >= 0, or that a
      ReLU produces, is uint8 with zero point 0 and scale max/255 (NNCF: signed only if any min < 0); the rest
      stay int8, zero point 0, scale absmax/127. x86 VNNI (``VPDPBUSD``) multiplies u8 by s8, so a u8 input
      needs no shift-and-compensate in OpenVINO's int8 convolutions;
    - **no requantization after MaxPool or a quantized Concat**: their outputs carry their inputs' int8 values
      (MaxPool is quantization-agnostic, a Concat group shares one scale), so the Conv after them reads them
      as they are (the TensorRT placement adds a Q/DQ there).

    Weights, Concat scale sharing, logits and ``exclude`` as in :func:`quantize_for_tensorrt`. The same
    calibration ranges as the other targets (NNCF's own run collects its own and applies bias correction).
    """
    return _explicit_qdq(model, calib, exclude, openvino=True)


def _explicit_qdq(
    model: onnx.ModelProto, calib: Calibration, exclude: Collection[str], openvino: bool
) -> onnx.ModelProto:
    check_opset(model)
    exclude = frozenset(exclude)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}

    # Which edges (node, input index) read a quantized activation, and which tensors those are.
    # Not the int64 Concats: they assemble shapes or pads (export --pad-in-graph), not data.
    shape_tensors = _non_float_tensor_names(model)
    edges: list[tuple[onnx.NodeProto, int]] = []
    for node in graph.node:
        if node.name and node.name in exclude:
            continue
        if node.op_type in WEIGHT_AXIS or node.op_type in POOL_OPS:
            edges.append((node, 0))
        elif node.op_type == "Concat" and node.output[0] not in shape_tensors:
            edges.extend((node, i) for i in range(len(node.input)))
    edges = [(n, i) for n, i in edges if n.input[i] and n.input[i] not in inits and n.input[i] not in outputs]

    # Concat inputs (and its output) share one scale; groups merge through chained Concats.
    groups = _UnionFind()
    producer_op = {out: node.op_type for node in graph.node for out in node.output}
    if openvino:
        # Outputs of MaxPool / quantized Concats whose inputs are all quantized already hold int8 values: no
        # Q/DQ on them (a MaxPool's output shares its input's scale: same group).
        quantized = {n.input[i] for n, i in edges}
        covered: set[str] = set()
        for node in graph.node:
            if node.name and node.name in exclude or not node.output:
                continue
            data = [x for x in node.input if x and x not in inits]
            agnostic = node.op_type in AGNOSTIC_POOLS or (
                node.op_type == "Concat" and node.output[0] not in shape_tensors)
            if agnostic and data and all(x in quantized or x in covered for x in data):
                covered.add(node.output[0])
                if node.op_type in AGNOSTIC_POOLS:
                    groups.union(data[0], node.output[0])
        edges = [(n, i) for n, i in edges if n.input[i] not in covered]
    for node in graph.node:
        if node.op_type == "Concat" and node.output[0] not in shape_tensors and node.name not in exclude:
            for name in node.input:
                groups.union(name, node.output[0])
    group_absmax: dict[str, float] = defaultdict(float)
    for name in {n.input[i] for n, i in edges} | set(groups.parent):
        if name in calib.ranges:
            root = groups.find(name)
            group_absmax[root] = max(group_absmax[root], calib.absmax(name))

    # openvino: a group is uint8 when every member is non-negative (calibrated min >= 0, or a ReLU's output).
    group_signed: dict[str, bool] = defaultdict(bool)
    if openvino:
        for name in {n.input[i] for n, i in edges} | set(groups.parent):
            if name in calib.ranges and calib.ranges[name][0] < 0 and producer_op.get(name) not in NONNEGATIVE_OPS:
                group_signed[groups.find(name)] = True

    missing = sorted({n.input[i] for n, i in edges if n.input[i] not in calib.ranges})
    if missing:
        raise ArtifactError(
            f"calibration has no range for {', '.join(missing[:5])}; the calibration (cache) was made for "
            "another graph: delete the cache and calibrate again"
        )

    new_nodes: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # insert before node index
    producers = {out: idx for idx, node in enumerate(graph.node) for out in node.output}
    dq_of: dict[str, str] = {}
    zero, uzero = "qdq_zero_point_int8", "qdq_zero_point_uint8"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.int8), zero))
    unsigned_used = False
    for node, i in edges:
        name = node.input[i]
        if name not in dq_of:
            scale_name = f"{name}_scale"
            root = groups.find(name)
            unsigned = openvino and not group_signed[root]
            scale = _scale(group_absmax[root]) * np.float32(QMAX / UQMAX) if unsigned else _scale(group_absmax[root])
            graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name))
            q_name, dq_name = f"{name}_quantized", f"{name}_dequantized"
            where = producers.get(name, -1) + 1
            zp = uzero if unsigned else zero
            unsigned_used |= unsigned
            new_nodes[where] += [
                helper.make_node("QuantizeLinear", [name, scale_name, zp], [q_name], name=f"{name}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q_name, scale_name, zp], [dq_name], name=f"{name}_DequantizeLinear"),
            ]
            dq_of[name] = dq_name
        node.input[i] = dq_of[name]
    if unsigned_used:
        graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.uint8), uzero))

    # Weights: int8 initializer + per-channel DequantizeLinear (4x smaller file; TensorRT and ORT fold it).
    for node in graph.node:
        if node.op_type not in WEIGHT_AXIS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.name and node.name in exclude:
            continue
        w_name = node.input[1]
        weight = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        axis = WEIGHT_AXIS[node.op_type]
        q, scales = quantize_weight(weight, axis)
        q_name, s_name, z_name = f"{w_name}_int8", f"{w_name}_scale", f"{w_name}_zero_point"
        graph.initializer.extend([
            numpy_helper.from_array(q, q_name),
            numpy_helper.from_array(scales, s_name),
            numpy_helper.from_array(np.zeros(scales.shape, dtype=np.int8), z_name),
        ])
        dq_out = f"{w_name}_dequantized"
        idx = list(graph.node).index(node)
        new_nodes[idx].append(
            helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=f"{w_name}_DequantizeLinear", axis=axis)
        )
        node.input[1] = dq_out
    _rebuild(graph, new_nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]  # drops the replaced fp32 weights
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def _non_float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Tensors known (by type inference) not to be floating point: shape arithmetic such as int64 pads.

    An unknown type counts as data, so a graph whose types cannot be inferred keeps the full placement.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    known = [v for v in values if v.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED]
    return {v.name for v in known if v.type.tensor_type.elem_type not in floats}


def _rebuild(graph: onnx.GraphProto, before: dict[int, list[onnx.NodeProto]]) -> None:
    """Re-emit nodes with the new ones inserted before their index (keeps topological order)."""
    ordered: list[onnx.NodeProto] = []
    for idx, node in enumerate(graph.node):
        ordered.extend(before.get(idx, []))
        ordered.append(node)
    ordered.extend(before.get(len(graph.node), []))
    # Inputs of the graph itself are quantized before everything (index 0 via producers.get(-1)+1).
    del graph.node[:]
    graph.node.extend(ordered)


def quantize_for_onnxruntime(
    model: onnx.ModelProto, calib: Calibration, exclude: Collection[str] = ()
) -> onnx.ModelProto:
    """onnxruntime.quantization QDQ, fed with our calibration ranges through its cache file.

    Activations are uint8 *asymmetric* (weights stay int8 symmetric per-channel): that is ORT's U8S8
    recommendation for x86, and it lets ORT drop every ReLU into the following Q (a ReLU output's
    zero point is then 0 = qmin). With symmetric int8 activations the ReLUs, their Q/DQ pairs and
    layout transposes stay in the graph and ORT CPU ran this UNet at 0.86x of fp32 instead of ~0.5x.
    TensorRT requires zero point 0, so the tensorrt target keeps symmetric int8 activations.

    ``exclude``: node names passed to ORT's own ``nodes_to_exclude`` (those nodes stay float).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_opset(model)
    model = unshare_biases(model)
    with tempfile.TemporaryDirectory(prefix="deploy-unet-ortq-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        cwd = os.getcwd()
        os.chdir(tmp)  # quant_pre_process leaves temporary files in the working directory
        try:
            # The exported graph is already optimized (constants and BatchNorm folded); skipping ORT's
            # optimizer keeps tensor names equal to the calibrated ones.
            quant_pre_process(src, pre, skip_optimization=True, auto_merge=True)
        finally:
            os.chdir(cwd)
        ranges = TensorsData(
            CalibrationMethod.MinMax,
            {
                k: TensorData(lowest=np.float32(min(0.0, low)), highest=np.float32(max(0.0, high)))
                for k, (low, high) in calib.ranges.items()
            },
        )
        cache = os.path.join(tmp, "ranges.json")
        save_tensors_data(ranges, cache)
        quantize_static(
            pre, out,
            calibration_data_reader=None,
            calibration_cache_path=cache,
            calibrate_method=CalibrationMethod.MinMax,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            nodes_to_exclude=sorted(exclude),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 1},
            },
        )
        result = onnx.load(out)
    if exclude:
        _float_inputs(result, model, exclude)
    # quant_pre_process's symbolic shape inference (auto_merge) can give two sizes that only agree at the
    # calibration shape one dim_param (SwinUNETR's window-padded maps: 144 and 147 at 288x320); ONNX Runtime's
    # allocator trusts value_info and then fails to re-use a buffer at other sizes. The shapes are hints only:
    # drop them, ORT infers its own.
    del result.graph.value_info[:]
    _strip_unused_domains(result)
    onnx.checker.check_model(result)
    return result


def _float_inputs(quantized: onnx.ModelProto, fp32: onnx.ModelProto, exclude: Collection[str]) -> None:
    """Make excluded nodes read float tensors, not the DQ of a tensor ORT quantized for its neighbours.

    ``nodes_to_exclude`` keeps a node's weights float, but a tensor that its producer's side quantized
    reaches it through that Q/DQ (and ORT may have folded the producer's ReLU into the Q: then the raw
    tensor is the pre-ReLU one, and the ReLU is put back). Q/DQ nobody reads any more are dropped.
    """
    graph = quantized.graph
    producers = {o: n for n in graph.node for o in n.output}
    fp32_producers = {o: n for n in fp32.graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    restored: dict[str, str] = {}
    extra: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in exclude:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            raw = q.input[0]
            folded = (fp32_producers.get(raw) is not None and fp32_producers[raw].op_type == "Relu"
                      and (producers.get(raw) is None or producers[raw].op_type != "Relu"))
            if folded:
                if raw not in restored:
                    restored[raw] = f"{raw}_relu_restored"
                    extra.append(helper.make_node("Relu", [raw], [restored[raw]], name=f"{raw}_Relu_restored"))
                raw = restored[raw]
            node.input[i] = raw
    graph.node.extend(extra)
    toposort(graph)
    while True:  # drop Q/DQ left without readers
        used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {n for node in graph.node for n in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


BIAS_SLOT_OPS = ("Conv", "ConvTranspose", "Gemm", "InstanceNormalization", "LayerNormalization", "BatchNormalization")


def unshare_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every Conv/Gemm/normalization node its own bias initializer (input 2), under a unique name.

    quantize_static quantizes a bias with the scales of its node, so a bias shared by several nodes
    (the torch exporter shares one zeros/ones constant among all GroupNorms, exported as
    InstanceNormalization) is duplicated by ORT, named ``<name><largest digit suffix + 1>`` after the
    initializers only; ``val_25`` became ``val_253``, an existing activation, and the graph broke SSA
    (microsoft/onnxruntime#24705). Copies made here use a suffix no exporter writes.
    """
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if node.op_type in BIAS_SLOT_OPS and len(node.input) > 2 and node.input[2] in inits:
            users[node.input[2]] += 1
    if not any(n > 1 for n in users.values()):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    taken |= {v.name for v in list(model.graph.input) + list(model.graph.value_info)}
    inits = {i.name: i for i in model.graph.initializer}
    seen: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        name = node.input[2] if node.op_type in BIAS_SLOT_OPS and len(node.input) > 2 else ""
        if users.get(name, 0) < 2:
            continue
        seen[name] += 1
        if seen[name] == 1:  # the first user keeps the original
            continue
        new = f"{name}__bias{seen[name]}"
        while new in taken:
            new += "_"
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = new
        model.graph.initializer.append(copy)
        taken.add(new)
        node.input[2] = new
    return model


def _strip_unused_domains(model: onnx.ModelProto) -> None:
    """quantize_static adds opset imports (com.microsoft, ...) even when no node uses them."""
    used = {node.domain or "" for node in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def quantize_int8(
    model: onnx.ModelProto, calib: Calibration, target: str = "tensorrt", exclude: Collection[str] = ()
) -> onnx.ModelProto:
    if target not in TARGETS:
        raise ConfigError(f"--target {target!r} is not valid; choose one of: {', '.join(TARGETS)}")
    if target == "tensorrt":
        return quantize_for_tensorrt(model, calib, exclude)
    if target == "openvino":
        return quantize_for_openvino(model, calib, exclude)
    return quantize_for_onnxruntime(model, calib, exclude)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows its inputs' producers (ONNX requires it; edits that add
    or rewire nodes break it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
