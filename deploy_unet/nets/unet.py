"""Reference UNet (Ronneberger et al. 2015).

``padding="same"`` (default): padded convs, so output H/W equals input H/W. ``padding="valid"``: the
paper's unpadded convs; each skip is center-cropped to the expanding path's size before the concat and
the output is smaller than the input (572 -> 388 at depth 4). Its contract (valid sizes, output size)
is ``shapes.valid_unet_contract``; ``runtime/tiling.py`` turns it back into full-size masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deploy_unet.nets.blocks import (
    NORMS,
    ConvBlock,
    SegmentationNet,
    check_choice,
    check_unet_options,
    conv3x3,
)
from deploy_unet.nets.registry import register_net
from deploy_unet.shapes import ShapeContract, valid_unet_contract

UP_MODES = ("transpose", "bilinear", "nearest")
PADDINGS = ("same", "valid")
# Pixels each up-step loses in a valid UNet: the 3x3 conv after interpolation loses 2; bilinear also
# drops the two edge pixels its align_corners=False sampling clamps (they would differ between a tile
# and the whole image, so tiles would not stitch exactly).
VALID_UP_LOSS = {"transpose": 0, "nearest": 2, "bilinear": 4}


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centered ``height`` x ``width`` window of an NCHW map (the paper's skip crop)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]


def up_layer(c_in: int, c_out: int, up_mode: str, norm: str, padding: int = 1) -> nn.Module:
    """The learned part of a x2 upsampling from ``c_in`` to ``c_out`` channels: the paper's 2x2 stride-2
    up-convolution (``transpose``), or the 3x3 conv applied after interpolating (``bilinear``/``nearest``, the
    usual cure for transposed-conv checkerboard artifacts). UNet's ``Up`` and UNet++'s ``Upsample2x`` hold it
    as ``self.up``."""
    if up_mode == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
    return nn.Sequential(*conv3x3(c_in, c_out, norm, padding))


def upsample2x(layer: nn.Module, x: torch.Tensor, up_mode: str, valid: bool = False) -> torch.Tensor:
    """``x`` upsampled x2 through ``layer`` (an ``up_layer``): interpolated first unless ``transpose``. ``valid``
    (unpadded nets): bilinear's two edge pixels dropped, as its clamped sampling differs between a tile and
    the whole image."""
    if up_mode != "transpose":
        # align_corners=False: the one coordinate mode every backend (ORT, TensorRT) agrees on.
        kwargs = {"align_corners": False} if up_mode == "bilinear" else {}
        x = F.interpolate(x, scale_factor=2.0, mode=up_mode, **kwargs)
        if valid and up_mode == "bilinear":
            x = x[..., 1:-1, 1:-1]
    return layer(x)


class Up(nn.Module):
    """Upsample x2 to half the channels (``up_layer``), concatenate the skip, then a conv block."""

    def __init__(self, c_in: int, c_out: int, up_mode: str, norm: str, padding: str = "same"):
        super().__init__()
        self.up_mode = up_mode
        self.valid = padding == "valid"
        conv_padding = 0 if self.valid else 1
        self.up = up_layer(c_in, c_in // 2, up_mode, norm, conv_padding)
        self.block = ConvBlock(c_in // 2 + c_out, c_out, norm, padding=conv_padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample2x(self.up, x, self.up_mode, self.valid)
        if self.valid:
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.block(torch.cat([x, skip], dim=1))


class UNet(SegmentationNet):
    arch = "unet"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        up_mode: str = "transpose",
        norm: str = "batch",
        padding: str = "same",
    ):
        super().__init__()
        check_unet_options("UNet", depth, dict(in_channels=in_channels, num_classes=num_classes,
                                               base_channels=base_channels))
        check_choice("up_mode", up_mode, UP_MODES)
        check_choice("norm", norm, NORMS)
        check_choice("padding", padding, PADDINGS)
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, depth=depth,
            base_channels=base_channels, up_mode=up_mode, norm=norm,
        )
        if padding != "same":  # only when set, so padded nets' configs (and checkpoints) stay as they were
            self.config["padding"] = padding
        self.padding = padding
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.divisor = 2**depth

        widths = [base_channels * 2**i for i in range(depth + 1)]
        conv_padding = 0 if padding == "valid" else 1
        self.stem = ConvBlock(in_channels, widths[0], norm, padding=conv_padding)
        self.down = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], norm, padding=conv_padding) for i in range(depth)
        )
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], up_mode, norm, padding) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @property
    def contract_reason(self) -> str:
        return f"2**{self.depth} for UNet depth {self.depth}"

    @property
    def shape_contract(self) -> ShapeContract:
        if self.padding == "valid":
            return valid_unet_contract(self.depth, VALID_UP_LOSS[self.config["up_mode"]])
        return super().shape_contract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)


register_net("unet")(UNet)
