"""Reference 3D UNet (Çiçek et al. 2016) for volumes (NCDHW).

Padded 3x3x3 convs (output D/H/W equal the input's), ``depth`` poolings. ``pool_depth`` pools the depth axis
in only the first ``pool_depth`` levels (kernel 1x2x2 below), as nnU-Net does for anisotropic scans
(thick slices): then the net's contract has a divisor per axis, ``(2**pool_depth, 2**depth, 2**depth)``, and
states it (``shape_contract``); export, engine build and the runners read it from there.
Norm: ``batch`` (folds into the convs), ``instance`` (nnU-Net's and MONAI's default; kept fp32 by the fp16
and int8 passes where they must), ``group`` (8 groups), or ``none``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.nets.blocks import SegmentationNet, check_choice, check_unet_options
from deploy_unet.nets.registry import register_net
from deploy_unet.shapes import ShapeContract

NORMS_3D = ("batch", "instance", "group", "none")
UP_MODES_3D = ("transpose", "trilinear", "nearest")


def norm3d(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm3d(channels)]
    if kind == "instance":
        return [nn.InstanceNorm3d(channels, affine=True)]
    if kind == "group":
        return [nn.GroupNorm(min(8, channels), channels)]
    return []


class ConvBlock3d(nn.Sequential):
    """Two padded 3x3x3 conv (+ norm) + ReLU layers."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=norm == "none"))
            layers += norm3d(norm, c_out)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up3d(nn.Module):
    """Upsample by ``scale`` (2x2x2, or 1x2x2 where depth was not pooled) to half the channels, concat the skip,
    then a conv block. ``transpose``: ConvTranspose3d (kernel = stride = scale); else interpolate + 3x3x3 conv."""

    def __init__(self, c_in: int, c_out: int, up_mode: str, norm: str, scale: tuple[int, int, int]):
        super().__init__()
        self.up_mode, self.scale = up_mode, scale
        if up_mode == "transpose":
            self.up = nn.ConvTranspose3d(c_in, c_in // 2, kernel_size=scale, stride=scale)
        else:
            self.up = nn.Sequential(nn.Conv3d(c_in, c_in // 2, 3, padding=1, bias=norm == "none"),
                                    *norm3d(norm, c_in // 2), nn.ReLU(inplace=True))
        self.block = ConvBlock3d(c_in // 2 + c_out, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.up_mode != "transpose":
            kwargs = {"align_corners": False} if self.up_mode == "trilinear" else {}
            x = F.interpolate(x, scale_factor=tuple(float(s) for s in self.scale), mode=self.up_mode, **kwargs)
        x = self.up(x)
        return self.block(torch.cat([x, skip], dim=1))


class UNet3D(SegmentationNet):
    arch = "unet3d"
    spatial_dims = 3

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        depth: int = 3,
        base_channels: int = 8,
        up_mode: str = "transpose",
        norm: str = "batch",
        pool_depth: int | None = None,
    ):
        super().__init__()
        check_unet_options("UNet3D", depth, dict(in_channels=in_channels, num_classes=num_classes,
                                                 base_channels=base_channels))
        check_choice("up_mode", up_mode, UP_MODES_3D)
        check_choice("norm", norm, NORMS_3D)
        if pool_depth is not None and not 0 <= pool_depth <= depth:
            raise ConfigError(f"pool_depth={pool_depth} is out of range; it must be 0..depth ({depth})")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, depth=depth,
                           base_channels=base_channels, up_mode=up_mode, norm=norm)
        if pool_depth is not None and pool_depth != depth:  # only when anisotropic, so configs stay short
            self.config["pool_depth"] = pool_depth
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.pool_depth = depth if pool_depth is None else pool_depth
        self.scales = [(2 if i < self.pool_depth else 1, 2, 2) for i in range(depth)]
        self.divisors = (2**self.pool_depth, 2**depth, 2**depth)
        self.divisor = 2**depth  # the lcm of the per-axis divisors: a size valid on every axis

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock3d(in_channels, widths[0], norm)
        self.down = nn.ModuleList(ConvBlock3d(widths[i], widths[i + 1], norm) for i in range(depth))
        self.up = nn.ModuleList(
            Up3d(widths[i + 1], widths[i], up_mode, norm, self.scales[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)

    @property
    def contract_reason(self) -> str:
        if self.pool_depth != self.depth:
            return f"the pooling of UNet3D depth {self.depth}, depth axis pooled {self.pool_depth} times"
        return f"2**{self.depth} for UNet3D depth {self.depth}"

    @property
    def shape_contract(self) -> ShapeContract:
        return ShapeContract.per_axis(self.divisors, 3, reason=self.contract_reason)

    def check_input_shape(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ShapeContractError(
                f"input shape {tuple(x.shape)} is not (N, {self.in_channels}, D, H, W); "
                f"{self.arch} takes {self.in_channels}-channel NCDHW input"
            )
        self.shape_contract.validate(tuple(x.shape[2:]), pad_hint="or pass --pad")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block, scale in zip(self.down, self.scales):
            skips.append(block(F.max_pool3d(skips[-1], scale)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)


register_net("unet3d")(UNet3D)
