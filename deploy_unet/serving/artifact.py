"""What Triton needs to know about an artifact: names, dtypes, dims, batch limit, H/W range, precision.

Read from the artifact's own description (the ONNX graph and its deploy-unet metadata, or the engine
manifest), never from the user again, so a model repository and ``serve`` agree with what was exported
and built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, DeployUnetError
from deploy_unet.metadata import ModelInfo
from deploy_unet.runtime.base import mask_dtype

# NumPy dtype name -> Triton model-config DataType (model_config.proto).
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16",
    "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
# TensorRT DataType names as the manifest records them -> NumPy.
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
               "UINT8": "uint8", "BOOL": "bool"}
SUFFIX_KINDS = {".onnx": "onnx", ".engine": "engine", ".plan": "engine"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # NumPy dtype name
    dims: tuple[int, ...]  # full shape, -1 where dynamic (batch included)

    @property
    def triton_type(self) -> str:
        if self.dtype not in TRITON_TYPES:
            raise ArtifactError(f"tensor {self.name!r} has dtype {self.dtype}, which Triton configs cannot name")
        return TRITON_TYPES[self.dtype]


@dataclass(frozen=True)
class Profile:
    """The (single) input's shape range: an engine's optimization profile, or the default one for an ONNX."""

    min: tuple[int, ...]  # (B, C, H, W), or (B, C, D, H, W) for volumes
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def describe_hw(self) -> str:
        if len(self.opt) == 5:
            ranges = ", ".join(f"{n} in [{lo}, {hi}]" for n, lo, hi in zip("DHW", self.min[2:], self.max[2:]))
            return f"{ranges} (opt {'x'.join(map(str, self.opt[2:]))}), batch up to {self.max[0]}"
        return (f"H in [{self.min[2]}, {self.max[2]}], W in [{self.min[3]}, {self.max[3]}] "
                f"(opt {self.opt[2]}x{self.opt[3]}), batch up to {self.max[0]}")


@dataclass
class Artifact:
    """One ONNX file or engine, as a model repository and the serving code see it."""

    path: Path
    kind: str  # "onnx" | "engine"
    info: ModelInfo
    input: TensorInfo
    outputs: list[TensorInfo]
    precision: str  # what the graph (or the manifest) says: fp32 | fp16 | int8
    profile: Profile | None  # engines: the built profile; ONNX: None (any batch and size in the contract)
    default_profile: Profile | None = None  # ONNX: build-engine's default profile (opt = the export shape)
    notes: list[str] = field(default_factory=list)

    @property
    def batch_dynamic(self) -> bool:
        return self.input.dims[0] == -1

    @property
    def hw_dynamic(self) -> bool:
        return all(d == -1 for d in self.input.dims[2:])  # H, W (and D for volumes)

    @property
    def max_batch_limit(self) -> int | None:
        """The largest batch the artifact takes: an engine's profile max batch; None when unbounded."""
        if not self.batch_dynamic:
            return self.input.dims[0]
        return self.profile.max[0] if self.profile else None

    @property
    def opt_shape(self) -> tuple[int, ...]:
        profile = self.profile or self.default_profile
        if profile is not None:
            return profile.opt
        contract = self.info.shape_contract
        b, c, *spatial = self.input.dims
        smallest = contract.axis_divisors if len(spatial) == 3 else (contract.smallest,) * len(spatial)
        return (max(b, 1), c, *(v if v > 0 else s for v, s in zip(spatial, smallest)))

    def hw_rule(self) -> str:
        """The input H/W rule in words, for config comments and the repository README."""
        if self.profile is not None:
            return self.profile.describe_hw() + " (the engine's optimization profile; sizes outside it fail)"
        if not self.hw_dynamic:
            return f"fixed {'x'.join(map(str, self.input.dims[2:]))} (a static export)"
        contract = self.info.shape_contract
        if len(self.input.dims) == 5:
            return f"D, H and W: {contract.rule_text()} (volumes, NCDHW)"
        if self.info.pad_in_graph:
            return f"any H, W from {self.info.divisor // 2 + 1} up (the graph pads to a multiple of {self.info.divisor})"
        return f"H and W {contract.rule()}"


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) if isinstance(d, int) and d > 0 else -1 for d in shape)


def read_artifact(path: str | os.PathLike) -> Artifact:
    path = Path(path)
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path} is neither an ONNX file nor an engine; a model repository takes "
                          f"{', '.join(SUFFIX_KINDS)} files")
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist; check the path")
    return _read_onnx(path) if kind == "onnx" else _read_engine(path)


def _read_onnx(path: Path) -> Artifact:
    import onnx

    from deploy_unet.describe import read_model_info
    from deploy_unet.engine.build import plan_build, read_precision
    from deploy_unet.metadata import load_onnx

    model = load_onnx(path, load_weights=False)
    info = read_model_info(model)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs; deploy-unet serves single-input nets")

    def tensor(value) -> TensorInfo:
        elem = value.type.tensor_type.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        return TensorInfo(value.name, dtype, _dims(dims))

    inp = tensor(inputs[0])
    if len(inp.dims) != 4 and not (len(inp.dims) == 5 and info.spatial_dims == 3):
        raise ArtifactError(f"{path} input {inp.name!r} has rank {len(inp.dims)}; expected NCHW (rank 4)"
                            + (", or NCDHW (rank 5) with volume metadata" if len(inp.dims) == 5 else ""))
    default = None
    try:
        plan = plan_build(path)
        p = plan.profiles[0]
        default = Profile(tuple(p.min), tuple(p.opt), tuple(p.max))  # type: ignore[arg-type]
    except DeployUnetError:
        pass  # no (valid) export shape recorded: no default profile (warmup then uses the smallest valid size)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    notes = [f"{path.name} keeps its weights in external data files; copy them beside model.onnx"] if external else []
    return Artifact(
        path=path, kind="onnx", info=info, input=inp, outputs=[tensor(o) for o in model.graph.output],
        precision=read_precision(model).precision, profile=None, default_profile=default, notes=notes,
    )


def _read_engine(path: Path) -> Artifact:
    from deploy_unet.engine.manifest import manifest_path_for, read_manifest

    manifest = read_manifest(manifest_path_for(path))
    info = manifest.model_info()
    if not manifest.inputs or len(manifest.inputs) != 1:
        raise ArtifactError(f"{path}'s manifest lists {len(manifest.inputs)} inputs; deploy-unet serves single-input nets")

    def tensor(entry) -> TensorInfo:
        dtype = _TRT_DTYPES.get(str(entry.get("dtype", "FLOAT")).upper(), "float32")
        return TensorInfo(entry["name"], dtype, _dims(entry["shape"]))

    inp = tensor(manifest.inputs[0])
    profiles = manifest.profiles or [{k: manifest.inputs[0][k] for k in ("min", "opt", "max")}]
    if len(profiles) != 1:
        raise ArtifactError(f"{path} has {len(profiles)} optimization profiles; deploy-unet writes one")
    p = profiles[0]
    profile = Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))  # type: ignore[arg-type]
    return Artifact(
        path=path, kind="engine", info=info, input=inp, outputs=[tensor(o) for o in manifest.outputs],
        precision=manifest.precision, profile=profile,
    )


def mask_numpy_dtype(info: ModelInfo) -> str:
    """The dtype of a served mask (uint8 up to 256 classes): the runners' ``output="mask"`` rule."""
    return mask_dtype(int(info.num_classes))
