"""The manifest beside every engine, ``FILE.engine.json``: what was built, from what, for which GPU.

A serialized TensorRT engine only runs on the TensorRT version and GPU it was built for, unless it was
built version-compatible (later TensorRT of the same major) or hardware-compatible (``ampere+``: any
GPU of compute capability 8.0 or newer; ``same-cc``: any GPU of the same compute capability). A
TensorRT-RTX engine runs on every compute capability its library lists (``runs_on``). The
runners read this file first and refuse a mismatch with a clear message *before* handing the bytes to
TensorRT, whose own refusal is a log line and a ``None`` (or worse).

The ``model`` section repeats the ONNX metadata as plain JSON values (divisor, mean, std, names) so the
C++ sample can read it without decoding the JSON-in-strings of ``onnx.metadata``.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy_unet import __version__
from deploy_unet.engine.device import ENGINE_LIBRARIES, TENSORRT_RTX, cc_tuple, runs_on, version_tuple
from deploy_unet.errors import ArtifactError
from deploy_unet.fileio import write_text_atomic
from deploy_unet.metadata import PAD_IN_GRAPH_KEY, ModelInfo

FORMAT = "deploy-unet-engine-manifest/1"


def manifest_path_for(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(os.fspath(engine_path) + ".json")


def model_section(info: ModelInfo) -> dict[str, Any]:
    return {
        "arch": info.arch,
        "divisor": info.divisor,
        "in_channels": info.in_channels,
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "input_name": info.input_names[0] if info.input_names else "input",
        "output_name": info.output_names[0] if info.output_names else "logits",
        # The general shape contract (valid sizes divisor*k + size_remainder >= min_size; output = input -
        # border, offset by output_offset) and the export size: what unet_infer --tile needs.
        "padding": info.padding,
        "size_remainder": info.size_remainder,
        "border": info.border,
        "output_offset": info.output_offset,
        "min_size": info.min_size,
        "export_shape": list(info.export_shape),
        # True: the engine pads H, W to the divisor itself; feed any size in the profile, do not pad.
        "pad_in_graph": info.pad_in_graph,
        # Volumes: 3 spatial dims (NCDHW) and the divisor of each axis (depth, height, width).
        "spatial_dims": info.spatial_dims,
        "divisors": list(info.axis_divisors),
    }


@dataclass
class EngineManifest:
    tensorrt_version: str  # the engine library's version (TensorRT or TensorRT-RTX, see ``library``)
    gpu: dict[str, Any]  # GpuInfo.to_dict(): index, name, compute_capability, memory_mib
    precision: str
    profiles: list[dict[str, list[int]]]
    inputs: list[dict[str, Any]]  # name, dtype, shape (-1 dynamic), min/opt/max
    outputs: list[dict[str, Any]]  # name, dtype, shape (-1 dynamic)
    onnx: dict[str, Any]  # path, sha256, metadata (the ONNX metadata_props, verbatim)
    model: dict[str, Any]  # model_section(): plain values for runners and the C++ sample
    builder: dict[str, Any]  # workspace_mib, opt_level, hardware_compat, version_compatible, refit, ...
    build: dict[str, Any] = field(default_factory=dict)  # seconds, created
    library: str = "tensorrt"  # "tensorrt" | "tensorrt-rtx" (manifests older than this field: tensorrt)
    runs_on: list[str] | None = None  # compute capabilities the engine runs on ("8.6", ">12.0", ">=8.0")
    engine_sha256: str = ""
    # engine/layers.summarize_layers of the builder's layer table (count, implementations, convolutions per
    # compute type); None when the library logged none
    layers: dict[str, Any] | None = None
    format: str = FORMAT
    deploy_unet_version: str = __version__

    @property
    def library_title(self) -> str:
        lib = ENGINE_LIBRARIES.get(self.library)
        return lib.title if lib else self.library

    @property
    def version_compatible(self) -> bool:
        return bool(self.builder.get("version_compatible"))

    @property
    def hardware_compat(self) -> str:
        return str(self.builder.get("hardware_compat") or "none")

    def model_info(self) -> ModelInfo:
        """The ONNX's ModelInfo (divisor, channels, normalization) the engine was built from."""
        metadata = self.onnx.get("metadata") or {}
        try:
            return ModelInfo.from_props(metadata, source="the engine manifest")
        except ArtifactError:
            m = self.model
            return ModelInfo(
                arch=m["arch"],
                divisor=int(m["divisor"]),
                in_channels=int(m["in_channels"]),
                num_classes=int(m["num_classes"]),
                mean=list(m.get("mean") or []),
                std=list(m.get("std") or []),
                input_names=[m.get("input_name", "input")],
                output_names=[m.get("output_name", "logits")],
                precision=self.precision,
                spatial_dims=int(m.get("spatial_dims", 2)),
                divisors=[int(d) for d in m.get("divisors") or []] if len(set(m.get("divisors") or [])) > 1 else [],
                extra={PAD_IN_GRAPH_KEY: "reflect" if m.get("pad_in_graph") else "none"},
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # Stable, readable order: format first.
        return {"format": data.pop("format"), **data}


def write_manifest(manifest: EngineManifest, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(path: str | os.PathLike) -> EngineManifest:
    path = Path(path)
    if not path.is_file():
        engine = path.with_suffix("") if path.suffix == ".json" else path
        raise ArtifactError(
            f"engine manifest {path} does not exist; rebuild {engine.name} with `deploy-unet build-engine` "
            "(the manifest records the TensorRT version and GPU the engine runs on)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"engine manifest {path} is not readable JSON ({exc}); rebuild the engine") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{path} is not a deploy-unet engine manifest (format {found!r}, expected {FORMAT!r})")
    fields = EngineManifest.__dataclass_fields__
    required = [k for k, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ArtifactError(f"engine manifest {path} lacks {', '.join(missing)}; rebuild the engine")
    return EngineManifest(**{k: v for k, v in data.items() if k in fields})


_version_tuple = version_tuple
_cc_tuple = cc_tuple


def check_library_gpu(manifest: EngineManifest, gpu: Any) -> None:
    """Refuse, in one line and before the library is even imported, a GPU outside the compute capabilities
    an engine's library runs on (TensorRT-RTX 1.7 has no kernels for 9.0: H100/H200 deserialize to None)."""
    if manifest.library != TENSORRT_RTX.name:
        return
    gpu = gpu if isinstance(gpu, dict) else gpu.to_dict()
    supported = manifest.runs_on or list(TENSORRT_RTX.runs_on or ())
    if not runs_on(supported, gpu["compute_capability"]):
        raise ArtifactError(
            f"this GPU, {gpu['name']} (compute capability {gpu['compute_capability']}), cannot run "
            f"{manifest.library_title} engines, which run on compute capability {' '.join(supported)}; "
            "use such a GPU, or build a TensorRT engine here with --engine-lib tensorrt"
        )


def check_compatible(manifest: EngineManifest, trt_version: str, gpu: Any) -> list[str]:
    """Refuse (ArtifactError) an engine this TensorRT/GPU cannot run; return warnings for what may be slow.

    ``gpu`` is a GpuInfo or a dict with ``name`` and ``compute_capability``; ``trt_version`` is the version of
    the manifest's library (TensorRT or TensorRT-RTX).
    """
    gpu = gpu if isinstance(gpu, dict) else gpu.to_dict()
    built_version = manifest.tensorrt_version
    built_gpu = manifest.gpu
    rebuild = "rebuild it here with `deploy-unet build-engine`"
    warnings: list[str] = []
    if manifest.library == TENSORRT_RTX.name:
        check_library_gpu(manifest, gpu)
        if _version_tuple(built_version) != _version_tuple(trt_version):
            raise ArtifactError(
                f"engine was built with TensorRT-RTX {built_version} and this is TensorRT-RTX {trt_version}; "
                f"{rebuild} --engine-lib tensorrt-rtx"
            )
        return warnings  # portable across the GPUs the library supports; kernels specialise at load (JIT)

    if manifest.version_compatible:
        built, here = _version_tuple(built_version), _version_tuple(trt_version)
        if built[:1] != here[:1] or here < built:
            raise ArtifactError(
                f"engine was built version-compatible with TensorRT {built_version}, which runs on the same "
                f"or a later {built[0]}.x only; this is TensorRT {trt_version}; {rebuild}"
            )
    elif _version_tuple(built_version) != _version_tuple(trt_version):
        raise ArtifactError(
            f"engine was built with TensorRT {built_version} and this is TensorRT {trt_version}; engines only "
            f"run on the version that built them unless built with --version-compatible; {rebuild}"
        )

    built_cc, here_cc = _cc_tuple(built_gpu.get("compute_capability", "0.0")), _cc_tuple(gpu["compute_capability"])
    where = f"{gpu['name']} (compute capability {gpu['compute_capability']})"
    built_where = f"{built_gpu.get('name')} (compute capability {built_gpu.get('compute_capability')})"
    compat = manifest.hardware_compat
    if compat == "ampere+":
        if here_cc < (8, 0):
            raise ArtifactError(
                f"engine was built hardware-compatible for Ampere and newer (compute capability >= 8.0); "
                f"this GPU is {where}; {rebuild}"
            )
    elif built_cc != here_cc:
        raise ArtifactError(
            f"engine was built for {built_where} and this GPU is {where}; an engine runs only on the compute "
            f"capability it was built for (or any Ampere+ GPU with --hardware-compat ampere+); {rebuild}"
        )
    elif compat == "none" and built_gpu.get("name") != gpu["name"]:
        warnings.append(
            f"engine was built on {built_where} and runs on {where}: same compute capability, so TensorRT "
            "will load it, but its kernels were tuned for the other GPU; rebuild here for best speed"
        )
    return warnings
