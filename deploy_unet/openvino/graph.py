"""A lossless rewrite of Q/DQ ONNX files for OpenVINO: Concat of dequantized int8 tensors that share one scale
and zero point becomes Concat of the int8 tensors, then one DequantizeLinear.

Why: the TensorRT Q/DQ placement (``precision/int8``) quantizes both inputs of every UNet skip Concat with one
shared scale (``DQ(a) , DQ(b) -> Concat -> Q``). OpenVINO's low-precision transformations handle that pattern
with a requantization that costs accuracy: the shipped UNet's int8 file measured rel L2 0.086 against ONNX
Runtime's result on the same file (0.16 vs PyTorch, failing the int8 gate, with checkerboard artefacts), and
exposing the Concat outputs (so nothing fuses across them) brought it to 0.005. With the same scale on every
input, ``Concat(DQ(a), DQ(b)) == DQ(Concat(a, b))`` exactly (ONNX Runtime gives bit-identical logits), and
OpenVINO then runs the rewritten graph at 0.005 rel L2 vs ONNX Runtime, as fast. The file on disk is not
changed: the runner and ``convert-openvino`` rewrite in memory.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def fold_concat_dequantize(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns how many Concat nodes were rewritten."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def key(dq) -> tuple | None:
        params = []
        for name in dq.input[1:]:
            if name not in constants:
                return None
            value = constants[name]
            params.append((value.dtype.str, value.shape, value.tobytes()))
        axis = [(a.name, a.i) for a in dq.attribute]
        return (tuple(params), tuple(axis))

    nodes, rewritten = [], 0
    for node in graph.node:
        dqs = [producer.get(name) for name in node.input]
        if (node.op_type == "Concat" and len(dqs) > 1
                and all(d is not None and d.op_type == "DequantizeLinear" for d in dqs)):
            keys = {key(d) for d in dqs}
            scalar = all(constants[d.input[1]].size == 1 for d in dqs if d.input[1] in constants)
            if len(keys) == 1 and None not in keys and scalar:
                quantized = node.output[0] + "_int8"
                nodes.append(helper.make_node("Concat", [d.input[0] for d in dqs], [quantized],
                                              name=node.name + "_int8", axis=_axis(node)))
                nodes.append(helper.make_node("DequantizeLinear", [quantized, *dqs[0].input[1:]], [node.output[0]],
                                              name=node.name + "_dequantize"))
                rewritten += 1
                continue
        nodes.append(node)
    if rewritten:
        # DequantizeLinear nodes that fed only rewritten Concats are now dead: drop them.
        used = {name for n in nodes for name in n.input} | graph_outputs
        nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used]
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _axis(node) -> int:
    return next(a.i for a in node.attribute if a.name == "axis")
