"""Reference FCN-32s/16s/8s (Long, Shelhamer, Darrell 2015) on a VGG16-style backbone.

Differences from the paper, on purpose: 3x3 convs are padded and fc6 is a padded 7x7 conv, so the
score map is exactly H/32 x W/32 and no crop layers are needed; the price is the shape contract
(H and W divisible by 32), which export, engine build and the runtimes enforce.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from deploy_unet.errors import ConfigError
from deploy_unet.nets.blocks import NORMS, ConvBlock, SegmentationNet, bilinear_upsample_weight, check_choice
from deploy_unet.nets.registry import register_net

# VGG16: (channels, convs) per stage, each stage followed by a 2x2 max-pool.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VARIANTS = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Transposed conv that upsamples exactly ``factor``x (k=2f, s=f, p=f/2), initialised bilinear."""
    up = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_upsample_weight(channels, 2 * factor))
    return up


class FCN(SegmentationNet):
    divisor = 32

    def __init__(
        self,
        variant: str = "fcn8s",
        in_channels: int = 3,
        num_classes: int = 21,
        width_mult: float = 1.0,
        fc_channels: int = 4096,
        norm: str = "none",
        dropout: float = 0.5,
    ):
        super().__init__()
        check_choice("variant", variant, tuple(VARIANTS))
        check_choice("norm", norm, NORMS)
        if width_mult <= 0:
            raise ConfigError(f"width_mult={width_mult} must be > 0")
        if in_channels < 1 or num_classes < 1 or fc_channels < 1:
            raise ConfigError("in_channels, num_classes and fc_channels must be >= 1")
        self.arch = variant
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, width_mult=width_mult,
            fc_channels=fc_channels, norm=norm, dropout=dropout,
        )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.output_stride = VARIANTS[variant]

        widths = [max(1, round(c * width_mult)) for c, _ in VGG16_STAGES]
        fc = max(1, round(fc_channels * width_mult))
        stages, c_prev = [], in_channels
        for width, (_, n) in zip(widths, VGG16_STAGES):
            stages.append(ConvBlock(c_prev, width, norm, n=n))
            c_prev = width
        self.stages = nn.ModuleList(stages)
        # fc6/fc7 as convolutions ("convolutionalization", section 3.1 of the paper).
        self.fc = nn.Sequential(
            nn.Conv2d(c_prev, fc, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
        )
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if variant == "fcn32s":
            self.upscore = _upsampler(num_classes, 32)
        else:
            self.score_pool4 = nn.Conv2d(widths[3], num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 2)
            if variant == "fcn16s":
                self.upscore = _upsampler(num_classes, 16)
            else:
                self.score_pool3 = nn.Conv2d(widths[2], num_classes, 1)
                self.upscore_pool4 = _upsampler(num_classes, 2)
                self.upscore = _upsampler(num_classes, 8)
        for m in (self.score_fr, *(getattr(self, n) for n in ("score_pool4", "score_pool3") if hasattr(self, n))):
            nn.init.zeros_(m.weight)  # the paper zero-initialises score layers
            nn.init.zeros_(m.bias)

    @property
    def contract_reason(self) -> str:
        return "32 for the five pooling stages of FCN"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pools = []
        for stage in self.stages:
            x = F.max_pool2d(stage(x), 2)
            pools.append(x)
        score = self.score_fr(self.fc(x))
        if self.output_stride == 32:
            return self.upscore(score)
        score = self.upscore2(score) + self.score_pool4(pools[3])  # fuse at 1/16
        if self.output_stride == 16:
            return self.upscore(score)
        score = self.upscore_pool4(score) + self.score_pool3(pools[2])  # fuse at 1/8
        return self.upscore(score)


for _variant in VARIANTS:
    # partial(FCN, variant): the registry reads the remaining options from FCN's own signature.
    register_net(_variant)(functools.partial(FCN, _variant))
