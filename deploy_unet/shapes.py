"""The shape contract: spatial dims must be divisible by the net's divisor.

A UNet of depth d pools d times; a 7x7 map pools to 3x3 and upsamples to 6x6, which then cannot be
concatenated with its 7x7 skip. So H and W must be multiples of ``2**depth`` (32 for a five-pool FCN).
This module validates shapes, suggests the nearest valid sizes, and pads to a multiple / crops back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ShapeContractError

PAD_MODES = ("reflect", "constant", "edge")


def nearest_valid(value: int, divisor: int) -> tuple[int | None, int]:
    """The nearest valid sizes below (None if there is none > 0) and above-or-equal ``value``."""
    above = -(-value // divisor) * divisor if value > 0 else divisor
    below = (value // divisor) * divisor
    if below == above:
        below = above - divisor
    return (below if below > 0 else None), above


def check_dim(name: str, value: int, divisor: int, reason: str = "", pad_hint: str = "or pass --pad") -> None:
    """Raise ShapeContractError naming the dim, value, rule, nearest valid sizes and the pad alternative."""
    if value > 0 and value % divisor == 0:
        return
    below, above = nearest_valid(value, divisor)
    rule = f"divisible by {divisor}" + (f" (= {reason})" if reason else "")
    nearest = f"{above} or {below}" if below else f"{above}"
    hint = f"; {pad_hint}" if pad_hint else ""
    raise ShapeContractError(f"{name} {value} is not {rule}; nearest valid: {nearest}{hint}")


def validate_shape(
    hw: Sequence[int], divisor: int, depth_hint: str = "", pad_hint: str = "or pass --pad"
) -> None:
    """Check (H, W) against the divisor; the first failing dim raises a one-line ShapeContractError."""
    if len(hw) != 2:
        raise ShapeContractError(f"expected a spatial shape (H, W), got {tuple(hw)}")
    for name, value in zip(("height", "width"), hw):
        check_dim(name, int(value), divisor, depth_hint, pad_hint)


def is_valid(hw: Sequence[int], divisor: int) -> bool:
    return all(int(v) > 0 and int(v) % divisor == 0 for v in hw)


@dataclass(frozen=True)
class Padding:
    """How an NCHW array was padded (bottom and right), so it can be cropped back."""

    height: int
    width: int
    pad_bottom: int
    pad_right: int

    @property
    def is_noop(self) -> bool:
        return self.pad_bottom == 0 and self.pad_right == 0


def pad_to_multiple(
    array: np.ndarray, divisor: int, mode: str = "reflect", value: float = 0.0
) -> tuple[np.ndarray, Padding]:
    """Pad the last two dims up to a multiple of ``divisor`` at the bottom/right.

    ``reflect`` (default) avoids the hard edge that constant padding puts in front of the first convs,
    which otherwise changes predictions near the border.
    """
    if mode not in PAD_MODES:
        raise ShapeContractError(f"pad mode {mode!r} is not valid; choose one of: {', '.join(PAD_MODES)}")
    h, w = array.shape[-2:]
    pad_h = (-h) % divisor
    pad_w = (-w) % divisor
    info = Padding(h, w, pad_h, pad_w)
    if info.is_noop:
        return array, info
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    if mode == "constant":
        return np.pad(array, widths, mode="constant", constant_values=value), info
    return np.pad(array, widths, mode=mode), info


def crop_back(array: np.ndarray, padding: Padding) -> np.ndarray:
    """Undo ``pad_to_multiple`` on an output whose spatial size equals the padded input's."""
    return array[..., : padding.height, : padding.width]


# -- padding inside the graph (export --pad-in-graph) ------------------------------------------------


def min_size_pad_in_graph(divisor: int) -> int:
    """The smallest H or W a pad-in-graph file takes: reflect padding needs pad < size.

    The pad is ``(-s) % divisor``; it is below ``s`` for every ``s >= divisor // 2 + 1`` (and for
    every ``s >= 1`` when ``divisor`` is 1).
    """
    return 1 if divisor <= 1 else divisor // 2 + 1


def check_size_pad_in_graph(hw: Sequence[int], divisor: int) -> None:
    """Any H, W >= ``min_size_pad_in_graph(divisor)``; else a one-line ShapeContractError."""
    if len(hw) != 2:
        raise ShapeContractError(f"expected a spatial shape (H, W), got {tuple(hw)}")
    smallest = min_size_pad_in_graph(divisor)
    for name, value in zip(("height", "width"), hw):
        if int(value) < smallest:
            raise ShapeContractError(
                f"{name} {int(value)} is below {smallest}, the smallest size this pad-in-graph model takes "
                f"(it reflect-pads up to a multiple of {divisor}, and reflect padding must be shorter than "
                f"the side it mirrors); use a larger input"
            )
