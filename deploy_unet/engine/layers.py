"""Which precision each engine layer runs in, read from the builder's own log.

With ``ProfilingVerbosity.DETAILED``, TensorRT logs an "Engine Layer Information:" table at VERBOSE level when a
build finishes: one ``Layer(TYPE): NAME, Tactic: ..., INPUTS -> OUTPUTS`` line per engine layer, each tensor
with its type. It needs no deserialized engine, so it answers "did our Q/DQ make the convolutions int8?" even
on a GPU the engine cannot run on (TensorRT-RTX on an H100), where the engine inspector is out of reach.
Two tensor spellings are in use across versions: ``name[Int8(1,16,64,64)]`` and ``name (Int8[1,16,64,64])``.
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


@dataclass(frozen=True)
class EngineLayer:
    type: str  # TensorRT's implementation: CaskConvolution, Reformat, Myelin, ...
    name: str  # the fused ONNX nodes, e.g. "/enc0/conv/Conv + /enc0/act/Relu"
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]

    @property
    def is_convolution(self) -> bool:
        return "conv" in self.type.lower()

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
        ))
    return layers


def summarize_layers(layers: list[EngineLayer]) -> dict:
    """For the manifest: layer count, layers per implementation, and convolutions per compute type."""
    return {
        "count": len(layers),
        "by_type": dict(Counter(layer.type for layer in layers).most_common()),
        "convolutions_by_compute_type": dict(
            Counter(layer.compute_type for layer in layers if layer.is_convolution).most_common()),
    }


def describe_summary(summary: dict) -> str:
    """One line for the console: ``49 layers; convolutions: 19 Int8, 2 Float``."""
    convs = summary.get("convolutions_by_compute_type") or {}
    conv_text = ", ".join(f"{n} {t}" for t, n in convs.items()) or "none found"
    return f"{summary.get('count', 0)} layers; convolutions: {conv_text}"
