"""Which precision each engine layer runs in, read from the builder's own log.

With ``ProfilingVerbosity.DETAILED``, TensorRT logs an "Engine Layer Information:" table at VERBOSE level when a
build finishes: one ``Layer(TYPE): NAME, Tactic: ..., INPUTS -> OUTPUTS`` line per engine layer, each tensor
with its type. It needs no deserialized engine, so it answers "did our Q/DQ make the convolutions int8?" even
on a GPU the engine cannot run on (TensorRT-RTX on an H100), where the engine inspector is out of reach.
Two tensor spellings are in use across versions: ``name[Int8(1,16,64,64)]`` and ``name (Int8[1,16,64,64])``.
The dims give each tensor's rank, so the summary also says which **3D** layers (5-D tensors: volume nets) run
int8: with explicit Q/DQ TensorRT may run a ConvTranspose3d in fp16 (NVIDIA/TensorRT#4668), which the
"deconvolutions" entry shows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

HEADER = "Engine Layer Information"
_LAYER = re.compile(r"^\s*Layer\((?P<type>[^)]*)\):\s*(?P<rest>.*)$")
# A tensor type is a known type word directly followed by its dims in ( or [.
_TYPES = ("Float", "Half", "BFloat16", "BF16", "Int8", "UInt8", "Int4", "FP8", "FP4", "Int32", "Int64", "Bool")
_TENSOR_TYPE = re.compile(r"\b(" + "|".join(_TYPES) + r")\s*[\[(]")
_TENSOR_DIMS = re.compile(r"\b(?:" + "|".join(_TYPES) + r")\s*[\[(]([^\])]*)[\])]")


@dataclass(frozen=True)
class EngineLayer:
    type: str  # TensorRT's implementation: CaskConvolution, Reformat, Myelin, ...
    name: str  # the fused ONNX nodes, e.g. "/enc0/conv/Conv + /enc0/act/Relu"
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    input_ranks: tuple[int, ...] = ()  # rank of each input tensor (5: a 3D layer of a volume net)
    output_ranks: tuple[int, ...] = ()

    @property
    def is_convolution(self) -> bool:
        return "conv" in self.type.lower()

    @property
    def is_deconvolution(self) -> bool:
        return "deconv" in self.type.lower() or "convtranspose" in self.name.lower().replace("_", "")

    @property
    def is_3d(self) -> bool:
        """A layer on 5-D tensors (N, C, D, H, W)."""
        ranks = self.input_ranks or self.output_ranks
        return bool(ranks) and ranks[0] == 5

    @property
    def compute_type(self) -> str:
        """What the layer computes in: the type of its first input (a weight-only layer: its first output)."""
        types = self.input_types or self.output_types
        return types[0] if types else "unknown"


def parse_layer_information(text: str) -> list[EngineLayer]:
    """The layers of an "Engine Layer Information" log message (other lines are ignored)."""
    layers = []
    for line in text.splitlines():
        match = _LAYER.match(line)
        if not match:
            continue
        rest = match["rest"]
        name, _, tail = rest.partition(", Tactic:")
        inputs, arrow, outputs = tail.partition("->")
        if not arrow:
            inputs, outputs = "", tail
        layers.append(EngineLayer(
            type=match["type"].strip(),
            name=name.strip(),
            input_types=tuple(_TENSOR_TYPE.findall(inputs)),
            output_types=tuple(_TENSOR_TYPE.findall(outputs)),
            input_ranks=tuple(_rank(d) for d in _TENSOR_DIMS.findall(inputs)),
            output_ranks=tuple(_rank(d) for d in _TENSOR_DIMS.findall(outputs)),
        ))
    return layers


def _rank(dims: str) -> int:
    return len([d for d in dims.split(",") if d.strip()])


def summarize_layers(layers: list[EngineLayer]) -> dict:
    """For the manifest: layer count, layers per implementation, and convolutions per compute type; for a
    volume net also its 3D convolutions and deconvolutions per compute type, and which 3D layers are not int8."""
    summary = {
        "count": len(layers),
        "by_type": dict(Counter(layer.type for layer in layers).most_common()),
        "convolutions_by_compute_type": dict(
            Counter(layer.compute_type for layer in layers if layer.is_convolution).most_common()),
    }
    volume = [layer for layer in layers if layer.is_3d and layer.is_convolution]
    if volume:
        summary["convolutions_3d_by_compute_type"] = dict(Counter(v.compute_type for v in volume).most_common())
        summary["deconvolutions_3d_by_compute_type"] = dict(
            Counter(v.compute_type for v in volume if v.is_deconvolution).most_common())
        summary["convolutions_3d_not_int8"] = [v.name for v in volume if v.compute_type != "Int8"]
    return summary


def describe_summary(summary: dict) -> str:
    """One line for the console: ``49 layers; convolutions: 19 Int8, 2 Float``."""
    convs = summary.get("convolutions_by_compute_type") or {}
    conv_text = ", ".join(f"{n} {t}" for t, n in convs.items()) or "none found"
    line = f"{summary.get('count', 0)} layers; convolutions: {conv_text}"
    if summary.get("convolutions_3d_by_compute_type"):
        volume = ", ".join(f"{n} {t}" for t, n in summary["convolutions_3d_by_compute_type"].items())
        deconv = ", ".join(f"{n} {t}" for t, n in summary["deconvolutions_3d_by_compute_type"].items()) or "none"
        line += f"; 3D: {volume} (deconvolutions: {deconv})"
    return line
