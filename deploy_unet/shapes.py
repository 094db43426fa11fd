"""The shape contract: spatial dims must be divisible by the net's divisor.

A UNet of depth d pools d times; a 7x7 map pools to 3x3 and upsamples to 6x6, which then cannot be
concatenated with its 7x7 skip. So H and W must be multiples of ``2**depth`` (32 for a five-pool FCN).
This module validates shapes, suggests the nearest valid sizes, and pads to a multiple / crops back.

Volumes (NCDHW) are the same rule in three spatial dims: a divisor per axis, either one int for every axis
or one per axis (nnU-Net's anisotropic nets pool depth fewer times than height and width), checked and
padded per axis; the 2D API and its messages are the N = 2 case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ShapeContractError

PAD_MODES = ("reflect", "constant", "edge")
# The names of the spatial axes, by how many there are (NCHW: height, width; NCDHW: depth, height, width).
AXIS_NAMES = {1: ("width",), 2: ("height", "width"), 3: ("depth", "height", "width")}
_AXIS_LETTERS = {1: "W", 2: "H, W", 3: "D, H, W"}


def axis_names(spatial_dims: int) -> tuple[str, ...]:
    """``height, width`` for 2 spatial dims, ``depth, height, width`` for 3."""
    if spatial_dims not in AXIS_NAMES:
        raise ShapeContractError(f"{spatial_dims} spatial dims are not supported; use 2 (NCHW) or 3 (NCDHW)")
    return AXIS_NAMES[spatial_dims]


def layout_name(spatial_dims: int) -> str:
    """``NCHW`` / ``NCDHW``: the layout a runner takes, for messages."""
    return "NC" + _AXIS_LETTERS.get(spatial_dims, "?").replace(", ", "")


def per_axis(divisor: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """One divisor per spatial axis: an int repeated, or a sequence checked for its length."""
    if isinstance(divisor, (int, np.integer)):
        return (int(divisor),) * spatial_dims
    values = tuple(int(d) for d in divisor)
    if len(values) != spatial_dims:
        raise ShapeContractError(
            f"{len(values)} divisors {values} given for {spatial_dims} spatial dims "
            f"({', '.join(axis_names(spatial_dims))}); give one divisor, or one per axis"
        )
    if any(d < 1 for d in values):
        raise ShapeContractError(f"divisors {values} must all be >= 1")
    return values


def lcm_divisor(divisors: Sequence[int]) -> int:
    """The one int that every per-axis divisor divides (a size divisible by it is valid on every axis)."""
    out = 1
    for d in divisors:
        out = out * int(d) // np.gcd(out, int(d))
    return int(out)


def _spatial_shape_error(shape: Sequence[int], spatial_dims: int | None = None) -> ShapeContractError:
    letters = _AXIS_LETTERS.get(spatial_dims or 2, "H, W")
    return ShapeContractError(f"expected a spatial shape ({letters}), got {tuple(shape)}")


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
    hw: Sequence[int],
    divisor: int | Sequence[int],
    depth_hint: str = "",
    pad_hint: str = "or pass --pad",
    spatial_dims: int | None = None,
) -> None:
    """Check (H, W), or (D, H, W), against the divisor (one int, or one per axis); the first failing axis
    raises a one-line ShapeContractError naming it. ``spatial_dims`` (default: 2, or the number of per-axis
    divisors) is how many spatial dims the net takes."""
    if spatial_dims is None:
        spatial_dims = 2 if isinstance(divisor, (int, np.integer)) else len(tuple(divisor))
    if len(hw) != spatial_dims:
        raise _spatial_shape_error(hw, spatial_dims)
    divisors = per_axis(divisor, spatial_dims)
    for name, value, axis_divisor in zip(axis_names(spatial_dims), hw, divisors):
        check_dim(name, int(value), axis_divisor, depth_hint, pad_hint)


def is_valid(hw: Sequence[int], divisor: int | Sequence[int]) -> bool:
    divisors = per_axis(divisor, len(hw))
    return all(int(v) > 0 and int(v) % d == 0 for v, d in zip(hw, divisors))


def nearest_valid_shape(shape: Sequence[int], divisor: int | Sequence[int]) -> tuple[int, ...]:
    """The smallest valid size >= each axis (per-axis divisors allowed)."""
    divisors = per_axis(divisor, len(shape))
    return tuple(nearest_valid(int(v), d)[1] for v, d in zip(shape, divisors))


@dataclass(frozen=True)
class Padding:
    """How an NCHW (or NCDHW) array was padded (bottom and right, and back for depth), so it can be cropped
    back. ``depth`` is None for 2D arrays."""

    height: int
    width: int
    pad_bottom: int
    pad_right: int
    depth: int | None = None
    pad_back: int = 0

    @property
    def is_noop(self) -> bool:
        return self.pad_bottom == 0 and self.pad_right == 0 and self.pad_back == 0

    @property
    def spatial_dims(self) -> int:
        return 2 if self.depth is None else 3

    @property
    def sizes(self) -> tuple[int, ...]:
        """The spatial size before padding: (H, W) or (D, H, W)."""
        return (self.height, self.width) if self.depth is None else (self.depth, self.height, self.width)

    @property
    def pads(self) -> tuple[int, ...]:
        """What was added at the end of each spatial axis."""
        return (self.pad_bottom, self.pad_right) if self.depth is None else (self.pad_back, self.pad_bottom, self.pad_right)


def pad_to_multiple(
    array: np.ndarray,
    divisor: int | Sequence[int],
    mode: str = "reflect",
    value: float = 0.0,
    spatial_dims: int | None = None,
) -> tuple[np.ndarray, Padding]:
    """Pad the last two dims (or the last three: ``spatial_dims=3``, or three per-axis divisors) up to a
    multiple of the divisor of each axis, at the end of each axis (bottom/right/back).

    ``reflect`` (default) avoids the hard edge that constant padding puts in front of the first convs,
    which otherwise changes predictions near the border.
    """
    if mode not in PAD_MODES:
        raise ShapeContractError(f"pad mode {mode!r} is not valid; choose one of: {', '.join(PAD_MODES)}")
    if spatial_dims is None:
        spatial_dims = 2 if isinstance(divisor, (int, np.integer)) else len(tuple(divisor))
    axis_names(spatial_dims)
    if spatial_dims not in (2, 3) or array.ndim < spatial_dims:
        raise ShapeContractError(f"cannot pad {spatial_dims} spatial dims of an array of shape {array.shape}")
    divisors = per_axis(divisor, spatial_dims)
    sizes = tuple(int(v) for v in array.shape[-spatial_dims:])
    pads = tuple((-v) % d for v, d in zip(sizes, divisors))
    if spatial_dims == 2:
        info = Padding(sizes[0], sizes[1], pads[0], pads[1])
    else:
        info = Padding(sizes[1], sizes[2], pads[1], pads[2], depth=sizes[0], pad_back=pads[0])
    if info.is_noop:
        return array, info
    widths = [(0, 0)] * (array.ndim - spatial_dims) + [(0, p) for p in pads]
    if mode == "constant":
        return np.pad(array, widths, mode="constant", constant_values=value), info
    return np.pad(array, widths, mode=mode), info


def crop_back(array: np.ndarray, padding: Padding) -> np.ndarray:
    """Undo ``pad_to_multiple`` on an output whose spatial size equals the padded input's."""
    if padding.depth is None:
        return array[..., : padding.height, : padding.width]
    return array[..., : padding.depth, : padding.height, : padding.width]


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
    # Volumes: how many spatial dims the net takes (2: NCHW, 3: NCDHW), and a divisor per axis where they
    # differ (divisor-only contracts; ``divisor`` is then their lcm, a size valid on every axis). Empty: the
    # one ``divisor`` on every axis.
    spatial_dims: int = 2
    divisors: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.divisor < 1 or not 0 <= self.remainder < self.divisor or self.border < 0 or self.border % 2:
            raise ValueError(f"inconsistent shape contract {self}")
        if self.spatial_dims not in AXIS_NAMES:
            raise ValueError(f"shape contract with {self.spatial_dims} spatial dims; use 2 or 3")
        if self.divisors:
            divisors = tuple(int(d) for d in self.divisors)
            if len(divisors) != self.spatial_dims or self.remainder or self.border or min(divisors) < 1:
                raise ValueError(f"inconsistent per-axis shape contract {self}")
            if len(set(divisors)) == 1:  # one value: the plain contract, so equal contracts compare equal
                object.__setattr__(self, "divisor", divisors[0])
                divisors = ()
            else:
                object.__setattr__(self, "divisor", lcm_divisor(divisors))
            object.__setattr__(self, "divisors", divisors)
        if self.min_size > 0:  # store the smallest valid size itself, so equal contracts compare equal
            object.__setattr__(self, "min_size", self.smallest)

    @classmethod
    def per_axis(cls, divisors: int | Sequence[int], spatial_dims: int | None = None, reason: str = "") -> ShapeContract:
        """A divisor-only contract: one int for every axis, or one divisor per axis (its length gives the dims)."""
        if spatial_dims is None:
            spatial_dims = 2 if isinstance(divisors, (int, np.integer)) else len(tuple(divisors))
        values = per_axis(divisors, spatial_dims)
        return cls(lcm_divisor(values), reason=reason, spatial_dims=spatial_dims, divisors=values)

    @property
    def axis_divisors(self) -> tuple[int, ...]:
        """The divisor of each spatial axis (depth, height, width for volumes)."""
        return self.divisors or (self.divisor,) * self.spatial_dims

    @property
    def axis_names(self) -> tuple[str, ...]:
        return axis_names(self.spatial_dims)

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
            check_dim(name, value, self.axis_divisor(name), self.reason, pad_hint)
        elif not self.is_valid_input(value):
            raise ShapeContractError(self.describe_invalid(name, value, pad_hint))

    def axis_divisor(self, name: str) -> int:
        """The divisor of the axis called ``name`` (``depth``, ``height``, ``width``); ``divisor`` otherwise."""
        if self.divisors and name in self.axis_names:
            return self.divisors[self.axis_names.index(name)]
        return self.divisor

    def validate(self, hw: Sequence[int], pad_hint: str = "") -> None:
        if len(hw) != self.spatial_dims:
            raise _spatial_shape_error(hw, self.spatial_dims)
        for name, value in zip(self.axis_names, hw):
            self.check_dim(name, int(value), pad_hint)

    def is_valid_shape(self, shape: Sequence[int]) -> bool:
        if len(shape) != self.spatial_dims:
            return False
        if self.is_divisor_only:
            return is_valid(shape, self.axis_divisors)
        return all(self.is_valid_input(int(v)) for v in shape)

    def with_spatial_dims(self, spatial_dims: int) -> ShapeContract:
        """The same rule on ``spatial_dims`` axes (a net that says nothing, given ``--spatial-dims 3``)."""
        from dataclasses import replace

        if spatial_dims == self.spatial_dims:
            return self
        return replace(self, spatial_dims=spatial_dims, divisors=())

    def to_props(self) -> dict[str, int]:
        return {"size_remainder": self.remainder, "border": self.border, "min_size": self.smallest}

    def rule_text(self) -> str:
        """The rule for every axis, for docs and reports: ``divisible by 16`` or
        ``depth divisible by 4, height by 16, width by 16``."""
        if not self.divisors:
            return self.rule()
        names = self.axis_names
        parts = [f"{names[0]} divisible by {self.divisors[0]}"]
        parts += [f"{n} by {d}" for n, d in zip(names[1:], self.divisors[1:])]
        return ", ".join(parts) + (f" (= {self.reason})" if self.reason else "")


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
