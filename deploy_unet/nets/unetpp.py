"""UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture") with deep supervision.

Node ``X(i,j)`` sits at resolution level ``i`` (``i`` poolings) and column ``j``. Column 0 is the
encoder, as in :class:`~deploy_unet.nets.unet.UNet`. Every other node takes the dense skip pathway of
the paper, ``X(i,j) = H([X(i,0), ..., X(i,j-1), U(X(i+1,j-1))])``: all earlier nodes of its level plus
the 2x upsampled node below-left, then a conv block, so its block reads ``(j+1) * width_i`` channels.
segmentation_models_pytorch's ``UnetPlusPlus`` calls these ``x_{i}_{j}`` (depth first) in its decoder.

Deep supervision: a 1x1 head on each top node ``X(0,j)``, j = 1..depth; training uses all of them
(:meth:`UNetPlusPlus.forward_heads`). What ``forward`` (and so the exported ONNX) returns is a
constructor option, so it goes in ``config`` and round-trips through checkpoints and ONNX metadata:

- ``heads="mean"``: the average of all heads' logits (the accurate one; the default)
- ``heads="last"``: head ``depth`` alone (still computes every node: the heads' inputs are shared)
- ``prune=L``: head ``L`` alone, computing only the nodes it depends on (``i + j <= L``): the paper's
  pruned UNet++ L, a speed/accuracy trade-off at inference. Its divisor is ``2**L``: it pools L times.

All modules exist in every mode (a pruned net loads the full checkpoint strictly); the unused ones
are never called, so the exporter (which traces ``forward``) leaves them out of the ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deploy_unet.errors import ConfigError
from deploy_unet.nets.blocks import (
    NORMS,
    ConvBlock,
    SegmentationNet,
    check_choice,
    check_unet_options,
)
from deploy_unet.nets.registry import register_net
from deploy_unet.nets.unet import UP_MODES, up_layer, upsample2x

HEAD_MODES = ("mean", "last")


def node_name(i: int, j: int) -> str:
    """Module name of node X(i,j) (smp-style ``x_{i}_{j}``); tests and docs find nodes by it."""
    return f"x_{i}_{j}"


class Upsample2x(nn.Module):
    """x2 upsampling from ``c_in`` to ``c_out`` channels: UNet's ``Up`` without its concat and block."""

    def __init__(self, c_in: int, c_out: int, up_mode: str, norm: str):
        super().__init__()
        self.up_mode = up_mode
        self.up = up_layer(c_in, c_out, up_mode, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(self.up, x, self.up_mode)


class NestedNode(nn.Module):
    """Decoder node X(i,j), j >= 1: upsample X(i+1,j-1), concat after X(i,0..j-1), conv block."""

    def __init__(self, j: int, width: int, width_below: int, up_mode: str, norm: str):
        super().__init__()
        self.up = Upsample2x(width_below, width, up_mode, norm)
        self.block = ConvBlock((j + 1) * width, width, norm)

    def forward(self, same_level: list[torch.Tensor], below: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([*same_level, self.up(below)], dim=1))


class UNetPlusPlus(SegmentationNet):
    arch = "unetpp"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        up_mode: str = "transpose",
        norm: str = "batch",
        heads: str | None = None,
        prune: int | None = None,
    ):
        super().__init__()
        check_unet_options("UNet++", depth, dict(in_channels=in_channels, num_classes=num_classes,
                                               base_channels=base_channels))
        check_choice("up_mode", up_mode, UP_MODES)
        check_choice("norm", norm, NORMS)
        if prune is not None:
            if not 1 <= prune <= depth:
                raise ConfigError(f"prune={prune} is out of range; UNet++ depth {depth} has heads 1..{depth}")
            if heads not in (None, "last"):
                raise ConfigError(f"prune={prune} outputs head {prune} alone; heads={heads!r} does not apply: drop it")
            heads = "last"  # the pruned net is the UNet++ of depth L, read at its last head
        heads = heads or "mean"
        check_choice("heads", heads, HEAD_MODES)
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, depth=depth, base_channels=base_channels,
            up_mode=up_mode, norm=norm, heads=heads, prune=prune,
        )
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.heads, self.prune = heads, prune
        self.level = prune or depth  # the deepest level (and last column) forward computes
        self.divisor = 2**self.level

        widths = [base_channels * 2**i for i in range(depth + 1)]
        nodes: dict[str, nn.Module] = {node_name(0, 0): ConvBlock(in_channels, widths[0], norm)}
        for i in range(1, depth + 1):
            nodes[node_name(i, 0)] = ConvBlock(widths[i - 1], widths[i], norm)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                nodes[node_name(i, j)] = NestedNode(j, widths[i], widths[i + 1], up_mode, norm)
        self.nodes = nn.ModuleDict(nodes)
        self.head = nn.ModuleList(nn.Conv2d(widths[0], num_classes, kernel_size=1) for _ in range(depth))

    @property
    def contract_reason(self) -> str:
        if self.prune is not None:
            return f"2**{self.prune} for UNet++ pruned to level {self.prune}"
        return f"2**{self.depth} for UNet++ depth {self.depth}"

    @property
    def output_mode(self) -> str:
        """What ``forward`` returns, in words (export writes it into the ONNX metadata)."""
        if self.prune is not None:
            return f"prune {self.prune}: head {self.prune} of {self.depth}, nodes X(i,j) with i+j <= {self.prune}"
        if self.heads == "last":
            return f"last: head {self.depth} of {self.depth}"
        return f"mean: average of heads 1..{self.depth} logits"

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head 1..level (deep supervision trains on all of them)."""
        top = self._top_row(x)
        return [self.head[j](t) for j, t in enumerate(top)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self._top_row(x)
        if self.heads == "last":
            return self.head[self.level - 1](top[-1])
        return sum(self.head[j](t) for j, t in enumerate(top)) / len(top)

    def _top_row(self, x: torch.Tensor) -> list[torch.Tensor]:
        """X(0,1..level), computing only the nodes with i + j <= level (all of them when unpruned)."""
        level = self.level
        grid: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.nodes[node_name(0, 0)](x)}
        for i in range(1, level + 1):
            grid[i, 0] = self.nodes[node_name(i, 0)](F.max_pool2d(grid[i - 1, 0], 2))
        for j in range(1, level + 1):
            for i in range(level + 1 - j):
                same_level = [grid[i, k] for k in range(j)]
                grid[i, j] = self.nodes[node_name(i, j)](same_level, grid[i + 1, j - 1])
        return [grid[0, j] for j in range(1, level + 1)]


register_net("unetpp")(UNetPlusPlus)
