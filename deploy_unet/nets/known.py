"""The shape contracts of third-party nets that do not state one (``--model``), read from their own settings.

MONAI's nets carry what decides their valid sizes but expose no ``divisor``: ``UNet``/``AttentionUnet``/
``DynUNet`` downsample by their ``strides`` (per axis for DynUNet's anisotropic, nnU-Net-style strides),
``SegResNet`` halves the map ``len(blocks_down) - 1`` times, and ``SwinUNETR`` checks every axis against
``patch_size ** 5`` in eager mode only (``_check_input_size`` is skipped while tracing, so a bad export size
would go unreported). Reading them here lets ``export --model`` need no ``--divisor`` and refuse a bad size in
one line naming the axis, as for the reference nets. Spatial dims come from the net: a ``spatial_dims`` or
``dimensions`` setting, else its convolutions (all ``Conv3d``: a volume net).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from deploy_unet.errors import ConfigError
from deploy_unet.shapes import ShapeContract

_CONVS_2D = (nn.Conv2d, nn.ConvTranspose2d)
_CONVS_3D = (nn.Conv3d, nn.ConvTranspose3d)


def stated_spatial_dims(net: nn.Module) -> int | None:
    """2 or 3 from the net's own setting, else from its convolutions; None when it cannot tell."""
    for attr in ("spatial_dims", "dimensions"):
        value = getattr(net, attr, None)
        if isinstance(value, int) and value in (2, 3):
            return value
    kinds = {3 if isinstance(m, _CONVS_3D) else 2 for m in net.modules() if isinstance(m, _CONVS_2D + _CONVS_3D)}
    return kinds.pop() if len(kinds) == 1 else None


def _per_axis_product(strides: Sequence, dims: int) -> tuple[int, ...]:
    product = [1] * dims
    for stride in strides:
        values = [int(stride)] * dims if isinstance(stride, int) else [int(v) for v in stride]
        if len(values) != dims:
            return ()
        product = [p * v for p, v in zip(product, values)]
    return tuple(product)


def stated_contract(net: nn.Module) -> ShapeContract | None:
    """The contract of a known third-party net (MONAI), or None for a net this module does not know."""
    module, name = type(net).__module__, type(net).__name__
    if not module.startswith("monai."):
        return None
    dims = stated_spatial_dims(net) or 2
    divisors: tuple[int, ...] = ()
    reason = ""
    if name in ("UNet", "AttentionUnet", "DynUNet") and getattr(net, "strides", None) is not None:
        divisors = _per_axis_product(net.strides, dims)
        reason = f"MONAI {name}: the product of its strides {list(net.strides)}"
    elif name == "SegResNet" and getattr(net, "blocks_down", None):
        divisors = (2 ** (len(net.blocks_down) - 1),) * dims
        reason = f"MONAI SegResNet: {len(net.blocks_down) - 1} downsamplings"
    elif name == "SwinUNETR" and isinstance(getattr(net, "patch_size", None), int):
        divisors = (int(net.patch_size) ** 5,) * dims
        reason = f"MONAI SwinUNETR: patch_size**5 = {net.patch_size}**5, its own check, skipped while tracing"
    if not divisors or min(divisors) < 1:
        return None
    return ShapeContract.per_axis(divisors, dims, reason=reason)


def reconcile_divisor(contract: ShapeContract, divisor: int | None, divisors: Sequence[int] | None,
                      name: str) -> ShapeContract:
    """A ``--divisor`` given for a net with a known contract: kept when it is a multiple of the net's own on
    every axis (stricter is safe), refused in one line otherwise."""
    if divisor is None and not divisors:
        return contract
    asked = tuple(divisors) if divisors else (int(divisor),) * contract.spatial_dims
    if len(asked) != contract.spatial_dims:
        raise ConfigError(f"--divisor gives {len(asked)} values for a net with {contract.spatial_dims} spatial dims")
    own = contract.axis_divisors
    if any(a % o for a, o in zip(asked, own)):
        raise ConfigError(
            f"--divisor {','.join(map(str, asked))} is not a multiple of {name}'s own "
            f"{','.join(map(str, own))} ({contract.reason}); drop --divisor or pass a multiple of it"
        )
    if asked == own:
        return contract
    return ShapeContract.per_axis(asked, contract.spatial_dims, reason=f"--divisor {','.join(map(str, asked))}")


__all__ = ["reconcile_divisor", "stated_contract", "stated_spatial_dims"]
