"""ONNX -> TensorRT engine: a pure-Python build plan, then the TensorRT calls.

The plan (:func:`plan_build`) is everything that can be decided and checked without TensorRT: the input
name, the optimization profile (every shape checked against the divisor before anything is built), the
precision the typed ONNX carries, and the builder options. :func:`build_engine` then runs TensorRT on it.

Networks are always strongly typed (see TENSORRT.md): precision comes from the ONNX file (fp16 casts,
INT8 Q/DQ), never from ``BuilderFlag.FP16/INT8``, which TensorRT 11 removed. On 10.x that takes
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11.x is strongly typed only and needs no flag.

The same code builds TensorRT-RTX engines (``engine_lib="tensorrt-rtx"``): its bindings carry the same names
(checked against the 1.7 wheel, tests/test_engine_names.py). It is strongly typed only, and NVIDIA's samples
still set STRONGLY_TYPED "to avoid a warning", so we do too; its engines are portable across the GPUs it
supports by default, so TensorRT's hardware-/version-compatibility options are refused for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from deploy_unet.describe import read_model_info
from deploy_unet.engine.device import (
    TENSORRT_RTX,
    EngineLibrary,
    GpuInfo,
    import_engine_library,
    require_cuda_device,
    resolve_engine_library,
    runs_on,
    trt_major,
)
from deploy_unet.engine.layers import HEADER as LAYER_TABLE_HEADER
from deploy_unet.engine.layers import describe_summary, parse_layer_information, summarize_layers
from deploy_unet.engine.manifest import (
    EngineManifest,
    manifest_path_for,
    model_section,
    write_manifest,
)
from deploy_unet.errors import ArtifactError, ConfigError, ShapeContractError
from deploy_unet.fileio import sha256_file, write_bytes_atomic
from deploy_unet.metadata import ModelInfo, load_onnx, read_props
from deploy_unet.shapes import check_dim, check_size_pad_in_graph, min_size_pad_in_graph

HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
PRECISIONS = ("fp32", "fp16", "int8")
_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*$")
# Volumes: BxCxDxHxW (5-D profiles; TensorRT's convolution, deconvolution and pooling are 2D or 3D).
_SHAPE5_RE = re.compile(r"^\s*(\d+)" + r"\s*[xX,]\s*(\d+)" * 4 + r"\s*$")

Shape = tuple[int, ...]  # (B, C, H, W), or (B, C, D, H, W) for volumes


# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One optimization profile for the (single) NCHW (or NCDHW) input."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class PrecisionEvidence:
    """What the graph says about its own precision; the graph wins over the metadata."""

    precision: str
    quantize_nodes: int
    dequantize_nodes: int
    fp16_initializers: int
    casts_to_fp16: int
    metadata_precision: str | None


@dataclass
class BuildPlan:
    onnx_path: str
    engine_path: str
    manifest_path: str
    input_name: str
    output_names: list[str]
    profiles: list[Profile]
    precision: str
    precision_evidence: PrecisionEvidence
    model: ModelInfo
    workspace_mib: int | None = None
    opt_level: int = 3
    hardware_compat: str = "none"
    version_compatible: bool = False
    refit: bool = False
    timing_cache: str | None = None
    engine_lib: str | None = None  # "tensorrt" | "tensorrt-rtx"; None: whichever is installed at build time
    warnings: list[str] = field(default_factory=list)

    def network_flag_names(self, trt_version: str, library: str = "tensorrt") -> list[str]:
        return network_flag_names(trt_major(trt_version), library)

    def to_dict(self) -> dict:
        return {
            "onnx": self.onnx_path,
            "engine": self.engine_path,
            "manifest": self.manifest_path,
            "input_name": self.input_name,
            "output_names": self.output_names,
            "profiles": [p.to_dict() for p in self.profiles],
            "precision": self.precision,
            "precision_evidence": asdict(self.precision_evidence),
            "divisor": self.model.divisor,
            "in_channels": self.model.in_channels,
            "arch": self.model.arch,
            "builder": self.builder_options(),
            "engine_lib": self.engine_lib or "auto",
            "network_flags": {
                "10": network_flag_names(10),
                "11": network_flag_names(11),
                "tensorrt-rtx": network_flag_names(1, "tensorrt-rtx"),
            },
            "warnings": self.warnings,
        }

    def builder_options(self) -> dict:
        return {
            "workspace_mib": self.workspace_mib,
            "opt_level": self.opt_level,
            "hardware_compat": self.hardware_compat,
            "version_compatible": self.version_compatible,
            "refit": self.refit,
            "timing_cache": self.timing_cache,
        }


def network_flag_names(major: int, library: str = "tensorrt") -> list[str]:
    """``NetworkDefinitionCreationFlag`` member NAMES to set: the integer values differ between 10 and 11."""
    if library == TENSORRT_RTX.name:
        return ["STRONGLY_TYPED"]  # the only mode; set explicitly as NVIDIA's RTX samples do (no warning)
    if major >= 11:
        return []  # strongly typed is the only mode; the flag is accepted and ignored, so leave it out
    if major == 10:
        return ["STRONGLY_TYPED"]
    raise ConfigError(f"TensorRT {major}.x is not supported; deploy-unet needs TensorRT 10.x or 11.x")


def network_flags(trt, library: str = "tensorrt") -> int:
    """The ``create_network`` bit mask, built from flag names looked up on this TensorRT module."""
    flags = 0
    for name in network_flag_names(trt_major(trt.__version__), library):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def parse_shape(text: str, option: str) -> Shape:
    match = _SHAPE_RE.match(text or "") or _SHAPE5_RE.match(text or "")
    if not match:
        raise ConfigError(f"{option} {text!r} is not a shape; write it as BxCxHxW, e.g. 1x3x256x256")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def read_precision(model: onnx.ModelProto, metadata_precision: str | None = None) -> PrecisionEvidence:
    """Precision from the graph: any Q/DQ -> int8; fp16 initializers or casts to fp16 -> fp16; else fp32."""
    nodes = list(model.graph.node)
    quantize = sum(n.op_type == "QuantizeLinear" for n in nodes)
    dequantize = sum(n.op_type == "DequantizeLinear" for n in nodes)
    fp16_inits = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    fp16_inits += sum(
        n.op_type == "Constant"
        and any(a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in nodes
    )
    casts = sum(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in nodes
    )
    if quantize or dequantize:
        precision = "int8"
    elif fp16_inits or casts:
        precision = "fp16"
    else:
        precision = "fp32"
    return PrecisionEvidence(precision, quantize, dequantize, fp16_inits, casts, metadata_precision)


def _qdq_warnings(model: onnx.ModelProto) -> list[str]:
    """Q/DQ that TensorRT may not take as INT8: it quantizes symmetrically (int8, zero point 0)."""
    inits = {t.name: t for t in model.graph.initializer}
    bad_type, nonzero, int32_dq = set(), set(), 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        if zp.data_type == onnx.TensorProto.INT32 and node.op_type == "DequantizeLinear":
            int32_dq += 1  # quantized biases, as ONNX Runtime writes them by default
        elif zp.data_type != onnx.TensorProto.INT8:
            bad_type.add(onnx.TensorProto.DataType.Name(zp.data_type))
        elif onnx.numpy_helper.to_array(zp).any():
            nonzero.add(node.name or node.output[0])
    warnings = []
    if bad_type:
        warnings.append(
            f"Q/DQ zero points of type {', '.join(sorted(bad_type))}: TensorRT builds INT8 from symmetric "
            "int8 Q/DQ; re-quantize with signed int8 (zero point 0)"
        )
    if nonzero:
        warnings.append(
            f"{len(nonzero)} Q/DQ node(s) have non-zero zero points (e.g. {sorted(nonzero)[0]}); "
            "TensorRT supports symmetric quantization only"
        )
    if int32_dq:
        warnings.append(
            f"{int32_dq} DequantizeLinear node(s) dequantize int32 tensors (quantized biases); TensorRT's "
            "explicit quantization expects float biases: quantize with biases left in float "
            "(ONNX Runtime: extra_options QuantizeBias=False)"
        )
    return warnings


def _input_dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    """The ONNX input's dims: ints where fixed, None where dynamic."""
    for value in model.graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    raise ArtifactError(f"the ONNX graph has no input named {name!r}")


def _default_opt(info: ModelInfo, dims: list[int | None], onnx_path: str) -> Shape:
    export = list(info.export_shape or [])
    rank = len(dims)
    if len(export) == rank - 2:
        export = [1, info.in_channels, *export]
    if len(export) == rank:
        shape = export
    else:
        shape = [1, info.in_channels] + [None] * (rank - 2)
    # Fixed dims in the graph win: a profile must match them exactly.
    shape = [fixed if fixed is not None else value for fixed, value in zip(dims, shape, strict=True)]
    if any(v is None for v in shape[2:]):
        if rank == 5:
            raise ConfigError(
                f"{onnx_path} records no export shape and its input is dynamic; pass --opt-shape BxCxDxHxW "
                f"(D, H, W multiples of {'x'.join(map(str, info.axis_divisors))})"
            )
        raise ConfigError(
            f"{onnx_path} records no export shape and its input is dynamic; pass --opt-shape BxCxHxW "
            f"(H and W multiples of {info.divisor})"
        )
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def default_profile(opt: Shape, divisor, dims: list[int | None]) -> Profile:
    """min = one divisor step (batch 1), opt = the export shape, max = twice the export H and W.

    ``divisor`` is the smallest H, W: the net's divisor, or the pad-in-graph minimum for such a file. Volumes
    (5-D): the same per axis, D, H and W, ``divisor`` then one int or one per spatial axis.

    The batch range stays at the export batch: a larger batch is a deliberate choice (``--max-shape``)
    because it multiplies the activation memory TensorRT reserves.
    """
    b, c, *spatial = opt
    steps = (divisor,) * len(spatial) if isinstance(divisor, int) else tuple(divisor)
    minimum = (1, c, *steps)
    maximum = (b, c, *(2 * v for v in spatial))
    minimum = tuple(f if f is not None else v for f, v in zip(dims, minimum, strict=True))
    maximum = tuple(f if f is not None else v for f, v in zip(dims, maximum, strict=True))
    return Profile(minimum, opt, maximum)  # type: ignore[arg-type]


def _valid_contract_profile(derived: Profile, contract, dims: list[int | None]) -> Profile:
    """The default profile for a net with a general contract: min = its smallest valid size, max = the
    nearest valid size at or above twice the export size (the divisor-based ones are not valid sizes)."""
    b, c = derived.max[:2]
    minimum = (1, c, contract.smallest, contract.smallest)
    maximum = (b, c, *(contract.nearest_valid_inputs(v)[1] for v in derived.max[2:]))
    minimum = tuple(f if f is not None else v for f, v in zip(dims, minimum, strict=True))
    maximum = tuple(f if f is not None else v for f, v in zip(dims, maximum, strict=True))
    return Profile(minimum, derived.opt, maximum)  # type: ignore[arg-type]


def check_profile(profile: Profile, info: ModelInfo, dims: list[int | None]) -> None:
    """Every profile shape obeys the divisor, the channel count and fixed dims; min <= opt <= max.

    A pad-in-graph file (``export --pad-in-graph``) takes any H, W from its minimum up, so only the
    ranges are checked for it (TensorRT still needs the profile to size its buffers).
    """
    reason = info.contract_reason
    contract = info.shape_contract
    rank = len(dims)
    for which, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        option = f"--{which}-shape {_fmt(shape)}"
        if len(shape) != rank:
            want = "BxCxDxHxW (a volume net: 5-D)" if rank == 5 else "BxCxHxW"
            raise ShapeContractError(f"{option}: {len(shape)} dims, but the ONNX input has {rank}; write it as {want}")
        if shape[0] < 1:
            raise ShapeContractError(f"{option}: batch {shape[0]} must be at least 1")
        if shape[1] != info.in_channels:
            raise ShapeContractError(
                f"{option}: {shape[1]} channels, but the model takes {info.in_channels}; use {info.in_channels} as C"
            )
        try:
            if rank == 5:  # volumes: each of D, H, W against its own divisor
                contract.validate(tuple(shape[2:]))
            elif info.pad_in_graph:
                check_size_pad_in_graph(shape[2:], info.divisor)
            else:
                for name, value in zip(("height", "width"), shape[2:], strict=True):
                    if contract.is_divisor_only:
                        check_dim(name, value, info.divisor, reason, pad_hint="")
                    else:  # valid-convolution nets: sizes divisor*k + remainder, from the metadata
                        contract.check_dim(name, value)
        except ShapeContractError as exc:
            raise ShapeContractError(f"{option}: {exc}") from None
        for axis, fixed in enumerate(dims):
            if fixed is not None and shape[axis] != fixed:
                raise ShapeContractError(
                    f"{option}: dim {axis} is {shape[axis]} but the ONNX input fixes it to {fixed}; "
                    "re-export with dynamic axes or use the fixed size"
                )
    names = ("batch", "channels", "height", "width") if rank == 4 else ("batch", "channels", "depth", "height", "width")
    for axis, name in enumerate(names):
        lo, mid, hi = profile.min[axis], profile.opt[axis], profile.max[axis]
        if not lo <= mid <= hi:
            raise ShapeContractError(
                f"profile {name} must satisfy min <= opt <= max, got {lo}, {mid}, {hi} "
                f"(min {_fmt(profile.min)}, opt {_fmt(profile.opt)}, max {_fmt(profile.max)})"
            )


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    """model.fp16.onnx -> model.fp16.engine (the precision is already in the ONNX name when it matters)."""
    return Path(onnx_path).with_suffix(".engine")


def plan_build(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    min_shape: str | Shape | None = None,
    opt_shape: str | Shape | None = None,
    max_shape: str | Shape | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_mib: int | None = None,
    opt_level: int = 3,
    hardware_compat: str = "none",
    version_compatible: bool = False,
    refit: bool = False,
    engine_lib: str | None = None,
) -> BuildPlan:
    """Decide and check everything about an engine build that does not need TensorRT."""
    onnx_path = os.fspath(onnx_path)
    if hardware_compat not in HARDWARE_COMPAT:
        raise ConfigError(
            f"--hardware-compat {hardware_compat!r} is not valid; choose one of: {', '.join(HARDWARE_COMPAT)}"
        )
    if not 0 <= int(opt_level) <= 5:
        raise ConfigError(f"--opt-level {opt_level} is out of range; TensorRT takes 0 to 5 (default 3)")
    if workspace_mib is not None and workspace_mib <= 0:
        raise ConfigError(f"--workspace {workspace_mib} MiB must be positive (or leave it out for TensorRT's default)")

    model = load_onnx(onnx_path, load_weights=False)
    info = read_model_info(model)
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise ArtifactError(f"{onnx_path} has {len(graph_inputs)} inputs {graph_inputs}; deploy-unet builds single-input nets")
    input_name = graph_inputs[0]
    dims = _input_dims(model, input_name)
    if len(dims) == 5 and info.spatial_dims != 3:
        raise ArtifactError(f"{onnx_path} input {input_name!r} has rank 5 but its metadata records 2 spatial dims; "
                            "re-export it with `deploy-unet export --spatial-dims 3 --size DxHxW`")
    if len(dims) == 4 and info.spatial_dims == 3:
        raise ArtifactError(f"{onnx_path} input {input_name!r} has rank 4 but its metadata records a volume net "
                            "(3 spatial dims); expected NCDHW (rank 5): re-export it")
    if len(dims) not in (4, 5):
        raise ArtifactError(f"{onnx_path} input {input_name!r} has rank {len(dims)}; expected NCHW (rank 4) "
                            "or NCDHW (rank 5)")

    shapes = {
        key: parse_shape(value, f"--{key}-shape") if isinstance(value, str) else (tuple(value) if value else None)
        for key, value in (("min", min_shape), ("opt", opt_shape), ("max", max_shape))
    }
    for key, shape in shapes.items():
        if shape is not None and len(shape) != len(dims):
            want = "BxCxDxHxW (a volume net: 5-D)" if len(dims) == 5 else "BxCxHxW"
            raise ShapeContractError(f"--{key}-shape {_fmt(shape)}: {len(shape)} dims, but the ONNX input has "
                                     f"{len(dims)}; write it as {want}")
    opt = shapes["opt"] or _default_opt(info, dims, onnx_path)
    smallest = min_size_pad_in_graph(info.divisor) if info.pad_in_graph else info.divisor
    if len(dims) == 5:
        smallest = info.axis_divisors  # volumes: one step per axis
    derived = default_profile(opt, smallest, dims)
    if not info.shape_contract.is_divisor_only:
        derived = _valid_contract_profile(derived, info.shape_contract, dims)
    profile = Profile(shapes["min"] or derived.min, opt, shapes["max"] or derived.max)
    check_profile(profile, info, dims)

    evidence = read_precision(model, info.precision if "precision" in read_props(model) else None)
    warnings = _qdq_warnings(model) if evidence.precision == "int8" else []
    if evidence.metadata_precision and evidence.metadata_precision != evidence.precision:
        warnings.append(
            f"metadata says precision {evidence.metadata_precision!r} but the graph is {evidence.precision} "
            f"({evidence.quantize_nodes} QuantizeLinear, {evidence.fp16_initializers} fp16 initializers, "
            f"{evidence.casts_to_fp16} casts to fp16); building what the graph says"
        )

    if engine_lib not in (None, "", "auto"):
        library = resolve_engine_library(engine_lib)  # an unknown name is a ConfigError here
        check_library_options(library, hardware_compat, version_compatible)
        if library is TENSORRT_RTX and evidence.precision == "int8":
            warnings.append(RTX_INT8_WARNING)
    engine_path = Path(output) if output else default_engine_path(onnx_path)
    if engine_path.resolve() == Path(onnx_path).resolve():
        raise ConfigError(f"output {engine_path} would overwrite the ONNX input; pass -o FILE.engine")
    return BuildPlan(
        onnx_path=onnx_path,
        engine_path=os.fspath(engine_path),
        manifest_path=os.fspath(manifest_path_for(engine_path)),
        input_name=input_name,
        output_names=[o.name for o in model.graph.output],
        profiles=[profile],
        precision=evidence.precision,
        precision_evidence=evidence,
        model=info,
        workspace_mib=workspace_mib,
        opt_level=int(opt_level),
        hardware_compat=hardware_compat,
        version_compatible=version_compatible,
        refit=refit,
        timing_cache=os.fspath(timing_cache) if timing_cache else None,
        engine_lib=None if engine_lib in (None, "", "auto") else engine_lib,
        warnings=warnings,
    )


RTX_INT8_WARNING = (
    "TensorRT-RTX lists INT8 only as weight-only GEMM quantization: an int8 Q/DQ convolution net builds, but "
    "its Q/DQ may run as separate layers around higher-precision convolutions (no int8 speedup); compare with fp16"
)


def check_library_options(library: EngineLibrary, hardware_compat: str, version_compatible: bool) -> None:
    """TensorRT-RTX engines are portable across the GPUs it supports by default (JIT specialisation at load);
    TensorRT's compatibility switches are not used with it."""
    if library is not TENSORRT_RTX:
        return
    if hardware_compat != "none":
        raise ConfigError(
            f"--hardware-compat {hardware_compat} is a TensorRT option; TensorRT-RTX engines already run on every "
            f"GPU it supports (compute capability {' '.join(library.runs_on or ())}); drop the option"
        )
    if version_compatible:
        raise ConfigError("--version-compatible is a TensorRT option, not used with TensorRT-RTX; drop it or use "
                          "--engine-lib tensorrt")


def engine_runs_on(library: EngineLibrary, gpu: GpuInfo, hardware_compat: str) -> list[str]:
    """Compute capabilities the engine runs on, for the manifest: the library's list (TensorRT-RTX), or what
    TensorRT's hardware compatibility gives (the build GPU's capability; ``>=8.0`` for ampere+)."""
    if library.runs_on is not None:
        return list(library.runs_on)
    if hardware_compat == "ampere+":
        return [">=8.0"]
    return [gpu.compute_capability]


def runnable_here(library: EngineLibrary, gpu: GpuInfo) -> bool:
    """Whether an engine of this library can run on ``gpu`` at all (TensorRT: any GPU it built on)."""
    return library.runs_on is None or runs_on(library.runs_on, gpu.compute_capability)


# -- timing cache ----------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``path + '.lock'`` (POSIX flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds sharing a cache there are not serialized
        yield
        return
    lock_path = Path(os.fspath(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_timing_cache(path: str | os.PathLike) -> bytes:
    with file_lock(path):
        return Path(path).read_bytes() if Path(path).is_file() else b""


def save_timing_cache(config, path: str | os.PathLike, log: Callable[[str], None]) -> None:
    """Merge this build's cache into whatever is in the file NOW (another build may have written it
    while we built), then replace the file atomically, all under the lock."""
    ours = config.get_timing_cache()
    with file_lock(path):
        current = Path(path).read_bytes() if Path(path).is_file() else b""
        if current:
            theirs = config.create_timing_cache(current)
            if theirs is None or not ours.combine(theirs, False):
                log(f"timing cache {path} could not be merged (other TensorRT version or GPU?); replacing it")
        write_bytes_atomic(path, bytes(memoryview(ours.serialize())))


# -- build -----------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    engine_path: str
    manifest_path: str
    seconds: float
    manifest: EngineManifest
    layer_information: str = ""  # the builder's "Engine Layer Information" table, verbatim ("" if none)


def _enum_name(value) -> str:
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value).rsplit(".", 1)[-1]


def _make_logger(trt, messages: list[str], echo: Callable[[str], None] | None, layer_tables: list[str] | None = None):
    """A TensorRT logger that keeps warnings and errors so a failed build can say why, and the builder's
    layer table (a VERBOSE message) in ``layer_tables``."""
    severity = trt.ILogger.Severity
    keep = {_enum_name(severity.INTERNAL_ERROR), _enum_name(severity.ERROR), _enum_name(severity.WARNING)}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level, msg):
            name = _enum_name(level)
            if layer_tables is not None and LAYER_TABLE_HEADER in msg[:200]:
                layer_tables.append(msg)
            if name in keep:
                messages.append(f"[{name}] {msg}")
                if echo is not None:
                    echo(f"TensorRT [{name}] {msg}")

    return _Logger()


def parser_errors(parser) -> list[str]:
    """Every ONNX parser error with the node it is about."""
    errors = []
    for index in range(parser.num_errors):
        err = parser.get_error(index)
        where = f"node {err.node()}"
        if err.node_name():
            where += f" {err.node_name()!r}"
        if err.node_operator():
            where += f" ({err.node_operator()})"
        errors.append(f"{where}: {err.desc()} [{err.code()}]")
    return errors


def _tensor_entry(tensor, profile: Profile | None = None) -> dict:
    entry = {"name": tensor.name, "dtype": _enum_name(tensor.dtype), "shape": list(tensor.shape)}
    if profile is not None:
        entry.update(profile.to_dict())
    return entry


def build_engine(
    plan: BuildPlan | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    device: int = 0,
    log: Callable[[str], None] = lambda message: None,
    verbose: bool = False,
    layer_info_path: str | os.PathLike | None = None,
    **plan_options: Any,
) -> BuildResult:
    """Build and atomically write the engine and its manifest. Checks for a CUDA device first.

    ``plan``: a ``BuildPlan`` (``plan_build``), or the path of a deploy-unet ONNX, planned here with ``output``
    and ``plan_options`` (``plan_build``'s: ``min_shape``, ``opt_shape``, ``max_shape``, ``timing_cache``,
    ``workspace_mib``, ``opt_level``, ``hardware_compat``, ``version_compatible``, ``refit``, ``engine_lib``).
    The builder's layer table (which precision each fused layer runs in) is summarized in the manifest and, with
    ``layer_info_path``, written there verbatim; it comes from the build log, so it needs no GPU the engine runs
    on."""
    if not isinstance(plan, BuildPlan):
        plan = plan_build(plan, output, **plan_options)
    elif output is not None or plan_options:
        raise ConfigError("build_engine got a BuildPlan and plan options; put the options into plan_build instead")
    gpu: GpuInfo = require_cuda_device(device, plan.engine_lib)
    library, trt = import_engine_library(plan.engine_lib)
    check_library_options(library, plan.hardware_compat, plan.version_compatible)
    if library is TENSORRT_RTX and plan.precision == "int8" and RTX_INT8_WARNING not in plan.warnings:
        log(f"warning: {RTX_INT8_WARNING}")  # the library was chosen here (auto), after the plan
    messages: list[str] = []
    layer_tables: list[str] = []
    logger = _make_logger(trt, messages, log if verbose else None, layer_tables)
    started = time.perf_counter()

    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, library.name))
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {plan.onnx_path}")
    if not parser.parse_from_file(plan.onnx_path):
        errors = parser_errors(parser)
        raise ArtifactError(
            f"{library.title} {trt.__version__} cannot parse {plan.onnx_path}: {len(errors)} error(s): " + "; ".join(errors)
        )
    if network.num_inputs != 1 or network.get_input(0).name != plan.input_name:
        found = [network.get_input(i).name for i in range(network.num_inputs)]
        raise ArtifactError(f"TensorRT sees inputs {found}; the plan expects [{plan.input_name!r}]")

    config = builder.create_builder_config()
    if plan.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    config.builder_optimization_level = plan.opt_level
    if library is not TENSORRT_RTX:
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPAT[plan.hardware_compat], None)
        if level is None:  # SAME_COMPUTE_CAPABILITY is newer than TensorRT 10.3 (JetPack 6)
            raise ConfigError(
                f"--hardware-compat {plan.hardware_compat} needs a newer TensorRT: {trt.__version__} has no "
                f"HardwareCompatibilityLevel.{HARDWARE_COMPAT[plan.hardware_compat]}; use none or ampere+"
            )
        config.hardware_compatibility_level = level
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    # Layer names and per-layer timings (--layer-profile) need detailed profiling verbosity.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for profile in plan.profiles:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(plan.input_name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(trt_profile)

    if plan.timing_cache:
        cache = config.create_timing_cache(read_timing_cache(plan.timing_cache))
        if cache is None or not config.set_timing_cache(cache, False):
            log(f"timing cache {plan.timing_cache} does not match this TensorRT/GPU; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)

    log(f"building a strongly typed {plan.precision} engine with {library.title} {trt.__version__} on {gpu.name}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        last = next((m for m in reversed(messages) if "ERROR" in m), "see the TensorRT log (--verbose)")
        raise ArtifactError(f"{library.title} could not build an engine from {plan.onnx_path}: {last}")
    seconds = time.perf_counter() - started
    write_bytes_atomic(plan.engine_path, bytes(memoryview(serialized)))
    if plan.timing_cache:
        save_timing_cache(config, plan.timing_cache, log)
    layer_text = layer_tables[-1] if layer_tables else ""
    layers = summarize_layers(parse_layer_information(layer_text)) if layer_text else None
    if layers:
        log(f"engine: {describe_summary(layers)}")
    if layer_info_path:
        if layer_text:
            write_bytes_atomic(layer_info_path, layer_text.encode())
        else:
            log(f"warning: {library.title} {trt.__version__} logged no layer table; {layer_info_path} not written")

    inputs = [_tensor_entry(network.get_input(0), plan.profiles[0])]
    outputs = [_tensor_entry(network.get_output(i)) for i in range(network.num_outputs)]
    model = load_onnx(plan.onnx_path, load_weights=False)
    manifest = EngineManifest(
        tensorrt_version=trt.__version__,
        library=library.name,
        runs_on=engine_runs_on(library, gpu, plan.hardware_compat),
        gpu=gpu.to_dict(),
        precision=plan.precision,
        profiles=[p.to_dict() for p in plan.profiles],
        inputs=inputs,
        outputs=outputs,
        onnx={
            "path": os.path.abspath(plan.onnx_path),
            "sha256": sha256_file(plan.onnx_path),
            "metadata": read_props(model),
        },
        model=model_section(plan.model),
        builder={
            **plan.builder_options(),
            "network_flags": network_flag_names(trt_major(trt.__version__), library.name),
            "strongly_typed": True,
        },
        build={"seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        engine_sha256=sha256_file(plan.engine_path),
        layers=layers,
    )
    write_manifest(manifest, plan.manifest_path)
    return BuildResult(plan.engine_path, plan.manifest_path, seconds, manifest, layer_text)
