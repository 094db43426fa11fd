"""The self-description every deploy-unet ONNX file carries in ``metadata_props``.

Downstream commands (quantize, build-engine, the runners, validate) read this instead of asking the
user again, through ``describe.read_model_info`` (which describes a file that has none). Values are strings in
ONNX; lists and dicts are stored as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from deploy_unet.errors import ArtifactError

# Keys whose values are JSON in the ONNX file.
_JSON_KEYS = {"net_config", "mean", "std", "input_names", "output_names", "export_shape", "class_names", "divisors"}
_INT_KEYS = {"divisor", "in_channels", "num_classes", "size_remainder", "border", "output_offset", "min_size",
             "spatial_dims"}
# Written only when not the default, so a 2D file's metadata stays what it was (and old files mean 2D).
_DEFAULT_OMITTED = {"spatial_dims": 2, "divisors": []}
# export --pad-in-graph: "reflect" when the graph pads H, W up to the divisor itself and crops back
# (the caller feeds any size), "none" (or absent, files from before) when the caller must.
PAD_IN_GRAPH_KEY = "pad_in_graph"


@dataclass
class ModelInfo:
    arch: str
    divisor: int
    in_channels: int
    num_classes: int
    net_config: dict[str, Any] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=lambda: ["input"])
    output_names: list[str] = field(default_factory=lambda: ["logits"])
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    precision: str = "fp32"
    export_shape: list[int] = field(default_factory=list)
    # The general shape contract (shapes.ShapeContract), for nets whose output is smaller than the input
    # (``padding="valid"``): valid sizes are divisor*k + size_remainder, >= min_size; output = input - border,
    # its pixel 0 lies output_offset (= border // 2) pixels into the input. Padded nets: "same", 0, 0, 0, 0.
    padding: str = "same"
    size_remainder: int = 0
    border: int = 0
    output_offset: int = 0
    min_size: int = 0
    # One name per class id (``export --class-names``), for legends and reports; empty: ids only.
    class_names: list[str] = field(default_factory=list)
    # Volumes: 3 for an NCDHW net (absent in a file: 2, NCHW); ``divisors``: one per spatial axis (depth,
    # height, width) where they differ (anisotropic nets), ``divisor`` then being their lcm; empty: ``divisor``
    # on every axis.
    spatial_dims: int = 2
    divisors: list[int] = field(default_factory=list)
    # Anything else (exporter, versions, checkpoint hash, quantization settings) as plain strings.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def contract_reason(self) -> str:
        """Why the divisor is what it is, for shape-contract error messages."""
        depth = self.net_config.get("depth")
        if self.arch == "unet" and depth:
            return f"2**{depth} for UNet depth {depth}"
        if self.arch == "unetpp" and depth:
            prune = self.net_config.get("prune")
            if prune:
                return f"2**{prune} for UNet++ pruned to level {prune}"
            return f"2**{depth} for UNet++ depth {depth}"
        if self.arch == "unet3d" and depth:
            if self.divisors:
                pooled = self.net_config.get("pool_depth", depth)
                return f"the pooling of UNet3D depth {depth}, depth axis pooled {pooled} times"
            return f"2**{depth} for UNet3D depth {depth}"
        if self.arch.startswith("fcn"):
            return f"{self.divisor} for the five pooling stages of FCN"
        return f"the divisor of {self.arch}"

    @property
    def shape_contract(self):
        """The net's contract as export wrote it (never recomputed from the architecture)."""
        from deploy_unet.shapes import ShapeContract

        if self.size_remainder == 0 and self.border == 0:
            if self.divisors:
                return ShapeContract.per_axis(self.divisors, self.spatial_dims, reason=self.contract_reason)
            return ShapeContract(self.divisor, reason=self.contract_reason, spatial_dims=self.spatial_dims)
        depth = self.net_config.get("depth")
        reason = "unpadded " + ("UNet" if self.arch == "unet" else self.arch) + (f" depth {depth}" if depth else "")
        reason += ": every level even before pooling"
        return ShapeContract(
            self.divisor, self.size_remainder, self.border, self.min_size, reason, spatial_dims=self.spatial_dims)

    @property
    def axis_divisors(self) -> tuple[int, ...]:
        """The divisor of each spatial axis."""
        return tuple(self.divisors) or (self.divisor,) * self.spatial_dims

    @classmethod
    def contract_fields(cls, contract, padding: str = "same") -> dict[str, Any]:
        """The ModelInfo fields that store ``contract`` (a shapes.ShapeContract)."""
        dims = {}
        if getattr(contract, "spatial_dims", 2) != 2:
            dims["spatial_dims"] = contract.spatial_dims
        if getattr(contract, "divisors", ()):
            dims["divisors"] = list(contract.divisors)
        if contract.is_divisor_only:
            return {"padding": padding, **dims}
        return {**dims,
            "padding": padding, "size_remainder": contract.remainder, "border": contract.border,
            "output_offset": contract.border_per_side, "min_size": contract.smallest,
        }

    @property
    def pad_in_graph(self) -> bool:
        """The graph pads to the divisor itself (export --pad-in-graph): any H, W is a valid input."""
        return self.extra.get(PAD_IN_GRAPH_KEY, "none") not in ("", "none")

    @property
    def output_stride(self) -> int:
        """Input H / logits H: 1 for full-size logits, 4 for SegFormer's (export or describe records it)."""
        return int(self.extra.get("output_stride", "1") or 1)

    @property
    def value_scale(self) -> float:
        """The net takes pixels in [0, value_scale] before mean/std (1.0: [0, 1]; 255.0: 0..255)."""
        return float(self.extra.get("value_scale", "1.0") or 1.0)

    def to_props(self) -> dict[str, str]:
        props: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key == "extra" or (key in _DEFAULT_OMITTED and value == _DEFAULT_OMITTED[key]):
                continue
            props[key] = json.dumps(value) if key in _JSON_KEYS else str(value)
        props.update({k: str(v) for k, v in self.extra.items()})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelInfo:
        missing = [k for k in ("arch", "divisor", "in_channels", "num_classes") if k not in props]
        if missing:
            raise ArtifactError(
                f"{source} has no deploy-unet metadata ({', '.join(missing)} missing); "
                "export it with `deploy-unet export`, or pass the missing values explicitly"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs: dict[str, Any] = {}
        for key in known & props.keys():
            value = props[key]
            if key in _JSON_KEYS:
                kwargs[key] = json.loads(value)
            elif key in _INT_KEYS:
                kwargs[key] = int(value)
            else:
                kwargs[key] = value
        kwargs["extra"] = {k: v for k, v in props.items() if k not in known}
        return cls(**kwargs)


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def write_props(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set (add or replace) metadata entries, keeping the others."""
    current = read_props(model)
    current.update(props)
    del model.metadata_props[:]
    for key, value in current.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def load_onnx(path: str | os.PathLike, load_weights: bool = True) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise ArtifactError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(os.fspath(path), load_external_data=load_weights)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None


def has_deploy_unet_metadata(props: dict[str, str]) -> bool:
    return all(k in props for k in ("arch", "divisor", "in_channels", "num_classes"))
