"""What is inside an ONNX file: IO, metadata, opset, op histogram, Q/DQ and Cast counts, size."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy_unet.metadata import PAD_IN_GRAPH_KEY, load_onnx, read_props

_DTYPE_NAMES = {v: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v)).name for v in (1, 2, 3, 5, 6, 7, 9, 10, 11)}


def _dims(value: onnx.ValueInfoProto) -> list[Any]:
    shape = value.type.tensor_type.shape
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in shape.dim]


def _io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    elem = value.type.tensor_type.elem_type
    return {"name": value.name, "dtype": _DTYPE_NAMES.get(elem, onnx.TensorProto.DataType.Name(elem).lower()), "shape": _dims(value)}


def inspect_onnx(path: str | os.PathLike) -> dict[str, Any]:
    model = load_onnx(path)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    ops = Counter(node.op_type for node in graph.node)
    params = sum(int(np.prod(init.dims)) if init.dims else 1 for init in graph.initializer)
    props = read_props(model)
    weight_dtypes = Counter(onnx.TensorProto.DataType.Name(init.data_type).lower() for init in graph.initializer)
    return {
        "file": os.fspath(path),
        "file_size_bytes": Path(path).stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_io(v) for v in graph.input if v.name not in initializer_names],
        "outputs": [_io(v) for v in graph.output],
        "metadata": props,
        # Who pads H, W up to the divisor: the graph itself (export --pad-in-graph) or the caller.
        "padding": "in graph (reflect)" if props.get(PAD_IN_GRAPH_KEY, "none") not in ("", "none") else "caller",
        "num_nodes": len(graph.node),
        "op_histogram": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "cast": ops.get("Cast", 0),
        "parameters": params,
        "initializer_dtypes": dict(weight_dtypes),
    }
