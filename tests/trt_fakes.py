"""Shared helpers for the TensorRT-side tests: tiny hand-built ONNX files with deploy-unet metadata.

Graphs are built with onnx.helper in milliseconds, one per precision: fp32 Conv; fp16 (Cast in, fp16
weights, Cast out: the shape onnxconverter-common's keep_io_types produces); int8 (symmetric Q/DQ on the
activation and per-channel DQ weights: the explicit-quantization form TensorRT fuses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy_unet.metadata import ModelInfo, write_props


def make_onnx(
    path: Path,
    precision: str = "fp32",
    *,
    divisor: int = 16,
    in_channels: int = 3,
    num_classes: int = 2,
    export_shape=(1, 3, 64, 64),
    input_dims=("batch", 3, "height", "width"),
    metadata_precision: str | None = None,
    zero_point_type: int = TensorProto.INT8,
) -> Path:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((num_classes, in_channels, 3, 3)).astype(np.float32)
    out_dims = (input_dims[0], num_classes, input_dims[2], input_dims[3])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_dims))
    conv = dict(pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    inits, nodes = [], []
    if precision == "fp32":
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node("Conv", ["input", "w"], ["logits"], **conv))
    elif precision == "fp16":
        inits.append(numpy_helper.from_array(weight.astype(np.float16), "w"))
        nodes += [
            helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "w"], ["y16"], **conv),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
    elif precision == "int8":
        w_scale = (np.abs(weight).reshape(num_classes, -1).max(axis=1) / 127).astype(np.float32)
        w_q = np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        zp_dtype = helper.tensor_dtype_to_np_dtype(zero_point_type)
        inits += [
            numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, zp_dtype), "x_zp"),
            numpy_helper.from_array(w_q, "w_q"),
            numpy_helper.from_array(w_scale, "w_scale"),
            numpy_helper.from_array(np.zeros(num_classes, np.int8), "w_zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
            helper.make_node("Conv", ["xdq", "w"], ["logits"], **conv),
        ]
    else:
        raise ValueError(precision)
    graph = helper.make_graph(nodes, f"tiny_{precision}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    info = ModelInfo(
        arch="unet",
        divisor=divisor,
        in_channels=in_channels,
        num_classes=num_classes,
        net_config={"depth": int(np.log2(divisor))},
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        precision=metadata_precision or precision,
        export_shape=list(export_shape),
    )
    write_props(model, info.to_props())
    onnx.save(model, path)
    return path


# -- a recording stand-in for the ``tensorrt`` module ---------------------------------------------
# Only so build_engine's own Python (order of calls, profile, flags, timing-cache merge, atomic writes,
# manifest) runs on CPU. It proves nothing about TensorRT itself: the names it offers were checked
# against NVIDIA's bindings separately (see the report), and real builds run in test_tensorrt_gpu.py.

import enum  # noqa: E402
import types  # noqa: E402


def fake_tensorrt(version: str = "10.16.0.72", *, strongly_typed_value: int = 1, parse_errors=(), fail_build=False,
                  layer_table: str | None = None):
    """``layer_table``: the "Engine Layer Information" text the builder logs at VERBOSE after a build."""
    calls: list[tuple] = []

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    # 10.x: EXPLICIT_BATCH = 0 (deprecated), STRONGLY_TYPED = 1; 11.x: STRONGLY_TYPED = 0 (ignored).
    flag_members = {"STRONGLY_TYPED": strongly_typed_value}
    if strongly_typed_value != 0:
        flag_members["EXPLICIT_BATCH"] = 0
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flag_members)
    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"REFIT": 5, "VERSION_COMPATIBLE": 9})
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    HardwareCompatibilityLevel = enum.IntEnum(
        "HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2}
    )
    ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape, self.dtype = name, shape, DataType.FLOAT

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, node, name, op, desc):
            self._v = (node, name, op, desc)

        def node(self):
            return self._v[0]

        def node_name(self):
            return self._v[1]

        def node_operator(self):
            return self._v[2]

        def desc(self):
            return self._v[3]

        def code(self):
            return "UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, [ParserError(*e) for e in parse_errors]

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            if self.errors:
                return False
            model = onnx.load(path, load_external_data=False)
            for value, target in ((model.graph.input, self.network.inputs), (model.graph.output, self.network.outputs)):
                for v in value:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                    target.append(Tensor(v.name, tuple(dims)))
            return True

    class TimingCache:
        def __init__(self, data: bytes):
            self.entries = set(filter(None, data.decode().split("\n"))) if data else set()

        def combine(self, other, ignore_mismatch):
            calls.append(("combine", ignore_mismatch))
            self.entries |= other.entries
            return True

        def serialize(self):
            return "\n".join(sorted(self.entries)).encode()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def __init__(self):
            self.flags, self.cache = [], None
            self.builder_optimization_level = None
            self.hardware_compatibility_level = None
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            self.flags.append(flag.name)

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            level = config.hardware_compatibility_level
            calls.append(("build", config.flags, config.builder_optimization_level,
                          getattr(level, "name", level), config.profiling_verbosity.name))
            if fail_build:
                self.logger.log(Severity.ERROR, "out of tactics")
                return None
            if config.cache is not None:
                config.cache.entries.add(f"tactic-from-{id(self)}")
            self.logger.log(Severity.INFO, "Engine generation completed")
            if layer_table is not None:
                self.logger.log(Severity.VERBOSE, layer_table)
            return b"FAKE-PLAN"

    return types.SimpleNamespace(
        __version__=version, calls=calls, ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, DataType=DataType, BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType, HardwareCompatibilityLevel=HardwareCompatibilityLevel,
        ProfilingVerbosity=ProfilingVerbosity,
    )


def fake_tensorrt_rtx(version: str = "1.7.1.116", **options):
    """The same recording stand-in with TensorRT-RTX 1.7's version and enum values (STRONGLY_TYPED = 0, the
    only NetworkDefinitionCreationFlag member, as read from the tensorrt_rtx_bindings 1.7.1.116 wheel)."""
    return fake_tensorrt(version, strongly_typed_value=0, **options)
