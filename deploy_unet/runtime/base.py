"""The runner protocol every backend implements (after Polygraphy's ``BaseRunner``).

A runner is a context manager with ``input_spec`` and ``infer(feeds) -> outputs`` on NumPy arrays.
The base class owns the checks every backend needs, so they are stated once: input names, dtype,
rank, channel count, finite values, and the shape contract (clear error, or pad and crop back).
A model that pads inside its graph (``export --pad-in-graph``) takes any H, W above its minimum:
the runner neither refuses nor pads those.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import DeployUnetError, ShapeContractError
from deploy_unet.shapes import check_size_pad_in_graph, crop_back, pad_to_multiple, validate_shape


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
        pad_in_graph: bool = False,
    ):
        self.divisor = divisor
        self.pad_in_graph = pad_in_graph
        self.in_channels = in_channels
        self.pad = pad
        self.pad_mode = pad_mode
        self.contract_reason = contract_reason
        self.is_active = False

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
        feeds = self._checked_feeds(feeds)
        if not self.pad or self.pad_in_graph:
            return self._infer(feeds)
        padded, paddings = {}, {}
        for name, array in feeds.items():
            padded[name], paddings[name] = pad_to_multiple(array, self.divisor, self.pad_mode)
        outputs = self._infer(padded)
        padding = next(iter(paddings.values()))
        padded_hw = next(iter(padded.values())).shape[-2:]
        # Crop only outputs at the padded input's resolution (segmentation maps); leave others alone.
        return {
            name: crop_back(out, padding) if out.ndim >= 2 and out.shape[-2:] == padded_hw else out
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
            if array.ndim != 4:
                raise ShapeContractError(f"input {name!r} has shape {array.shape}; expected 4-D NCHW (N, C, H, W)")
            if self.in_channels is not None and array.shape[1] != self.in_channels:
                raise ShapeContractError(
                    f"input {name!r} has {array.shape[1]} channels; the model takes {self.in_channels} (NCHW layout)"
                )
            if not np.isfinite(array).all():
                raise DeployUnetError(f"input {name!r} contains NaN or Inf values; clean the input data first")
            if self.pad_in_graph:
                check_size_pad_in_graph(array.shape[-2:], self.divisor)
            elif not self.pad:
                validate_shape(array.shape[-2:], self.divisor, self.contract_reason, "or run with pad=True (--pad)")
            checked[name] = np.ascontiguousarray(array)
        return checked

    # -- backend hooks ---------------------------------------------------------------------------
    def _activate(self) -> None:  # noqa: B027  (optional hook)
        pass

    def _deactivate(self) -> None:  # noqa: B027  (optional hook)
        pass

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
