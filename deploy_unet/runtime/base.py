"""The runner protocol every backend implements (after Polygraphy's ``BaseRunner``).

A runner is a context manager with ``input_spec`` and ``infer(feeds) -> outputs`` on NumPy arrays.
The base class owns the checks every backend needs, so they are stated once: input names, dtype,
rank, channel count, finite values, and the shape contract (clear error, or pad and crop back).
A model that pads inside its graph (``export --pad-in-graph``) takes any H, W above its minimum:
the runner neither refuses nor pads those.
Volumes are the same checks on NCDHW arrays: the contract's ``spatial_dims`` (3) sets the rank, and a
divisor per axis is checked (and padded to) on depth, height and width.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ConfigError, DeployUnetError, ShapeContractError
from deploy_unet.shapes import (
    ShapeContract,
    check_size_pad_in_graph,
    crop_back,
    layout_name,
    pad_to_multiple,
    validate_shape,
)

OUTPUT_KINDS = ("logits", "mask")
MASK_OUTPUT = "mask"


def check_output_kind(output: str) -> str:
    """``--output logits`` (the net's scores) or ``mask`` (argmax over classes, computed where the net ran)."""
    if output not in OUTPUT_KINDS:
        raise ConfigError(f"--output {output!r} is not valid; choose one of: {', '.join(OUTPUT_KINDS)}")
    return output


def mask_dtype(num_classes: int) -> str:
    """The smallest type a class index fits: uint8 up to 256 classes (1 byte a pixel), else int32."""
    return "uint8" if num_classes <= 256 else "int32"


def argmax_mask(logits: np.ndarray) -> np.ndarray:
    """NCHW logits -> NHW class indices, as the device-side argmax of the CUDA runners gives them."""
    return logits.argmax(axis=1).astype(mask_dtype(logits.shape[1]))


def runner_precision(runner) -> str:
    """What a runner computes in: a torch runner's own setting (it runs what it is told, whatever the ONNX
    metadata it was rebuilt from says), else the precision its artifact records, else fp32."""
    if getattr(runner, "backend", "") in ("torch", "openvino"):  # openvino: what it compiled (bf16 on AMX/BF16 CPUs)
        return getattr(runner, "precision", "fp32")
    return getattr(getattr(runner, "info", None), "precision", None) or "fp32"


def no_mark(_phase: str) -> None:
    """The phase marker of an ``infer_phased`` call nobody times."""


def backend_label(runner) -> str:
    """The backend and how it runs, for tables: ``torch fp16 channels_last cuda-graph``, ``tensorrt cuda-graph``."""
    mode = getattr(runner, "mode", "")
    return f"{runner.backend} {mode}" if mode and mode != "fp32" else runner.backend


def contract_options(info, divisor: int | None = None) -> dict:
    """The shape arguments of ``Runner.__init__`` that a file's ``ModelInfo`` gives (``info`` None, a file without
    metadata: divisor 1, no contract); a ``divisor`` given overrides the metadata's. The ONNX Runtime and OpenVINO
    runners open files that may have none."""
    if divisor is None:
        divisor = info.divisor if info else 1
    return {
        "divisor": divisor,
        "in_channels": info.in_channels if info else None,
        "contract_reason": info.contract_reason if info else "",
        "contract": info.shape_contract if info else None,
        "pad_in_graph": bool(info and info.pad_in_graph),
    }


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # NumPy dtype name, e.g. "float32"
    shape: tuple  # ints for fixed dims, strings for symbolic ones, None when unknown


class Runner(abc.ABC):
    """Base runner: subclasses implement ``_activate``, ``_deactivate``, ``_infer`` and the specs."""

    backend: str = "base"

    def __init__(
        self,
        divisor: int = 1,
        in_channels: int | None = None,
        pad: bool = False,
        pad_mode: str = "reflect",
        contract_reason: str = "",
        contract: ShapeContract | None = None,
        pad_in_graph: bool = False,
        spatial_dims: int | None = None,
    ):
        self.divisor = divisor
        self.pad_in_graph = pad_in_graph
        self.in_channels = in_channels
        self.pad = pad
        self.pad_mode = pad_mode
        self.contract_reason = contract_reason
        # The general contract (valid sizes, output size); a divisor-only one keeps the divisor's messages.
        # Spatial dims: the contract's (3 for a volume net), else ``spatial_dims``, else 2 (NCHW).
        dims = spatial_dims or (contract.spatial_dims if contract is not None else 2)
        if contract is None or (contract.is_divisor_only and not contract.divisors):
            contract = ShapeContract(divisor, reason=contract_reason, spatial_dims=dims)
        elif contract.spatial_dims != dims:
            contract = contract.with_spatial_dims(dims)
        self.contract = contract
        # Overlap-tile inference (runtime/tiling.py): set with ``enable_tiling``.
        self.tile = False
        self.tile_size: tuple[int, int] | None = None
        self.tile_batch: int | None = None
        self.is_active = False

    def enable_tiling(self, tile_size=None, tile_batch: int | None = None) -> Runner:
        """Run every input as mirror-padded tiles of a valid size and stitch full-size outputs.

        ``tile_size``: int or (H, W), a valid input size (default: the export size in the metadata);
        ``tile_batch``: tiles per call (default: the backend's maximum batch, else 8).
        """
        from deploy_unet.runtime.tiling import resolve_tile_size

        if self.pad:
            raise ConfigError("--pad and --tile cannot be combined; --tile already handles any image size")
        info = getattr(self, "info", None)
        self.tile_size = resolve_tile_size(self.contract, tile_size, getattr(info, "export_shape", None))
        self.tile_batch = tile_batch or getattr(self, "max_batch", None)
        self.tile = True
        return self

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- protocol --------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def input_spec(self) -> dict[str, TensorSpec]: ...

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the feeds against the contract, run (padding when asked), crop outputs back."""
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__} is not active; use it as a context manager")
        if self.tile and self.contract.spatial_dims != 2:
            raise ConfigError(
                "--tile runs 2D images; for a volume use sliding-window inference (predict --sw-batch/--overlap)"
            )
        if self.pad and not self.contract.is_divisor_only:
            raise ConfigError(
                "--pad cannot give a full-size output for a net whose output is smaller than its input "
                f"(input must be {self.contract.rule()}); use --tile (tile=True) instead"
            )
        feeds = self._checked_feeds(feeds)
        if self.tile:
            return self._infer_tiled(feeds)
        if not self.pad or self.pad_in_graph:
            return self._infer(feeds)
        padded, paddings = {}, {}
        dims = self.contract.spatial_dims
        divisor = self.contract.divisors or self.divisor
        for name, array in feeds.items():
            padded[name], paddings[name] = pad_to_multiple(array, divisor, self.pad_mode, spatial_dims=dims)
        outputs = self._infer(padded)
        padding = next(iter(paddings.values()))
        padded_hw = next(iter(padded.values())).shape[-dims:]
        # Crop only outputs at the padded input's resolution (segmentation maps); leave others alone.
        return {
            name: crop_back(out, padding) if out.ndim >= dims and out.shape[-dims:] == padded_hw else out
            for name, out in outputs.items()
        }

    def _checked_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.input_spec
        unknown = sorted(set(feeds) - set(spec))
        missing = sorted(set(spec) - set(feeds))
        if unknown or missing:
            raise DeployUnetError(
                f"inputs {sorted(feeds)} do not match the model's inputs {sorted(spec)}; "
                "feed exactly the model's input names"
            )
        checked = {}
        for name, array in feeds.items():
            array = np.asarray(array)
            if array.dtype != np.float32:
                if not np.issubdtype(array.dtype, np.number):
                    raise DeployUnetError(f"input {name!r} has dtype {array.dtype}; feed float32 NCHW data")
                array = array.astype(np.float32)
            dims = self.contract.spatial_dims
            layout = layout_name(dims)
            if array.ndim != 2 + dims:
                letters = ", ".join(layout)
                raise ShapeContractError(
                    f"input {name!r} has shape {array.shape}; expected {2 + dims}-D {layout} ({letters})")
            if self.in_channels is not None and array.shape[1] != self.in_channels:
                raise ShapeContractError(
                    f"input {name!r} has {array.shape[1]} channels; the model takes {self.in_channels} ({layout} layout)"
                )
            if not np.isfinite(array).all():
                raise DeployUnetError(f"input {name!r} contains NaN or Inf values; clean the input data first")
            if self.tile:
                pass  # any size: tiling pads to valid tiles
            elif self.pad_in_graph:
                check_size_pad_in_graph(array.shape[-2:], self.divisor)
            elif self.contract.is_divisor_only and not self.pad:
                validate_shape(array.shape[2:], self.contract.divisors or self.divisor,
                               self.contract_reason or self.contract.reason, "or run with pad=True (--pad)", dims)
            elif not self.contract.is_divisor_only:
                self.contract.validate(array.shape[2:], "or run with tile=True (--tile) for any size")
            checked[name] = np.ascontiguousarray(array)
        return checked

    def _infer_tiled(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from deploy_unet.runtime.tiling import tile_infer

        if len(feeds) != 1:
            raise ConfigError(f"tiling runs single-input nets; this model has inputs {sorted(feeds)}")
        ((name, image),) = feeds.items()
        return tile_infer(lambda x: self._infer({name: x}), image, self.contract, self.tile_size, self.tile_batch)

    # -- backend hooks ---------------------------------------------------------------------------
    def _activate(self) -> None:  # noqa: B027  (optional hook)
        pass

    def _deactivate(self) -> None:  # noqa: B027  (optional hook)
        pass

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
