"""Layer-wise comparison of a lower-precision ONNX with its fp32 source, on ONNX Runtime CPU.

Both files come from the same export. Every intermediate float tensor the two graphs have in common is
exposed as an output; for each one we report, streamed over the samples (running sums, never the
tensors): SQNR and relative L2 of the candidate against fp32 (the error *accumulated* from the input
up to here), and the *local* error the layer's own precision adds: the candidate's node, with its own
Q/DQ or Casts, run on the fp32 reference's inputs inside the reference session (a "probe"), compared
with the fp32 output. For fp16 the max |activation| is reported against the fp16 range.

Matching tensors by name is not enough: ORT's quantizer renames the logits' producer and folds each
ReLU into the uint8 Q after its Conv, the fp16 converter renames the tensors it casts, and other tools
rename everything. Tensors are matched by a *structural signature* instead: the op, its attributes and
the signatures of its inputs, computed from the graph inputs down, with Q/DQ, Cast and Identity
transparent, weights known by shape only (their values differ by construction), ReLU idempotent on
tensors known to be non-negative, and a uint8/int8 Q whose zero point is the type's minimum counted as
the ReLU it clamps like. ORT's ``qdq_loss_debug`` matches by name and keeps every tensor of every
batch in memory; this keeps five numbers per tensor.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy_unet.errors import ArtifactError, ShapeContractError
from deploy_unet.fileio import json_safe

TRANSPARENT = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"})
# Ops whose output is >= 0 whatever their input, and ops that keep a non-negative input non-negative.
NONNEG_MAKERS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})
NONNEG_KEEPERS = frozenset({
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Reshape", "Transpose", "Slice",
    "Flatten", "Squeeze", "Unsqueeze", "Split", "Upsample", "DepthToSpace", "SpaceToDepth", "Expand", "Tile",
})
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
FP16_MAX = 65504.0
PROBE = "__probe__"


# --- structure: signatures and matching -------------------------------------------------------------------


@dataclass
class GraphView:
    """One model with what matching needs: producers, initializers, float tensors, signatures."""

    model: onnx.ModelProto
    producers: dict[str, onnx.NodeProto]
    inits: dict[str, onnx.TensorProto]
    types: dict[str, int]  # tensor -> elem type (inferred; 0 unknown)
    order: dict[str, int]  # tensor -> index of its producer in graph order (-1: graph input)
    sig: dict[str, str]
    nonneg: dict[str, bool]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphView:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph ORT runs but onnx cannot infer: types stay unknown, data still matches
            inferred = model
        types = {v.name: v.type.tensor_type.elem_type
                 for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        for t in inits.values():
            types.setdefault(t.name, t.data_type)
        view = cls(model, {}, inits, types, {}, {}, {})
        for i, inp in enumerate(graph.input):
            if inp.name not in inits:
                view.sig[inp.name] = _hash("input", i)
                view.nonneg[inp.name] = False
                view.order[inp.name] = -1
        for idx, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    view.producers[out] = node
                    view.order[out] = idx
            view._sign(node)
        return view

    def signature(self, name: str) -> str:
        if not name:
            return "-"
        if name in self.sig:
            return self.sig[name]
        if name in self.inits:
            return _const_sig(self.inits[name])
        return _hash("unknown", name)  # an outer-scope or dangling name: never matches across graphs

    def _sign(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            self.sig[node.output[0]] = _const_sig(value) if value is not None else _hash("Constant", node.name)
            self.nonneg[node.output[0]] = False
            return
        first = node.input[0] if node.input else ""
        if op in TRANSPARENT:
            if op == "DequantizeLinear" and first in self.inits:
                sig, nonneg = _hash("const", tuple(self.inits[first].dims)), False  # a weight, by shape
            else:
                sig, nonneg = self.signature(first), self.nonneg.get(first, False)
                if op == "QuantizeLinear" and self._clamps_at_zero(node) and not nonneg:
                    sig, nonneg = _relu_sig(sig), True  # ORT's QDQ folds a ReLU into this Q
            for out in node.output:
                self.sig[out], self.nonneg[out] = sig, nonneg
            return
        ins = [self.signature(i) for i in node.input]
        if op == "Relu":  # idempotent: the ReLU of a non-negative tensor is that tensor
            nonneg_in = self.nonneg.get(first, False)
            self.sig[node.output[0]] = ins[0] if nonneg_in else _relu_sig(ins[0])
            self.nonneg[node.output[0]] = True
            return
        attrs = _attributes(node)
        nonneg = op in NONNEG_MAKERS or (op in NONNEG_KEEPERS and bool(node.input)
                                         and self.nonneg.get(first, False)
                                         and (op != "Concat" or all(self.nonneg.get(i, False) for i in node.input)))
        if op == "Resize" and self.nonneg.get(first, False):
            nonneg = dict(attrs).get("mode", "nearest") != "cubic"
        for k, out in enumerate(node.output):
            if out:
                self.sig[out] = _hash(node.domain or "", op, attrs, tuple(ins), k)
                self.nonneg[out] = nonneg

    def _clamps_at_zero(self, node: onnx.NodeProto) -> bool:
        if len(node.input) < 3 or node.input[2] not in self.inits:
            return False
        zp = numpy_helper.to_array(self.inits[node.input[2]])
        qmin = np.iinfo(zp.dtype).min if np.issubdtype(zp.dtype, np.integer) else None
        return qmin is not None and zp.size > 0 and bool((zp == qmin).all())

    def is_float(self, name: str) -> bool:
        return self.types.get(name, 0) in FLOAT_TYPES

    def value_tensors(self) -> dict[str, list[str]]:
        """Signature -> float tensors computed by graph nodes, in graph order. Of several tensors with one
        signature (``x`` and its Q/DQ'd or cast copy), the ones a compute node produced are preferred."""
        groups: dict[str, list[str]] = defaultdict(list)
        outputs = {o.name for o in self.model.graph.output}
        for name, node in self.producers.items():
            if name in self.sig and self.is_float(name) and node.op_type != "Constant":
                groups[self.sig[name]].append(name)
        chosen = {}
        for sig, names in groups.items():
            names.sort(key=lambda n: self.order[n])
            computed = [n for n in names if self.producers[n].op_type not in TRANSPARENT]
            # A graph output is what users get (ORT's quantizer puts Q/DQ on the logits): it wins.
            chosen[sig] = [n for n in names if n in outputs] or computed or names[-1:]
        return chosen


def _hash(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


def _relu_sig(sig: str) -> str:
    return _hash("Relu", sig)


def _const_sig(tensor: onnx.TensorProto) -> str:
    # Float constants by shape only (quantized/fp16 copies hold other values); integer ones (shapes, axes,
    # pads) by value too, since they define the computation.
    if tensor.data_type in (TensorProto.INT64, TensorProto.INT32) and int(np.prod(tensor.dims or [1])) <= 64:
        return _hash("const", tuple(tensor.dims), tuple(numpy_helper.to_array(tensor).ravel().tolist()))
    return _hash("const", tuple(tensor.dims))


def _attributes(node: onnx.NodeProto) -> tuple:
    items = []
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, float):
            value = round(value, 6)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode(errors="replace") for v in value]
        elif isinstance(value, list):
            value = [round(v, 6) if isinstance(v, float) else v for v in value]
        elif not isinstance(value, (int, str)):
            continue  # tensors and graphs
        items.append((a.name, repr(value)))
    return tuple(sorted(items))


@dataclass
class TensorMatch:
    ref: str  # tensor in the reference
    cand: str  # its counterpart in the candidate
    ref_node: onnx.NodeProto
    cand_node: onnx.NodeProto
    depth: int  # position of the reference producer in graph order


def match_tensors(reference: onnx.ModelProto | GraphView, candidate: onnx.ModelProto | GraphView) -> list[TensorMatch]:
    """Reference float tensors paired with the candidate's computing the same thing, in graph order.

    Tensors with the same signature in one graph (two identical branches) pair up in graph order.
    """
    ref = reference if isinstance(reference, GraphView) else GraphView.of(reference)
    cand = candidate if isinstance(candidate, GraphView) else GraphView.of(candidate)
    ref_groups, cand_groups = ref.value_tensors(), cand.value_tensors()
    matches = []
    for sig, ref_names in ref_groups.items():
        for r, c in zip(ref_names, cand_groups.get(sig, [])):
            matches.append(TensorMatch(r, c, ref.producers[r], cand.producers[c], ref.order[r]))
    matches.sort(key=lambda m: (m.depth, m.ref))
    return matches


# --- probes: the candidate's node on the reference's inputs ----------------------------------------------------


def _chain(view: GraphView, name: str) -> tuple[str, list[onnx.NodeProto]]:
    """Walk up Q/DQ/Cast/Identity from ``name``: (source tensor, the transparent nodes from it, in order)."""
    nodes = []
    while name in view.producers and view.producers[name].op_type in TRANSPARENT:
        node = view.producers[name]
        nodes.append(node)
        name = node.input[0]
        if name in view.inits:
            break  # a weight (int8 or fp16 copy) and its DequantizeLinear/Cast: copied as they are
    return name, nodes[::-1]


def build_probe_model(ref: GraphView, cand: GraphView, matches: list[TensorMatch]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The reference model, plus for each matched candidate compute node a copy of that node (with the Q/DQ
    and Casts on its inputs) fed by the reference's tensors. A candidate tensor that a Q/DQ or Cast made
    (ORT's folded ReLU, a quantized graph output) gets its compute node's probe followed by that chain.
    Returns (model, candidate tensor -> probe output)."""
    model = onnx.ModelProto.FromString(ref.model.SerializeToString())
    graph = model.graph
    cand_to_ref = {m.cand: m.ref for m in matches}
    cand_inputs = {inp.name: i for i, inp in enumerate(cand.model.graph.input)}
    ref_inputs = [inp.name for inp in ref.model.graph.input]
    copied_inits: dict[str, str] = {}
    built: dict[str, str] = {}  # candidate tensor -> its probe copy
    new_nodes: list[onnx.NodeProto] = []

    def init_copy(name: str) -> str:
        if name not in copied_inits:
            copied_inits[name] = f"{PROBE}/{name}"
            t = onnx.TensorProto()
            t.CopyFrom(cand.inits[name])
            t.name = copied_inits[name]
            graph.initializer.append(t)
        return copied_inits[name]

    def copy_node(node: onnx.NodeProto, prefix: str, rename: dict[str, str]) -> onnx.NodeProto:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        for i, name in enumerate(copy.input):
            if name in rename:
                copy.input[i] = rename[name]
            elif name in cand.inits:
                copy.input[i] = init_copy(name)
        for i, name in enumerate(copy.output):
            if name:
                copy.output[i] = rename[name] = prefix + name
        return copy

    def probe(node: onnx.NodeProto, prefix: str) -> bool:
        """Copy ``node`` and the transparent chains on its inputs, fed by the reference's tensors."""
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False
        rename: dict[str, str] = {}
        body: list[onnx.NodeProto] = []
        for inp in node.input:
            if not inp or inp in cand.inits or inp in rename:
                continue
            source, chain = _chain(cand, inp)
            if source in rename:
                pass
            elif source in cand.inits:
                rename[source] = init_copy(source)
            elif source in cand_to_ref:
                rename[source] = cand_to_ref[source]
            elif source in cand_inputs and cand_inputs[source] < len(ref_inputs):
                rename[source] = ref_inputs[cand_inputs[source]]
            else:
                return False
            want = cand.types.get(source, 0)
            if (source not in cand.inits and not rename[source].startswith(prefix) and want
                    and want != ref.types.get(rename[source], want)):
                # an fp16 tensor in the candidate fed by the fp32 reference: round it as the candidate did
                cast = prefix + source + "/cast"
                body.append(helper.make_node("Cast", [rename[source]], [cast], name=cast, to=want))
                rename[source] = cast
            for c in chain:
                if c.output[0] not in rename:
                    if any(i and i not in rename and i not in cand.inits for i in c.input):
                        return False
                    body.append(copy_node(c, prefix, rename))
        body.append(copy_node(node, prefix, rename))
        new_nodes.extend(body)
        built.update({out: rename[out] for out in node.output if out})
        return True

    probes: dict[str, str] = {}
    for k, m in enumerate(matches):
        prefix = f"{PROBE}/{k}/"
        if m.cand_node.op_type not in TRANSPARENT:
            if m.cand not in built and not probe(m.cand_node, prefix):
                continue
        else:
            source, chain = _chain(cand, m.cand)
            producer = cand.producers.get(source)
            if producer is None or producer.op_type in TRANSPARENT:
                continue
            if source not in built and not probe(producer, prefix):
                continue
            rename = {source: built[source]}
            for c in chain:  # each link reads the one before it (and initializers: scales, zero points)
                new_nodes.append(copy_node(c, prefix + "chain/", rename))
            built[m.cand] = rename[m.cand]
        probes[m.cand] = built[m.cand]
        graph.output.append(helper.make_tensor_value_info(built[m.cand], cand.types.get(m.cand) or TensorProto.FLOAT, None))
    graph.node.extend(new_nodes)
    for opset in model.opset_import:  # a candidate node may need the candidate's (higher) opset
        for other in cand.model.opset_import:
            if other.domain == opset.domain:
                opset.version = max(opset.version, other.version)
    known = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in cand.model.opset_import if o.domain not in known)
    return model, probes


# --- statistics ------------------------------------------------------------------------------------------


class _Stats:
    """Running sums for one matched tensor: enough for SQNR, rel L2 and max |x|, whatever the sample count."""

    __slots__ = ("sum_ref", "sum_diff", "sum_local", "has_local", "max_ref", "max_cand", "nonfinite", "count")

    def __init__(self):
        self.sum_ref = self.sum_diff = self.sum_local = 0.0
        self.has_local = False
        self.max_ref = self.max_cand = 0.0
        self.nonfinite = 0
        self.count = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, local: np.ndarray | None) -> None:
        r = np.asarray(ref, dtype=np.float64).ravel()
        c = np.asarray(cand, dtype=np.float64).ravel()
        if r.shape != c.shape:
            raise ShapeContractError(f"matched tensors differ in size ({r.size} vs {c.size} elements)")
        bad = ~np.isfinite(c)
        self.nonfinite += int(bad.sum())
        d = np.where(bad, 0.0, c - r)
        self.sum_ref += float(r @ r)
        self.sum_diff += float(d @ d)
        if r.size:
            self.max_ref = max(self.max_ref, float(np.abs(r).max()))
            self.max_cand = max(self.max_cand, float(np.abs(np.where(bad, np.inf, c)).max()))
        if local is not None:
            lo = np.asarray(local, dtype=np.float64).ravel()
            dl = np.where(np.isfinite(lo), lo - r, 0.0)
            self.sum_local += float(dl @ dl)
            self.has_local = True
        self.count += r.size


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _rel(signal: float, noise: float) -> float:
    if signal <= 0:
        return 0.0 if noise <= 0 else math.inf
    return math.sqrt(noise / signal)


@dataclass
class LayerError:
    """One matched tensor: the output of layer ``node`` (``op``) at position ``index`` along depth."""

    index: int
    node: str
    op: str
    layer: str  # the module the weights came from (``up.1.block.0``), else the node name
    tensor: str  # reference tensor name
    candidate_tensor: str
    sqnr_db: float
    rel_l2: float
    local_sqnr_db: float | None
    local_rel_l2: float | None
    max_abs_ref: float
    max_abs_candidate: float
    nonfinite: int

    @property
    def fp16_range_share(self) -> float:
        """max |activation| as a share of fp16's largest finite value (1.0 = at the edge)."""
        return self.max_abs_ref / FP16_MAX


@dataclass
class LayerReport:
    reference: str
    candidate: str
    precision: str
    samples: int
    layers: list[LayerError]
    unmatched: int  # reference float tensors with no counterpart in the candidate
    seconds: float = 0.0

    def worst(self, n: int = 10) -> list[LayerError]:
        """Layers adding the most error themselves (lowest local SQNR), then by accumulated error."""
        local = [x for x in self.layers if x.local_sqnr_db is not None]
        local.sort(key=lambda x: (x.local_sqnr_db, x.sqnr_db))
        rest = sorted((x for x in self.layers if x.local_sqnr_db is None), key=lambda x: x.sqnr_db)
        return (local + rest)[:n]

    def to_dict(self) -> dict:
        data = asdict(self)
        for row, layer in zip(data["layers"], self.layers):
            row["fp16_range_share"] = layer.fp16_range_share
        return json_safe(data)



def layer_label(node: onnx.NodeProto, inits: dict | None = None) -> str:
    """A PyTorch-side name for a node: its weight's module path (``up.1.block.0`` from
    ``up.1.block.0.weight``, also through ``_quantized``/``_int8`` copies), else the node name."""
    for name in list(node.input[1:2]):
        for suffix in ("_DequantizeLinear_Output", "_dequantized"):
            name = name.removesuffix(suffix)
        if name.endswith(".weight"):
            return name[: -len(".weight")]
    return node.name


# --- running it ------------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto | str | os.PathLike, threads: int | None, optimize: bool):
    import onnxruntime as ort

    from deploy_unet.precision.gate import DISABLED_OPTIMIZERS

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def _expose(model: onnx.ModelProto, names: Iterable[str], types: dict[str, int]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None))
            present.add(name)
    return model


def compare_layers(
    reference: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    images: Iterable[np.ndarray],
    *,
    threads: int | None = None,
    on_sample: Callable[[int], None] | None = None,
) -> list[LayerReport]:
    """Per-layer errors of each candidate against the fp32 ``reference`` (both ONNX of one export).

    ``images`` is consumed one batch at a time (an iterator of float32 NCHW arrays is fine): only the
    running sums per tensor are kept, so memory does not grow with the number of samples.
    """
    import time

    from deploy_unet.metadata import load_onnx, read_props

    start = time.perf_counter()
    ref_model = load_onnx(reference)
    ref_view = GraphView.of(ref_model)
    setups = []
    for path in candidates:
        cand_model = load_onnx(path)
        if len(cand_model.graph.input) != len(ref_model.graph.input):
            raise ArtifactError(f"{path} has {len(cand_model.graph.input)} inputs, {reference} has "
                                f"{len(ref_model.graph.input)}: compare files of one export")
        cand_view = GraphView.of(cand_model)
        matches = match_tensors(ref_view, cand_view)
        if not matches:
            raise ArtifactError(f"no tensor of {path} matches one of {reference}; --per-layer compares a "
                                "quantized or fp16 file with the fp32 ONNX it was made from")
        probe_model, probes = build_probe_model(ref_view, cand_view, matches)
        probe_model = _expose(probe_model, [m.ref for m in matches], ref_view.types)
        cand_exposed = _expose(cand_model, [m.cand for m in matches], cand_view.types)
        precision = read_props(cand_model).get("precision", "")
        unmatched = sum(len(v) for s, v in ref_view.value_tensors().items()) - len(matches)
        setups.append(dict(
            path=path, matches=matches, probes=probes, precision=precision, unmatched=unmatched,
            ref_sess=_session(probe_model, threads, optimize=False),
            cand_sess=_session(cand_exposed, threads, optimize=True),
            stats=[_Stats() for _ in matches], inits=cand_view.inits,
        ))
    input_name = ref_model.graph.input[0].name
    count = 0
    for i, batch in enumerate(images):
        batch = np.asarray(batch, dtype=np.float32)
        for s in setups:
            ref_out = dict(zip([o.name for o in s["ref_sess"].get_outputs()],
                               s["ref_sess"].run(None, {input_name: batch})))
            cand_name = s["cand_sess"].get_inputs()[0].name
            cand_out = dict(zip([o.name for o in s["cand_sess"].get_outputs()],
                                s["cand_sess"].run(None, {cand_name: batch})))
            for m, st in zip(s["matches"], s["stats"]):
                probe = s["probes"].get(m.cand)
                st.add(ref_out[m.ref], cand_out[m.cand], ref_out[probe] if probe else None)
            del ref_out, cand_out
        count += len(batch)
        if on_sample:
            on_sample(i)
    if count == 0:
        raise ArtifactError("no samples for the per-layer comparison; pass --samples >= 1")
    seconds = time.perf_counter() - start
    reports = []
    for s in setups:
        layers = []
        for m, st in zip(s["matches"], s["stats"]):
            layers.append(LayerError(
                index=m.depth, node=m.ref_node.name, op=m.ref_node.op_type,
                layer=layer_label(m.ref_node), tensor=m.ref, candidate_tensor=m.cand,
                sqnr_db=_sqnr(st.sum_ref, st.sum_diff), rel_l2=_rel(st.sum_ref, st.sum_diff),
                local_sqnr_db=_sqnr(st.sum_ref, st.sum_local) if st.has_local else None,
                local_rel_l2=_rel(st.sum_ref, st.sum_local) if st.has_local else None,
                max_abs_ref=st.max_ref, max_abs_candidate=st.max_cand, nonfinite=st.nonfinite,
            ))
        reports.append(LayerReport(os.fspath(reference), os.fspath(s["path"]), s["precision"], count, layers,
                                   s["unmatched"], seconds))
    return reports


def per_layer_artifacts(
    candidates: Sequence[str | os.PathLike],
    reference: str | os.PathLike,
    *,
    data: str = "synthetic",
    samples: int = 8,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    threads: int | None = None,
) -> list[LayerReport]:
    """``compare_layers`` on ``samples`` images of ``data`` (prepared for the reference's metadata), fed one
    at a time; writes the JSON of every layer and the PNG of error along depth when paths are given."""
    from deploy_unet.data import load_samples
    from deploy_unet.describe import read_model_info

    if samples < 1:
        raise ArtifactError(f"--samples {samples} must be >= 1 for the per-layer comparison")
    info = read_model_info(reference)
    images = load_samples(data, info, samples).images
    reports = compare_layers(reference, candidates, (images[i : i + 1] for i in range(len(images))),
                             threads=threads)
    if json_path:
        write_layer_json(json_path, reports)
    if plot_path:
        plot_layer_errors(plot_path, reports)
    return reports


# --- output ----------------------------------------------------------------------------------------------


def write_layer_json(path: str | os.PathLike, reports: Sequence[LayerReport]) -> None:
    import json

    from deploy_unet.fileio import write_text_atomic

    payload = {"format": "deploy-unet-layers/1", "candidates": [r.to_dict() for r in reports]}
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def plot_layer_errors(path: str | os.PathLike, reports: Sequence[LayerReport]) -> None:
    """SQNR (accumulated, line; local, dots) along the depth of the net, one colour per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy_unet.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    cap = 80.0  # dB; identical tensors (infinite SQNR) are drawn at the cap
    for k, report in enumerate(reports):
        color = f"C{k}"
        xs = list(range(len(report.layers)))
        acc = [min(x.sqnr_db, cap) for x in report.layers]
        ax.plot(xs, acc, "-", color=color, lw=1.6, label=f"{Path(report.candidate).name} (accumulated)")
        # local error of the layers that have a precision of their own (a ReLU after an int8 conv adds none)
        local = [(i, x.local_sqnr_db) for i, x in enumerate(report.layers)
                 if x.local_sqnr_db is not None and math.isfinite(x.local_sqnr_db)]
        if local:
            ax.plot(*zip(*local), "o", color=color, ms=3.5, alpha=0.6, label=f"{Path(report.candidate).name} (local)")
            i, worst = min(local, key=lambda p: p[1])
            ax.annotate(report.layers[i].layer, (i, worst), textcoords="offset points", xytext=(4, -12),
                        fontsize=7, color=color)
    ax.set_xlabel("layer (graph order, input to logits)")
    ax.set_ylabel("SQNR vs fp32 (dB, higher is better)")
    ax.set_title(f"Error along depth vs {Path(reports[0].reference).name} ({reports[0].samples} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
