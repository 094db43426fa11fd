"""Runners: one protocol (``Runner``) over torch, ONNX Runtime and TensorRT backends.

``open_runner(artifact, backend)`` picks the runner from the artifact's extension and the backend
name, so validate, bench and the pipeline never need to know which backend they are driving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.runtime.base import Runner, TensorSpec

__all__ = ["BACKENDS", "Runner", "TensorSpec", "open_runner", "run_onnx", "runner_info"]

# ONNX Runtime execution providers per backend name, in priority order (ORT falls back along the list).
ORT_PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Which backends can run which artifact kind; the first is the default.
BACKENDS_BY_SUFFIX = {
    ".pt": ("torch",),
    ".pth": ("torch",),
    ".onnx": ("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "torch", "openvino"),
    ".engine": ("tensorrt",),
    ".plan": ("tensorrt",),
    ".xml": ("openvino",),  # OpenVINO IR (.xml + .bin), deploy-unet convert-openvino
}
BACKENDS = ("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt", "openvino")
# Runner options only some backends have, with the CLI flag that sets each (for the refusal's wording).
TORCH_ONLY_OPTIONS = {"torch_precision": "--torch-precision", "channels_last": "--channels-last",
                      "compile": "--compile"}
CUDA_GRAPH_BACKENDS = ("torch", "tensorrt")
OPENVINO_ONLY_OPTIONS = {"ov_device": "--ov-device", "ov_precision": "--ov-precision"}


def open_runner(
    artifact: str | os.PathLike,
    backend: str | None = None,
    pad: bool = False,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
    tile_batch: int | None = None,
    **options: Any,
) -> Runner:
    """The runner for ``artifact`` (not yet activated: use it as a context manager).

    ``tile``: overlap-tile inference (``Runner.enable_tiling``): any image size in, full-size outputs,
    tiles of ``tile_size`` (default: the export size), ``tile_batch`` tiles per call.

    - ``.pt``/``.pth`` -> torch (options: ``device``, ``threads``, ``strict``, ``allow_tf32``, and the speed
      options ``torch_precision`` fp32/fp16, ``channels_last``, ``cuda_graph``, ``compile`` MODE).
    - every backend: ``output="logits"`` (default) or ``"mask"`` (argmax over classes, on the device for the
      CUDA runners, returned as the single output ``mask``).
    - ``.onnx`` -> ONNX Runtime on CPU; ``onnxruntime-cuda`` / ``onnxruntime-trt`` pick the CUDA /
      TensorRT execution providers (options: ``threads``, ``providers``); ``torch`` builds the net
      named in the ONNX metadata with the weights of ``checkpoint=`` (options: ``device``).
    - ``.engine``/``.plan`` -> TensorRT (needs the ``tensorrt`` extra and a CUDA device; ``cuda_graph``).
    - ``.xml`` (OpenVINO IR) and ``.onnx`` with ``backend="openvino"`` -> OpenVINO (the ``openvino`` extra;
      options: ``ov_device`` CPU (default) | GPU | NPU | AUTO, ``ov_precision`` auto (OpenVINO's default:
      bf16 on CPUs with AVX512-BF16/AMX, recorded and gated) | f32 | bf16 | f16, ``threads``).
    """
    runner = _open_runner(artifact, backend, pad, **options)
    if tile:
        runner.enable_tiling(tile_size, tile_batch)
    return runner


def _open_runner(artifact: str | os.PathLike, backend: str | None, pad: bool, **options: Any) -> Runner:
    path = Path(artifact)
    suffix = path.suffix.lower()
    if suffix not in BACKENDS_BY_SUFFIX:
        raise ConfigError(
            f"artifact {path} has an unknown extension {suffix or '(none)'!r}; "
            f"expected one of: {', '.join(BACKENDS_BY_SUFFIX)}"
        )
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist; check the path")
    valid = BACKENDS_BY_SUFFIX[suffix]
    backend = (backend or valid[0]).lower()
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not known; choose one of: {', '.join(BACKENDS)}")
    if backend not in valid:
        raise ConfigError(f"backend {backend!r} cannot run a {suffix} file; for {suffix} choose one of: {', '.join(valid)}")
    _check_backend_options(backend, options)

    if backend == "torch":
        from deploy_unet.runtime.torch_runner import TorchRunner

        torch_options = {
            k: options[k] for k in ("device", "threads", "strict", "allow_tf32", "output", "channels_last",
                                    "cuda_graph", "compile") if options.get(k) is not None
        }
        if options.get("torch_precision"):
            torch_options["precision"] = options["torch_precision"]
        if suffix == ".onnx":
            from deploy_unet.describe import read_model_info

            checkpoint = options.get("checkpoint")
            if checkpoint is None:
                raise ConfigError(
                    f"backend 'torch' for {path.name} runs the net named in its metadata and needs the "
                    "weights: pass --checkpoint FILE (the checkpoint it was exported from)"
                )
            return TorchRunner.from_model_info(read_model_info(path), checkpoint, pad=pad, **torch_options)
        return TorchRunner.from_checkpoint(path, pad=pad, **torch_options)

    if backend.startswith("onnxruntime"):
        from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

        providers = options.get("providers") or ORT_PROVIDERS[backend]
        return OnnxRuntimeRunner(path, providers=list(providers), threads=options.get("threads"), pad=pad,
                                 output=options.get("output") or "logits", spinning=options.get("spinning"))

    if backend == "openvino":
        from deploy_unet.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(path, device=options.get("ov_device") or "CPU",
                              precision=options.get("ov_precision") or "auto", threads=options.get("threads"),
                              pad=pad, output=options.get("output") or "logits")

    try:  # tensorrt: imported only when asked for, it needs TensorRT and CUDA
        from deploy_unet.runtime.tensorrt_runner import TensorRTRunner
    except ImportError as exc:
        raise MissingDependencyError(
            f"running {path.name} needs TensorRT ({exc}); install the extra with "
            "`pip install deploy-unet[tensorrt]` on a machine with an NVIDIA GPU"
        ) from None
    ignored = ("checkpoint", "device", "providers", "strict", "threads", "allow_tf32", "spinning", *TORCH_ONLY_OPTIONS,
               *OPENVINO_ONLY_OPTIONS)
    trt_options = {k: v for k, v in options.items() if k not in ignored and v is not None}
    return TensorRTRunner(path, pad=pad, **trt_options)


def _check_backend_options(backend: str, options: dict[str, Any]) -> None:
    """A speed option the chosen backend does not have is a mistake to name, not to ignore silently."""
    if backend != "torch":
        for key, flag in TORCH_ONLY_OPTIONS.items():
            if options.get(key) and not (key == "torch_precision" and options[key] == "fp32"):
                raise ConfigError(f"{flag} applies to the torch backend only, not {backend!r}; drop it, or run a "
                                  ".pt checkpoint (or the ONNX with --backend torch --checkpoint FILE)")
    if backend != "openvino":
        for key, flag in OPENVINO_ONLY_OPTIONS.items():
            if options.get(key):
                raise ConfigError(f"{flag} applies to the openvino backend only, not {backend!r}; drop it, or pass "
                                  "--backend openvino")
    if options.get("cuda_graph") and backend not in CUDA_GRAPH_BACKENDS:
        raise ConfigError(f"--cuda-graph applies to the {' and '.join(CUDA_GRAPH_BACKENDS)} backends, not {backend!r}; "
                          "drop it")


def runner_info(runner: Runner):
    """The ModelInfo a runner carries (ONNX metadata, checkpoint, or engine manifest), or None."""
    return getattr(runner, "info", None)


def run_onnx(
    path: str | os.PathLike,
    array: np.ndarray,
    pad: bool = False,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
    tile_batch: int | None = None,
    **runner_options,
) -> np.ndarray:
    """Run an ONNX model's single input on ONNX Runtime with the shape contract checked first.

    Without ``pad`` a non-divisible H/W raises a one-line ShapeContractError (instead of ORT's
    "Concat ... mismatched dimensions"); with ``pad`` the input is padded, run and cropped back.
    With ``tile`` any H/W is run as mirror-padded overlapping tiles and gets a full-size output (the
    way to run a valid-convolution UNet, whose output is smaller than its input).
    """
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, pad=pad, **runner_options)
    if tile:
        runner.enable_tiling(tile_size, tile_batch)
    with runner:
        (name,) = runner.input_spec
        return runner.infer({name: array})[runner.output_names[0]]
