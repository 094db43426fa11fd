"""fp16: a float16 graph with float32 IO, and an overflow policy driven by calibration data.

Policy: run the fp32 model on the calibration samples and record max |x| of every float tensor
(``minmax``). A node stays float32 when any of its float inputs or outputs reached more than
``FP16_LIMIT`` = 65504 / 4 (fp16's largest finite value with a 4x headroom for inputs brighter than
the calibration set); inputs are included because a fp32 value cast down to a fp16 consumer would
overflow just the same. Casts are inserted at the fp16/fp32 borders, graph inputs and outputs stay
float32 (``keep_io_types``), and ops fp16 does not serve well (Resize, TopK, ... onnxconverter-common's
default block list) stay float32 too. In a volume net (5-D input) the normalizations that reduce over the
whole volume (InstanceNormalization -- also what GroupNorm exports to --, GroupNormalization,
LayerNormalization) stay float32 as well: their mean and variance sum D*H*W values (nnU-Net's fp16 engines
made by hand give all-black masks there).

The conversion is onnxconverter-common's ``convert_float_to_float16``; NVIDIA's ModelOpt AutoCast does
the same job with the same inputs (keep_io_types, a node block list) and may replace it where ModelOpt
is installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection

import onnx

from deploy_unet.errors import MissingDependencyError
from deploy_unet.precision.calibration import Calibration

FP16_MAX = 65504.0
FP16_LIMIT = FP16_MAX / 4
# Normalizations whose statistics sum over every spatial position: kept float32 in volume nets.
VOLUME_NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")


def volume_norm_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the whole-volume normalization nodes of a model whose first input is 5-D (NCDHW)."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if not inputs or len(inputs[0].type.tensor_type.shape.dim) != 5:
        return []
    return [n.name for n in model.graph.node if n.op_type in VOLUME_NORM_OPS]


def overflowing_nodes(model: onnx.ModelProto, calib: Calibration, limit: float = FP16_LIMIT) -> list[str]:
    """Names of nodes touching a tensor whose calibrated max |x| exceeds ``limit``."""
    hot = {name for name in calib.ranges if calib.absmax(name) > limit}
    return [n.name for n in model.graph.node if hot.intersection(n.input) or hot.intersection(n.output)]


def convert_fp16(
    model: onnx.ModelProto, calib: Calibration, limit: float = FP16_LIMIT, keep_fp32: Collection[str] = ()
) -> tuple[onnx.ModelProto, list[str]]:
    """Return the fp16 model (IO float32) and the names of the nodes kept in fp32 for range.

    ``keep_fp32``: further node names to keep in fp32 (``--exclude``, or the auto-fallback search)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingDependencyError(
            "fp16 conversion needs onnxconverter-common; install it with `pip install onnxconverter-common`"
        ) from None
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        if not node.name:  # the block list goes by node name
            node.name = f"{node.op_type}_{i}"
    kept = overflowing_nodes(model, calib, limit)
    kept += [n for n in volume_norm_nodes(model) if n not in kept]
    with warnings.catch_warnings():
        # It warns once per tiny weight it rounds to fp16's smallest normal; that is the intended clamp.
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=kept + [n for n in keep_fp32 if n not in kept],
            max_finite_val=FP16_MAX,  # the default (1e4) would clip legitimate weights
            min_positive_val=1e-7,
        )
    _keep_fp32_io(converted, model)
    # The converter retypes every value_info to fp16, also those between kept fp32 nodes: re-infer them.
    del converted.graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(converted)
    onnx.checker.check_model(converted)
    return converted, kept


def _keep_fp32_io(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Graph outputs that were fp32 stay fp32. With the node producing an output in the block list,
    onnxconverter-common 1.16 declares that output fp16 and casts the fp32 result down to it (found when
    the auto-fallback kept the head in fp32): make that Cast an fp32 one again, or add one."""
    from onnx import TensorProto, helper

    was = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    producers = {o: n for n in converted.graph.node for o in n.output}
    for out in converted.graph.output:
        if was.get(out.name) != TensorProto.FLOAT or out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producers.get(out.name)
        to = next((a for a in node.attribute if a.name == "to"), None) if node is not None else None
        if node is not None and node.op_type == "Cast" and to is not None:
            to.i = TensorProto.FLOAT
        else:
            inner = f"{out.name}_fp16"
            for n in converted.graph.node:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            converted.graph.node.append(helper.make_node("Cast", [inner], [out.name], name=f"{out.name}_to_fp32",
                                                         to=TensorProto.FLOAT))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
