"""Mixed precision: which nodes can be kept out of the low precision, and the graph that keeps them there.

One vocabulary for ``--exclude``, ``--exclude-op-type`` and the auto-fallback search: a *group* is a node
whose low-precision treatment is removed as a whole, so the target's rules still hold afterwards.

- int8, ``tensorrt`` placement (Q/DQ written by ``int8.quantize_for_tensorrt``): a Conv/ConvTranspose (its
  input's and its weight's Q/DQ together: TensorRT fuses int8 convolutions only with both), a pooling
  node (its input's Q/DQ), a Concat (the Q/DQ of *all* its inputs, which share one scale). The inserter
  leaves the excluded groups out and shares scales only among the Concats it still quantizes, so no
  Concat ever mixes scales or int8 and float inputs.
  Higher precision for an excluded Conv is fp16 by default: without Q/DQ the island would run in the type
  of its inputs (fp32 in this graph), so Casts put it in fp16 (weights and bias stored fp16; the ReLU-like
  activations right after it join the island so TensorRT can still fuse them); a strongly typed engine
  then compiles exactly that. ``fp32`` leaves it in fp32. Pools and Concats are exact in any float
  type, so they stay in the type of their inputs.
- int8, ``onnxruntime`` placement: any node ORT quantizes; excluded through ORT's own
  ``nodes_to_exclude``. Higher precision is fp32 (ORT's CPU provider has no fast fp16 convolutions).
- fp16: any node that computes (not Relu, MaxPool, Concat, reshapes: those are exact in fp16); excluded
  nodes join onnxconverter-common's ``node_block_list`` and stay fp32.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy_unet.errors import ConfigError
from deploy_unet.precision.calibration import Calibration
from deploy_unet.precision.int8 import POOL_OPS, WEIGHT_AXIS, _non_float_tensor_names, quantize_int8, toposort

FALLBACKS = ("fp16", "fp32")
CONV_OPS = ("Conv", "ConvTranspose")
FP16_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Follow an excluded Conv into its fp16 island: elementwise activations TensorRT fuses into the conv.
ISLAND_TAIL_OPS = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "HardSigmoid",
                   "HardSwish", "Softplus", "Mish")
# Exact in fp16 given fp16 inputs (no rounding of their own), or not float math at all.
FP16_EXACT_OPS = frozenset({
    "Relu", "MaxPool", "GlobalMaxPool", "Concat", "Reshape", "Transpose", "Slice", "Split", "Squeeze",
    "Unsqueeze", "Flatten", "Identity", "Cast", "Shape", "Gather", "Pad", "Expand", "Tile", "Constant",
    "ConstantOfShape", "DepthToSpace", "SpaceToDepth", "Range", "Equal", "Where", "Not", "And", "Or",
})


@dataclass
class Group:
    """A node that can be kept in higher precision as a whole."""

    node: str
    op: str
    layer: str  # its module path from the weight name (``up.1.block.0``), else the node name

    @property
    def is_conv(self) -> bool:
        return self.op in CONV_OPS


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes a name (``OpType_i``): exclusions go by node name. Named graphs are untouched."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    produced = {o for n in model.graph.node for o in n.output}
    return produced - _non_float_tensor_names(model)


def groups_for(model: onnx.ModelProto, precision: str, target: str) -> list[Group]:
    """The groups of the fp32 ``model`` for ``precision``/``target``, in graph order."""
    from deploy_unet.precision.layerwise import layer_label

    inits = {t.name for t in model.graph.initializer}
    floats = _float_tensors(model)
    out = []
    for node in model.graph.node:
        op = node.op_type
        if precision == "int8" and target in ("tensorrt", "openvino"):
            ok = ((op in WEIGHT_AXIS and len(node.input) > 1 and node.input[1] in inits)
                  or op in POOL_OPS or (op == "Concat" and node.output[0] in floats))
        elif precision == "int8":
            # what ORT's QDQ quantizer quantizes (its registry) and a user may want to keep float
            ok = op in ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool",
                        "AveragePool", "GlobalAveragePool", "Resize", "Sigmoid", "Softmax", "LeakyRelu",
                        "InstanceNormalization", "Split", "Where") and node.output[0] in floats
        else:
            ok = op not in FP16_EXACT_OPS and bool(node.output) and node.output[0] in floats
        if ok:
            out.append(Group(node.name, op, layer_label(node)))
    return out


def resolve_exclusions(
    groups: Sequence[Group], patterns: Sequence[str] = (), op_types: Sequence[str] = ()
) -> dict[str, str]:
    """Node name -> why, for ``--exclude NODE_OR_REGEX`` (the node name, or its module path, matched
    exactly or as a full regex) and ``--exclude-op-type OP``. A pattern or op type matching nothing is an
    error listing what it could have matched."""
    found: dict[str, str] = {}
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--exclude {pattern!r} is not a valid regular expression ({exc}); "
                              "pass a node name or a regex such as 'up\\.1\\..*'") from None
        hits = [g for g in groups if pattern in (g.node, g.layer)
                or regex.fullmatch(g.node) or regex.fullmatch(g.layer)]
        if not hits:
            sample = ", ".join(f"{g.node} ({g.layer})" if g.layer != g.node else g.node for g in groups[:6])
            raise ConfigError(
                f"--exclude {pattern!r} matches no quantizable node (node names and module paths are matched "
                f"whole, as a regex); some of the {len(groups)}: {sample}; `deploy-unet inspect` lists them all"
            )
        for g in hits:
            found.setdefault(g.node, f"--exclude {pattern}")
    for op in op_types:
        hits = [g for g in groups if g.op == op]
        if not hits:
            ops = sorted({g.op for g in groups})
            raise ConfigError(f"--exclude-op-type {op!r} matches no quantizable node; op types here: {', '.join(ops)}")
        for g in hits:
            found.setdefault(g.node, f"--exclude-op-type {op}")
    return found


def build(
    model: onnx.ModelProto,
    calib: Calibration,
    precision: str,
    target: str,
    exclude: Collection[str] = (),
    fallback: str = "fp16",
) -> tuple[onnx.ModelProto, list[str]]:
    """The converted model with ``exclude`` kept in higher precision, and the fp16 range-kept nodes."""
    if precision == "fp16":
        from deploy_unet.precision.fp16 import convert_fp16

        return convert_fp16(model, calib, keep_fp32=exclude)

    quantized = quantize_int8(model, calib, target, exclude)
    if exclude and target == "tensorrt" and fallback == "fp16":
        by_name = {n.name: n for n in quantized.graph.node}
        compute = [n for n in exclude if n in by_name and by_name[n].op_type in FP16_COMPUTE_OPS]
        if compute:
            quantized = fp16_islands(quantized, compute)
    return quantized, []


def fp16_islands(model: onnx.ModelProto, nodes: Collection[str]) -> onnx.ModelProto:
    """Run ``nodes`` (and the activations right after each) in fp16 inside an fp32 graph, with Casts.

    Float inputs from outside an island are cast to fp16 (one Cast per tensor), initializers get fp16
    copies, and each island output read outside it (or a graph output) is cast back to fp32 under its
    original name, so the rest of the graph is unchanged. Returns a new, type-checked model.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    island: set[str] = set()
    for node in graph.node:
        if node.name not in nodes:
            continue
        island.add(node.name)
        tail = node
        while True:  # absorb a chain of single-consumer activations
            users = consumers.get(tail.output[0], [])
            if len(users) != 1 or users[0].op_type not in ISLAND_TAIL_OPS or tail.output[0] in outputs:
                break
            tail = users[0]
            island.add(tail.name)
    members = [n for n in graph.node if n.name in island]
    made_inside = {o for n in members for o in n.output}
    fp16_inits: dict[str, str] = {}
    casts_in: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in members:
        for i, name in enumerate(node.input):
            if not name or name in made_inside:
                continue
            if name in inits:
                t = inits[name]
                if t.data_type != TensorProto.FLOAT:
                    continue
                if name not in fp16_inits:
                    fp16_inits[name] = f"{name}_fp16"
                    graph.initializer.append(numpy_helper.from_array(
                        numpy_helper.to_array(t).astype(np.float16), fp16_inits[name]))
                node.input[i] = fp16_inits[name]
            else:
                if name not in casts_in:
                    casts_in[name] = f"{name}_cast_fp16"
                    new_nodes.append(helper.make_node("Cast", [name], [casts_in[name]], name=f"{name}_to_fp16",
                                                      to=TensorProto.FLOAT16))
                node.input[i] = casts_in[name]
    for node in members:
        for k, out in enumerate(node.output):
            inner = f"{out}_fp16"
            node.output[k] = inner
            for user in consumers.get(out, []):
                if user.name in island:
                    for i, name in enumerate(user.input):
                        if name == out:
                            user.input[i] = inner
            if out in outputs or any(u.name not in island for u in consumers.get(out, [])):
                new_nodes.append(helper.make_node("Cast", [inner], [out], name=f"{out}_to_fp32", to=TensorProto.FLOAT))
    graph.node.extend(new_nodes)
    toposort(graph)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def precision_summary(model: onnx.ModelProto, precision: str, target: str, kept: Collection[str]) -> dict:
    """How many conv layers (Conv/ConvTranspose) run in the low precision, of how many."""
    convs = [n for n in model.graph.node if n.op_type in CONV_OPS]
    if precision == "int8":
        producers = {o: n for n in model.graph.node for o in n.output}
        low = [n for n in convs if len(n.input) > 1 and n.input[1] in producers
               and producers[n.input[1]].op_type == "DequantizeLinear"]
    else:
        low = [n for n in convs if n.name not in kept]
    return {"conv_layers": len(convs), "conv_layers_low_precision": len(low)}
