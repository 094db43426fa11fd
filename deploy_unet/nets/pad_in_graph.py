"""``PadInGraph``: a net that pads H and W up to its divisor itself and crops the logits back.

Wrapped before export (``deploy-unet export --pad-in-graph``), the ONNX graph computes the pads from
its own input shape (``(-h) % divisor``, bottom/right, reflect: the host-side rule of
``shapes.pad_to_multiple``), so an engine takes any H, W inside its profile and the caller never pads.
Reflect padding needs pad < size (ONNX Pad, torch and TensorRT all refuse more), which sets the
smallest input: ``shapes.min_size_pad_in_graph``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadInGraph(nn.Module):
    """``net`` behind an in-graph reflect pad to a multiple of ``divisor`` and a crop back."""

    def __init__(self, net: nn.Module, divisor: int):
        super().__init__()
        self.net = net
        self.divisor = int(divisor)
        # The wrapped net's self-description passes through (export and the runners read it).
        for name in ("arch", "in_channels", "num_classes", "config", "contract_reason"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        d = self.divisor
        # (-h) % d, written so that both Mod operands are >= 0: floor and truncating modulo (ONNX Mod
        # fmod=0 vs a backend that truncates) then agree, and no backend can produce a negative pad.
        pad_h = (d - h % d) % d
        pad_w = (d - w % d) % d
        # F.pad takes (left, right, top, bottom) for the last two dims: pad bottom/right only.
        y = self.net(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        return y[..., :h, :w]
