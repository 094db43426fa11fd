"""Volume pre- and post-processing: NumPy in, NumPy out, no files (``processing.py``'s counterpart for scans).

Intensity handling comes from the net's metadata (``intensity``, set at export with ``--intensity``; predict's
``--intensity`` overrides), as the anchors do it:

- ``none``: the values as stored, as float32, then the metadata's ``mean``/``std`` when it has them;
- ``zscore``: per volume ``(x - mean(x)) / std(x)`` over all voxels (nnU-Net's ``ZScoreNormalization`` without
  a mask; MONAI's ``NormalizeIntensity``), the usual for MR;
- ``ct:LO,HI``: clip to the window [LO, HI] and scale it to [0, 1] (MONAI's ``ScaleIntensityRange(a_min=LO,
  a_max=HI, b_min=0, b_max=1, clip=True)``, as MONAI's CT bundles do, e.g. the spleen's ``ct:-57,164``);
- ``ct:LO,HI,MEAN,STD``: clip to [LO, HI], then ``(x - MEAN) / STD`` (nnU-Net's ``CTNormalization`` with the
  dataset's percentiles and foreground statistics).

Resampling (``spacing`` in the metadata, ``--spacing`` at export; predict ``--resample``): the volume is
resampled linearly (separably, half-voxel centres) to the net's voxel spacing, the mask comes back to the
input's own grid by nearest neighbour, so it has the input's shape and geometry exactly.

Arrays are (i, j, k[, c]) as ``deploy_unet.io`` reads them; a net's (D, H, W) are those three axes in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ConfigError, ShapeContractError

INTENSITY_KEY = "intensity"
SPACING_KEY = "spacing"
INTENSITY_HELP = "none | zscore | ct:LO,HI (clip, scale to 0..1) | ct:LO,HI,MEAN,STD (clip, z-score)"


@dataclass(frozen=True)
class Intensity:
    kind: str = "none"  # none | zscore | ct
    low: float = 0.0
    high: float = 0.0
    mean: float | None = None
    std: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Intensity:
        text = (text or "none").strip().lower()
        if text in ("none", "zscore"):
            return cls(text)
        m = re.fullmatch(r"ct:\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)(?:\s*,\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+))?\s*", text)
        if not m:
            raise ConfigError(f"intensity {text!r} is not valid; use {INTENSITY_HELP}")
        try:
            low, high = float(m.group(1)), float(m.group(2))
            mean = float(m.group(3)) if m.group(3) is not None else None
            std = float(m.group(4)) if m.group(4) is not None else None
        except ValueError:
            raise ConfigError(f"intensity {text!r} holds a value that is not a number; use {INTENSITY_HELP}") from None
        if not high > low:
            raise ConfigError(f"intensity {text!r}: the window's high {high:g} must be above its low {low:g}")
        if std is not None and std <= 0:
            raise ConfigError(f"intensity {text!r}: STD {std:g} must be > 0")
        return cls("ct", low, high, mean, std)

    def __str__(self) -> str:
        if self.kind != "ct":
            return self.kind
        tail = f",{self.mean:g},{self.std:g}" if self.mean is not None else ""
        return f"ct:{self.low:g},{self.high:g}{tail}"

    def apply(self, volume: np.ndarray, mean: Sequence[float] = (), std: Sequence[float] = ()) -> np.ndarray:
        """(C, *spatial) values -> float32 as the net takes them (``mean``/``std``: the metadata's, used by
        ``none`` only, one value or one per channel)."""
        x = np.asarray(volume, dtype=np.float32)
        if self.kind == "zscore":
            axes = tuple(range(1, x.ndim))
            m = x.mean(axis=axes, keepdims=True, dtype=np.float64)
            s = x.std(axis=axes, keepdims=True, dtype=np.float64)
            return ((x - m) / np.maximum(s, 1e-8)).astype(np.float32)
        if self.kind == "ct":
            x = np.clip(x, self.low, self.high)
            if self.mean is not None:
                return ((x - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)
            return ((x - np.float32(self.low)) / np.float32(self.high - self.low)).astype(np.float32)
        if mean or std:
            shape = (-1,) + (1,) * (x.ndim - 1)
            m = np.asarray(mean or [0.0], np.float32).reshape(shape)
            s = np.asarray(std or [1.0], np.float32).reshape(shape)
            return ((x - m) / s).astype(np.float32)
        return x


def parse_spacing(text: str | Sequence[float] | None, dims: int = 3) -> tuple[float, ...] | None:
    """``1.5`` or ``1.5x1x1`` / ``1.5,1,1`` (per array axis i, j, k, in the file's units, mm for NIfTI/DICOM)."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        parts = [p for p in re.split(r"[x,\s]+", text.strip()) if p]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"spacing {text!r} is not valid; give one number or {dims} (e.g. 1.5x1x1)") from None
    else:
        values = tuple(float(v) for v in text)
    if len(values) == 1:
        values = values * dims
    if len(values) != dims or any(v <= 0 for v in values):
        raise ConfigError(f"spacing {text!r} must be one or {dims} positive numbers (e.g. 1.5x1x1)")
    return values


def parse_window(text: str) -> tuple[int, int, int] | None:
    """``DxHxW`` -> (D, H, W); None for any other form (``N``, ``HxW``: the caller's 2D parser)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        return None
    dims = tuple(int(g) for g in m.groups())
    if min(dims) < 1:
        raise ConfigError(f"window {text!r} must be positive")
    return dims  # type: ignore[return-value]


def volume_settings(info) -> tuple[Intensity, tuple[float, ...] | None]:
    """The intensity handling and target spacing a net's metadata records (``ModelInfo.extra``)."""
    extra = dict(getattr(info, "extra", None) or {})
    return Intensity.parse(extra.get(INTENSITY_KEY)), parse_spacing(extra.get(SPACING_KEY) or None)


def volume_props(intensity: str | None = None, spacing: str | Sequence[float] | None = None) -> dict[str, str]:
    """The metadata entries (strings, ``ModelInfo.extra``) for ``export --intensity/--spacing``, checked."""
    props = {}
    if intensity:
        props[INTENSITY_KEY] = str(Intensity.parse(intensity))
    parsed = parse_spacing(spacing)
    if parsed:
        props[SPACING_KEY] = ",".join(f"{v:g}" for v in parsed)
    return props


def to_channels_first(array: np.ndarray, channels: bool, in_channels: int, source: str) -> np.ndarray:
    """(i, j, k[, c]) -> (C, i, j, k) with the net's channel count: one channel repeated, or as many as the net."""
    if array.ndim != (4 if channels else 3):
        raise ShapeContractError(f"{source} has shape {array.shape}; a volume is 3D (with channels last, 4D)")
    x = np.moveaxis(array, -1, 0) if channels else array[None]
    if x.shape[0] == in_channels:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, in_channels, axis=0)
    raise ShapeContractError(f"{source} has {x.shape[0]} channels; the net takes {in_channels}")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def _linear_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    n = x.shape[axis]
    if n == size:
        return x
    coords = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = (coords - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def resample_linear(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, *spatial) float -> (C, *shape): linear along each spatial axis, half-voxel centres (align_corners
    False, edges clamped), one axis at a time."""
    x = np.asarray(volume, dtype=np.float32)
    for axis, size in enumerate(shape, start=1):
        x = _linear_axis(x, axis, int(size))
    return np.ascontiguousarray(x, dtype=np.float32)


def resample_nearest(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(*spatial) class ids -> (*shape) by nearest neighbour (half-voxel centres), the ids kept."""
    index = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.intp), m - 1) for n, m in zip(shape, mask.shape)]
    return np.ascontiguousarray(mask[np.ix_(*index)])


def logits_to_mask(logits: np.ndarray) -> np.ndarray:
    """(K, *spatial) scores -> (*spatial) class ids (argmax, the first on ties; one channel: logit > 0), uint8
    up to 256 classes, else uint16."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).astype(np.uint8)
    return logits.argmax(axis=0).astype(np.uint8 if logits.shape[0] <= 256 else np.uint16)
