"""Building blocks shared by the reference nets."""

from __future__ import annotations

import torch
from torch import nn

from deploy_unet.errors import ConfigError, ShapeContractError

NORMS = ("batch", "none")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def check_unet_options(family: str, depth: int, sizes: dict[str, int]) -> None:
    """The options UNet and UNet++ share: 1..6 poolings, and every channel count >= 1."""
    if not 1 <= depth <= 6:
        raise ConfigError(f"depth={depth} is out of range; {family} depth must be 1..6")
    for name, value in sizes.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")


def conv3x3(c_in: int, c_out: int, norm: str, padding: int = 1) -> list[nn.Module]:
    """3x3 conv (+ norm) + ReLU. Padded (1) it keeps H and W, so only pooling changes spatial size;
    unpadded (0, the original UNet) it loses one pixel per side."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=norm == "none")]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class ConvBlock(nn.Sequential):
    """``n`` 3x3 conv layers (padded unless ``padding=0``), the unit of both UNet paths and of each VGG stage."""

    def __init__(self, c_in: int, c_out: int, norm: str, n: int = 2, padding: int = 1):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += conv3x3(c_in if i == 0 else c_out, c_out, norm, padding)
        super().__init__(*layers)


def bilinear_upsample_weight(channels: int, kernel_size: int) -> torch.Tensor:
    """ConvTranspose2d weight that performs per-channel bilinear upsampling (FCN's initialisation)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        weight[c, c] = filt
    return weight


class SegmentationNet(nn.Module):
    """Base of the reference nets: states its own shape contract (``divisor``) and its config.

    Export, engine build and the runtimes all read ``divisor`` from here (or from the ONNX metadata
    that export writes from it); nobody recomputes it.
    """

    arch: str = ""
    divisor: int = 1
    in_channels: int = 3
    num_classes: int = 2

    def __init__(self) -> None:
        super().__init__()
        self.config: dict = {}

    def check_input_shape(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeContractError(
                f"input shape {tuple(x.shape)} is not (N, {self.in_channels}, H, W); "
                f"{self.arch} takes {self.in_channels}-channel NCHW input"
            )
        contract = self.shape_contract
        hint = "or pass --pad" if contract.is_divisor_only else "or run it in overlap tiles (--tile)"
        contract.validate(tuple(x.shape[2:]), pad_hint=hint)

    @property
    def contract_reason(self) -> str:
        return f"{self.arch}"

    @property
    def shape_contract(self):
        """Valid input sizes and the output size for each (``shapes.ShapeContract``); padded nets: the divisor."""
        from deploy_unet.shapes import ShapeContract

        return ShapeContract(int(self.divisor), reason=self.contract_reason)
