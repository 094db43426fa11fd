"""An ONNX file deploy-unet did not export: what its graph says, what running it shows, what the user states.

Every command reads a model's ``ModelInfo`` through ``read_model_info`` (here): the deploy-unet metadata the
file carries (``metadata.py``, the layer below, which never imports this module), or, for a file without it
(exported by plain ``torch.onnx.export``, tf2onnx, MMDeploy, PaddleSeg, ...), its description, made here in
one place:

- **read from the graph**: input and output names, layout (NCHW, or NHWC as tf2onnx writes it), channels,
  classes when static, which axes are dynamic, the export shape when static;
- **found by running it** in ONNX Runtime (CPU): the output stride (logits at 1/4 of the input, SegFormer)
  and the divisor: the input is run at ``B + 2**j`` (B = 256, j = 0..7), the first size that runs and gives
  an output of the expected size has the divisor ``2**j`` (the per-axis probing of ``export.check_shapes``);
  then only H, only W and the batch are varied, so an axis the graph fixed is named;
- **stated by the user**, as it cannot be known from a graph: mean, std, value scale (the input range the
  net was trained on: 1 for [0, 1], 255 for [0, 255]) and class names, with ``--mean --std --scale
  --class-names`` (and ``--divisor``) on any command, or once with ``deploy-unet describe``, which writes them
  into the file's metadata (``describe_file``) so no option is needed afterwards.

Where a value had to be assumed (no normalization, scale 1, class ids only), one ``note:`` line says so.

An NHWC input is refused by the commands in one line naming the layout; ``describe`` accepts it and writes a
file whose graph takes NCHW (a Transpose in front, and one after an NHWC output), its source layout recorded
(``source_layout``), so every runner, pre/post-processing, the quantizer and the C++ side see NCHW.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deploy_unet.errors import ArtifactError, ConfigError, ShapeContractError, first_line
from deploy_unet.fileio import atomic_path
from deploy_unet.metadata import ModelInfo, has_deploy_unet_metadata, load_onnx, read_props, write_props

# metadata keys of a described file (in ModelInfo.extra; every value a string)
DESCRIBED_BY_KEY = "described_by"  # "deploy-unet describe" / "deploy-unet (options)"
SOURCE_LAYOUT_KEY = "source_layout"  # the foreign file's input layout: NCHW | NHWC
OUTPUT_STRIDE_KEY = "output_stride"  # input H / logits H (1: full size; 4: SegFormer)
VALUE_SCALE_KEY = "value_scale"  # the net takes pixels in [0, value_scale] before mean/std
UPSAMPLE_KEY = "upsample"  # how low-resolution logits are brought to the input size: "bilinear" (half-pixel)
PROBE_BASE = 256  # the size probes start from (a multiple of every divisor up to 256)
MAX_DIVISOR_LOG2 = 7  # divisors tried: 1, 2, 4, ..., 128; none of them runs: 256


@dataclass(frozen=True)
class Given:
    """What the user states about a model (options); None: not stated."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    class_names: tuple[str, ...] | None = None
    divisor: int | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.mean, self.std, self.scale, self.class_names, self.divisor))


_GIVEN: contextvars.ContextVar[Given | None] = contextvars.ContextVar("deploy_unet_given", default=None)
_NOTE: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("deploy_unet_note", default=None)
_CACHE: dict[tuple, ModelInfo] = {}


def current_given() -> Given:
    """What the user stated for this command (``given``), or nothing."""
    return _GIVEN.get() or Given()


@contextlib.contextmanager
def given(stated: Given, note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within this block, undescribed files are described with ``stated`` (the CLI's ``--mean --std ...``)
    and ``note`` receives the one line per file saying what was found and assumed."""
    tokens = (_GIVEN.set(stated), _NOTE.set(note))
    try:
        yield
    finally:
        _GIVEN.reset(tokens[0])
        _NOTE.reset(tokens[1])


@dataclass
class GraphFacts:
    """What the graph itself says (no run)."""

    input_name: str
    output_names: list[str]
    input_dims: list[int | str]  # ints for static dims, the symbol (or "?") for dynamic ones
    output_dims: list[list[int | str]]
    layout: str  # NCHW | NHWC
    layout_reason: str
    in_channels: int
    output_dtype: int

    @property
    def spatial(self) -> tuple[int | str, int | str]:
        d = self.input_dims
        return (d[2], d[3]) if self.layout == "NCHW" else (d[1], d[2])

    @property
    def dynamic_axes(self) -> list[str]:
        d = self.input_dims
        names = ["batch", "height", "width"]
        idx = [0, 2, 3] if self.layout == "NCHW" else [0, 1, 2]
        return [n for n, i in zip(names, idx) if not isinstance(d[i], int)]


@dataclass
class Description:
    info: ModelInfo
    facts: GraphFacts
    found: list[str] = field(default_factory=list)  # what running it showed
    assumed: list[str] = field(default_factory=list)  # what nobody stated


def _dim(d, unknown: str | None = "?") -> int | str | None:
    """One dim of a value's shape: its size, else its symbol, else ``unknown``."""
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or unknown)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [_dim(d) for d in value.type.tensor_type.shape.dim]


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that writes or reads tensor ``old`` writes or reads ``new`` instead."""
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def graph_facts(model: onnx.ModelProto, source: str = "model") -> GraphFacts:
    """Names, layout, channels and dims of a single-input image model, or one line saying why it is not one."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ArtifactError(f"{source} has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); deploy-unet "
                            "takes single-input image models")
    if not graph.output:
        raise ArtifactError(f"{source} has no outputs")
    inp = inputs[0]
    dims = _dims(inp)
    if len(dims) != 4:
        raise ArtifactError(f"{source} input {inp.name!r} has rank {len(dims)} ({dims}); deploy-unet takes 2-D "
                            "images as a rank-4 NCHW (or NHWC) tensor")
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()
        raise ArtifactError(f"{source} input {inp.name!r} is {kind}; deploy-unet feeds float32 (export the net "
                            "with a float input)")
    c1, c3 = dims[1], dims[3]
    small = lambda v: isinstance(v, int) and v <= 4  # noqa: E731 - a channel count, not a spatial size
    if small(c1) and not small(c3):
        layout, why, channels = "NCHW", f"dim 1 is {c1}", int(c1)
    elif small(c3) and not small(c1):
        layout, why, channels = "NHWC", f"dim 3 is {c3}, dim 1 {c1}", int(c3)
    elif isinstance(c1, int) and not isinstance(c3, int):
        layout, why, channels = "NCHW", f"dim 1 is {c1}, dim 3 dynamic", int(c1)
    elif isinstance(c3, int) and not isinstance(c1, int):
        layout, why, channels = "NHWC", f"dim 3 is {c3}, dim 1 dynamic", int(c3)
    elif isinstance(c1, int):
        layout, why, channels = "NCHW", f"dims 1 and 3 both static ({c1}, {c3}): dim 1 taken as channels", int(c1)
    else:
        raise ArtifactError(f"{source} input {inp.name!r} has no static channel dim ({dims}); re-export it with "
                            "the channel count fixed")
    outs = [_dims(o) for o in graph.output]
    return GraphFacts(
        input_name=inp.name, output_names=[o.name for o in graph.output], input_dims=dims, output_dims=outs,
        layout=layout, layout_reason=why, in_channels=channels,
        output_dtype=graph.output[0].type.tensor_type.elem_type)


class LayoutError(ArtifactError):
    """An input layout the commands do not take as it is (NHWC): ``describe`` converts it."""


def refuse_nhwc(facts: GraphFacts, source: str) -> None:
    if facts.layout == "NHWC":
        raise LayoutError(
            f"{source} takes NHWC input ({facts.input_name} {'x'.join(map(str, facts.input_dims))}, channels last, "
            f"as tf2onnx writes it: {facts.layout_reason}); run `deploy-unet describe {source} -o DESCRIBED.onnx`, "
            "which puts a Transpose in front so the graph takes NCHW, and use that file")


# --- running it -----------------------------------------------------------------------------------------


class _Probe:
    """ONNX Runtime on CPU, run at chosen input shapes (NCHW, the file's own input)."""

    def __init__(self, model: onnx.ModelProto, path: str | None, facts: GraphFacts, source: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # a size that fails is an answer here, not an error to print
        options.intra_op_num_threads = min(4, os.cpu_count() or 1)
        try:
            what = path if path and _weights_external(model) else model.SerializeToString()
            self.session = ort.InferenceSession(what, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime cannot load {source}: {first_line(exc)}") from None
        self.facts, self.source = facts, source
        self.runs: dict[tuple[int, ...], tuple | str] = {}

    def run(self, shape: tuple[int, int, int, int]) -> tuple | str:
        """The first output's shape, or the first line of ORT's error."""
        if shape not in self.runs:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            try:
                out = self.session.run([self.facts.output_names[0]], {self.facts.input_name: x})[0]
                self.runs[shape] = tuple(out.shape)
            except Exception as exc:
                self.runs[shape] = first_line(exc)
        return self.runs[shape]


def _weights_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _out_ok(out: tuple | str, h: int, w: int, stride: int) -> bool:
    return isinstance(out, tuple) and len(out) == 4 and out[2] * stride == h and out[3] * stride == w


def find_contract(probe: _Probe, facts: GraphFacts, divisor: int | None) -> tuple[int, int, int, int, list[str]]:
    """(divisor, output stride, classes, batch used, what was found) by running the file."""
    found: list[str] = []
    c = facts.in_channels
    batch = facts.input_dims[0] if isinstance(facts.input_dims[0], int) else 1
    sh, sw = facts.spatial
    static = isinstance(sh, int) and isinstance(sw, int)
    base_h, base_w = (sh, sw) if static else (PROBE_BASE, PROBE_BASE)
    if isinstance(sh, int) != isinstance(sw, int):
        raise ArtifactError(f"{probe.source} has a static {'height' if isinstance(sh, int) else 'width'} "
                            f"({sh}x{sw}); deploy-unet needs H and W both dynamic or both static")
    out = probe.run((batch, c, base_h, base_w))
    if isinstance(out, str):
        raise ArtifactError(f"{probe.source} does not run in ONNX Runtime at {batch}x{c}x{base_h}x{base_w}: {out}")
    if len(out) != 4:
        raise ArtifactError(
            f"{probe.source} output {facts.output_names[0]!r} has shape {out} for a {base_h}x{base_w} input; "
            "deploy-unet needs N x C x H x W logits (a graph that ends in ArgMax or gives N x H x W class ids "
            "cannot be quantized against logits: export it without the argmax)")
    if out[2] == base_h and out[3] == base_w:
        stride = 1
    elif out[2] and base_h % out[2] == 0 and out[2] * (base_h // out[2]) == base_h and out[3] * (base_h // out[2]) == base_w:
        stride = base_h // out[2]
        found.append(f"logits at 1/{stride} of the input ({out[2]}x{out[3]} for {base_h}x{base_w}): upsampled "
                     "bilinearly (half-pixel, align_corners=False) where masks are made")
    else:
        raise ArtifactError(f"{probe.source} gives {out[2]}x{out[3]} logits for a {base_h}x{base_w} input, neither "
                            "the input size nor an integer fraction of it; deploy-unet cannot map them to pixels")
    classes = int(out[1])
    if static:
        if divisor is None:
            divisor = _pow2_dividing(base_h, base_w)
            found.append(f"input is static {base_h}x{base_w}: divisor taken as {divisor} (the largest power of 2 "
                         "dividing both, up to 32); images are resized to it (predict --resize)")
        return divisor, stride, classes, batch, found
    if divisor is None:
        divisor = 2 ** (MAX_DIVISOR_LOG2 + 1)
        for j in range(MAX_DIVISOR_LOG2 + 1):
            size = PROBE_BASE + 2 ** j
            if size % stride == 0 and _out_ok(probe.run((batch, c, size, size)), size, size, stride):
                divisor = 2 ** j
                break
        divisor = max(divisor, stride)
        found.append(f"divisor {divisor} (ONNX Runtime runs it at {PROBE_BASE + divisor}, not at sizes off "
                     f"{divisor})" if divisor > 1 else "divisor 1 (runs at any size)")
    # One axis at a time, as export's parity check does: an axis the graph fixed is named.
    for axis, shape in (("height", (batch, c, base_h + divisor, base_w)), ("width", (batch, c, base_h, base_w + divisor))):
        got = probe.run(shape)
        if not _out_ok(got, shape[2], shape[3], stride):
            problem = got if isinstance(got, str) else f"the output is {'x'.join(map(str, got))}"
            raise ArtifactError(
                f"{probe.source} runs at {base_h}x{base_w} but not with only the {axis} changed to "
                f"{shape[2] if axis == 'height' else shape[3]} ({problem}); the graph fixes its {axis} although its "
                f"input says dynamic: pass --divisor if the divisor was found wrong ({divisor}), else re-export it "
                "with static sizes")
    if "batch" in facts.dynamic_axes:
        got = probe.run((2, c, base_h, base_w))
        if isinstance(got, str) or got[0] != 2:
            found.append("the batch axis says dynamic but only batch 1 runs (" +
                         (got if isinstance(got, str) else f"output batch {got[0]}") + "): run it at batch 1")
    return divisor, stride, classes, batch, found


def _pow2_dividing(h: int, w: int, limit: int = 32) -> int:
    d = 1
    while d < limit and h % (2 * d) == 0 and w % (2 * d) == 0:
        d *= 2
    return d


# --- the one function -------------------------------------------------------------------------------------


def describe_model(model: onnx.ModelProto, source: str = "model", stated: Given | None = None,
                   path: str | None = None, allow_nhwc: bool = False) -> Description:
    """The full ``ModelInfo`` of a file without deploy-unet metadata: graph facts, a probe run, ``stated``."""
    stated = stated if stated is not None else current_given()
    facts = graph_facts(model, source)
    if not allow_nhwc:
        refuse_nhwc(facts, source)
    if facts.output_dtype not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        kind = onnx.TensorProto.DataType.Name(facts.output_dtype).lower()
        raise ArtifactError(f"{source} output {facts.output_names[0]!r} is {kind}; deploy-unet needs float logits "
                            "(a graph ending in ArgMax gives class ids: export it without the argmax)")
    probe = _Probe(model, path, facts, source)
    divisor, stride, classes, batch, found = find_contract(probe, facts, stated.divisor)
    assumed: list[str] = []
    c = facts.in_channels
    for name, values in (("mean", stated.mean), ("std", stated.std)):
        if values is not None and len(values) not in (1, c):
            raise ConfigError(f"--{name} has {len(values)} values for {c} input channels; give 1 or {c}")
    if stated.mean is None and stated.std is None:
        assumed.append("no normalization (pass --mean/--std the net was trained with)")
    if stated.scale is None:
        assumed.append("pixel values in [0, 1] (--scale 255 if it takes 0..255)")
    if stated.class_names is None:
        assumed.append("class ids only (--class-names)")
    elif len(stated.class_names) != classes:
        raise ConfigError(f"--class-names gives {len(stated.class_names)} names, but the model has {classes} classes")
    sh, sw = facts.spatial
    static = isinstance(sh, int) and isinstance(sw, int)
    extra = {
        "exporter": f"foreign ({(model.producer_name + ' ' + model.producer_version).strip() or 'unknown producer'})",
        "opset": str(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "")),
        "dynamic": ",".join(facts.dynamic_axes) or "none",
        DESCRIBED_BY_KEY: "deploy-unet (options)",
        SOURCE_LAYOUT_KEY: facts.layout,
        OUTPUT_STRIDE_KEY: str(stride),
        VALUE_SCALE_KEY: repr(float(stated.scale)) if stated.scale is not None else "1.0",
    }
    if stride > 1:
        extra[UPSAMPLE_KEY] = "bilinear"
    info = ModelInfo(
        arch=Path(source).stem if source else "onnx",
        divisor=int(divisor),
        in_channels=c,
        num_classes=classes,
        input_names=[facts.input_name],
        output_names=list(facts.output_names[:1]),
        mean=list(stated.mean) if stated.mean is not None else [],
        std=list(stated.std) if stated.std is not None else [],
        export_shape=[batch, c, int(sh), int(sw)] if static else [],
        class_names=list(stated.class_names) if stated.class_names is not None else [],
        extra=extra,
    )
    if stated.mean is not None and stated.std is None:
        info.std = [1.0] * len(stated.mean)
    if stated.std is not None and stated.mean is None:
        info.mean = [0.0] * len(stated.std)
    if len(facts.output_names) > 1:
        found.append(f"{len(facts.output_names)} outputs: the first, {facts.output_names[0]!r}, taken as the logits")
    return Description(info, facts, found, assumed)


def read_model_info(model_or_path: onnx.ModelProto | str | os.PathLike, source: str | None = None) -> ModelInfo:
    """The model's ModelInfo: its deploy-unet metadata, or (a file exported elsewhere) what ``info_for`` reads
    from its graph, finds by running it and is told by the user's options."""
    if isinstance(model_or_path, onnx.ModelProto):
        model, path = model_or_path, None
    else:
        model, path = load_onnx(model_or_path, load_weights=False), os.fspath(model_or_path)
    source = source or path or "model"
    props = read_props(model)
    if not has_deploy_unet_metadata(props):
        return info_for(model, source, path=path)
    return ModelInfo.from_props(props, source=source)


def info_for(model: onnx.ModelProto, source: str = "model", path: str | None = None) -> ModelInfo:
    """``read_model_info`` for a file without deploy-unet metadata: described once per file and
    statement (cached), one ``note:`` line to the caller's note sink (the CLI prints it)."""
    stated = current_given()
    key = (source, hashlib.sha1(model.graph.SerializeToString()).hexdigest(), stated)
    if key not in _CACHE:
        described = describe_model(model, source, stated, path=path)
        _CACHE[key] = described.info
        note = _NOTE.get()
        if note is not None:
            note(summary_line(described, source))
    info = _CACHE[key]
    return ModelInfo.from_props(info.to_props(), source=source)  # a copy: callers may change theirs


def summary_line(described: Description, source: str) -> str:
    info = described.info
    parts = [f"{source} has no deploy-unet metadata: read from the graph {info.in_channels} channels "
             f"({described.facts.layout}), {info.num_classes} classes, input {info.input_names[0]!r}, output "
             f"{info.output_names[0]!r}"] + described.found
    if described.assumed:
        parts.append("assumed " + "; ".join(described.assumed))
    return "; ".join(parts)


# --- deploy-unet describe ---------------------------------------------------------------------------------


@dataclass
class DescribeResult:
    path: Path
    info: ModelInfo
    found: list[str]
    assumed: list[str]
    transposed: bool


def describe_file(model_path: str | os.PathLike, output: str | os.PathLike, stated: Given,
                  arch: str | None = None) -> DescribeResult:
    """Write ``output``: the model with its full deploy-unet metadata (and NCHW input, from NHWC)."""
    source = os.fspath(model_path)
    if Path(output).resolve() == Path(source).resolve():
        raise ConfigError(f"output {output} would overwrite {source}; pass another -o")
    model = load_onnx(source)
    props = read_props(model)
    if "divisor" in props and "arch" in props:
        # Already described (or exported by deploy-unet): restate only what was given.
        info = ModelInfo.from_props(props, source=source)
        _restate(info, stated)
        facts = graph_facts(model, source)
        found, assumed, transposed = ["kept the metadata it has"], [], False
    else:
        facts = graph_facts(model, source)
        transposed = facts.layout == "NHWC"
        if transposed:
            model = to_nchw(model, facts)
        described = describe_model(model, source, stated, path=None if transposed else source)
        info, found, assumed = described.info, described.found, described.assumed
        if transposed:
            info.extra[SOURCE_LAYOUT_KEY] = "NHWC"
            found.insert(0, f"input was NHWC ({facts.layout_reason}): a Transpose in front makes it NCHW")
        info.extra[DESCRIBED_BY_KEY] = "deploy-unet describe"
    if arch:
        info.arch = arch
    write_props(model, info.to_props())
    with atomic_path(output) as tmp:
        onnx.save(model, os.fspath(tmp))
    return DescribeResult(Path(output), info, found, assumed, transposed)


def _restate(info: ModelInfo, stated: Given) -> None:
    if stated.mean is not None:
        info.mean = list(stated.mean)
    if stated.std is not None:
        info.std = list(stated.std)
    if stated.scale is not None:
        info.extra[VALUE_SCALE_KEY] = repr(float(stated.scale))
    if stated.class_names is not None:
        if len(stated.class_names) != info.num_classes:
            raise ConfigError(f"--class-names gives {len(stated.class_names)} names, but the model has "
                              f"{info.num_classes} classes")
        info.class_names = list(stated.class_names)
    if stated.divisor is not None:
        info.divisor = int(stated.divisor)


def to_nchw(model: onnx.ModelProto, facts: GraphFacts) -> onnx.ModelProto:
    """The NHWC graph with a new NCHW input (Transpose 0,2,3,1 in front of the old one) and, for an NHWC
    output (N, H, W, C: its last dim static and small, or the output rank-4 with the input's spatial symbols in
    dims 1 and 2), a Transpose 0,3,1,2 after it, under the output's old name."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    old = facts.input_name
    inner = old + "__nhwc"
    _rename_tensor(graph, old, inner)  # a graph input: its readers (no node writes it)
    inp = next(v for v in graph.input if v.name == old)
    n, h, w, c = (inp.type.tensor_type.shape.dim[i] for i in range(4))
    dims = [_dim(d, None) for d in (n, c, h, w)]
    new_input = onnx.helper.make_tensor_value_info(old, onnx.TensorProto.FLOAT, dims)
    index = list(graph.input).index(inp)
    graph.input.remove(inp)
    graph.input.insert(index, new_input)
    nodes = [onnx.helper.make_node("Transpose", [old], [inner], perm=[0, 2, 3, 1], name="deploy_unet_nchw_to_nhwc")]
    for out in graph.output:
        odims = _dims(out)
        hw_symbols = {facts.input_dims[1], facts.input_dims[2]}
        nhwc_out = len(odims) == 4 and (
            (isinstance(odims[3], int) and not isinstance(odims[1], int))
            or (odims[1] in hw_symbols and isinstance(odims[1], str)))
        if not nhwc_out:
            continue
        name = out.name
        inner_out = name + "__nhwc"
        _rename_tensor(graph, name, inner_out)
        d = out.type.tensor_type.shape.dim
        nd = [_dim(x, None) for x in (d[0], d[3], d[1], d[2])]
        elem = out.type.tensor_type.elem_type
        graph.node.append(onnx.helper.make_node("Transpose", [inner_out], [name], perm=[0, 3, 1, 2],
                                                name=f"deploy_unet_nhwc_to_nchw_{name}"))
        out.CopyFrom(onnx.helper.make_tensor_value_info(name, elem, nd))
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    return model


def parse_given(mean: Sequence[float] | None = None, std: Sequence[float] | None = None, scale: float | None = None,
                class_names: Sequence[str] | None = None, divisor: int | None = None) -> Given:
    if scale is not None and not scale > 0:
        raise ConfigError(f"--scale {scale} must be > 0 (1 for [0, 1] input, 255 for 0..255)")
    if divisor is not None and divisor < 1:
        raise ConfigError(f"--divisor {divisor} must be >= 1")
    if std is not None and any(s == 0 for s in std):
        raise ShapeContractError(f"--std {list(std)} holds a zero; normalization divides by it")
    return Given(tuple(mean) if mean is not None else None, tuple(std) if std is not None else None,
                 float(scale) if scale is not None else None,
                 tuple(n.strip() for n in class_names) if class_names is not None else None, divisor)
