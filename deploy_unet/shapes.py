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


# -- the general contract: valid sizes and the output size for each ---------------------------------
@dataclass(frozen=True)
class ShapeContract:
    """Which input sizes a net takes and what output size it gives, per spatial dim.

    Valid inputs are ``divisor * k + remainder`` with ``k`` such that the size is at least ``min_size``;
    the output is ``input - border`` (``border`` pixels lost in all, ``border // 2`` per side). A padded
    net is ``ShapeContract(divisor)``: remainder 0, border 0, output == input, exactly today's
    divisibility rule and messages. A valid-convolution UNet states the others (``valid_unet_contract``).
    """

    divisor: int
    remainder: int = 0
    border: int = 0
    min_size: int = 0  # 0: the smallest positive size of the form divisor * k + remainder
    reason: str = ""

    def __post_init__(self) -> None:
        if self.divisor < 1 or not 0 <= self.remainder < self.divisor or self.border < 0 or self.border % 2:
            raise ValueError(f"inconsistent shape contract {self}")
        if self.min_size > 0:  # store the smallest valid size itself, so equal contracts compare equal
            object.__setattr__(self, "min_size", self.smallest)

    @property
    def is_divisor_only(self) -> bool:
        return self.remainder == 0 and self.border == 0 and self.min_size <= self.divisor

    @property
    def smallest(self) -> int:
        first = self.remainder if self.remainder > 0 else self.divisor
        if self.min_size > first:
            first += -(-(self.min_size - first) // self.divisor) * self.divisor
        return first

    @property
    def border_per_side(self) -> int:
        return self.border // 2

    def is_valid_input(self, value: int) -> bool:
        return value >= self.smallest and (value - self.remainder) % self.divisor == 0

    def output_size(self, value: int) -> int:
        if not self.is_valid_input(value):
            raise ShapeContractError(self.describe_invalid("size", value))
        return value - self.border

    def nearest_valid_inputs(self, value: int) -> tuple[int | None, int]:
        """The nearest valid sizes below (None if there is none) and above-or-equal ``value``."""
        if self.is_divisor_only:
            return nearest_valid(value, self.divisor)
        if value <= self.smallest:
            return None, self.smallest
        above = value + (self.remainder - value) % self.divisor
        below = above - self.divisor if above != value else value - self.divisor
        return (below if below >= self.smallest else None), above

    def smallest_input_for_output(self, value: int) -> int:
        """The smallest valid input whose output is at least ``value`` pixels."""
        return self.nearest_valid_inputs(max(value + self.border, 1))[1]

    def rule(self) -> str:
        if self.is_divisor_only:
            return f"divisible by {self.divisor}" + (f" (= {self.reason})" if self.reason else "")
        form = f"{self.divisor}k" + (f" + {self.remainder}" if self.remainder else "")
        why = f", {self.reason}" if self.reason else ""
        return f"a valid input size ({form} >= {self.smallest}{why}; output = input - {self.border})"

    def describe_invalid(self, name: str, value: int, pad_hint: str = "") -> str:
        below, above = self.nearest_valid_inputs(value)
        nearest = f"{above} or {below}" if below else f"{above}"
        hint = f"; {pad_hint}" if pad_hint else ""
        return f"{name} {value} is not {self.rule()}; nearest valid: {nearest}{hint}"

    def check_dim(self, name: str, value: int, pad_hint: str = "") -> None:
        if self.is_divisor_only:
            check_dim(name, value, self.divisor, self.reason, pad_hint)
        elif not self.is_valid_input(value):
            raise ShapeContractError(self.describe_invalid(name, value, pad_hint))

    def validate(self, hw: Sequence[int], pad_hint: str = "") -> None:
        if len(hw) != 2:
            raise ShapeContractError(f"expected a spatial shape (H, W), got {tuple(hw)}")
        for name, value in zip(("height", "width"), hw):
            self.check_dim(name, int(value), pad_hint)

    def to_props(self) -> dict[str, int]:
        return {"size_remainder": self.remainder, "border": self.border, "min_size": self.smallest}


VALID_BLOCK_LOSS = 4  # two unpadded 3x3 convs per level lose 1 pixel per side each


def valid_unet_contract(depth: int, up_loss: int = 0, block_loss: int = VALID_BLOCK_LOSS) -> ShapeContract:
    """The contract of the original (unpadded) UNet: ``depth`` poolings, ``block_loss`` pixels lost per
    conv block, ``up_loss`` more by each up-step (0 for the 2x2 up-convolution).

    Encoder: s_0 = h, s_{k+1} = (s_k - L) / 2, each s_k - L even, so h = 2**d * k - L (mod 2**d).
    Bottom: x_d = s_d - L. Decoder: x_k = 2 x_{k+1} - (u + L). Solving the recurrences:

        out = h - [L * (2**(d+1) - 1) + (u + L) * (2**d - 1)]

    (the paper: d=4, L=4, u=0 gives 572 -> 572 - 184 = 388). Every intermediate size stays >= 1 exactly
    when out >= 1, since a size <= 0 only shrinks further along the decoder.
    """
    divisor = 2**depth
    border = block_loss * (2 ** (depth + 1) - 1) + (up_loss + block_loss) * (divisor - 1)
    return ShapeContract(
        divisor=divisor,
        remainder=(-block_loss) % divisor,
        border=border,
        min_size=border + 1,
        reason=f"unpadded UNet depth {depth}: every level even before pooling",
    )


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
