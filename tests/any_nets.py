"""Nets shaped like the ones users bring (issue 27), for ``export --model tests.any_nets:NAME``: a data-dependent
branch, a NaN guard, a Hugging Face-style ModelOutput dataclass at 1/4 resolution, a torchvision-style dict,
a tuple of deep-supervision heads, an operator no exporter translates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class DataDependent(nn.Module):
    """The issue's net: which logits come out depends on their values."""

    divisor = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if y.mean() > 0 else y  # BRANCH


class NanGuard(nn.Module):
    """A data-dependent check that never changes the logits of a finite input: TorchScript's trace is right."""

    divisor = 2

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        if torch.isnan(x).any():  # GUARD
            raise ValueError("NaN in the input")
        y = F.relu(self.conv(F.max_pool2d(x, 2)))
        return self.head(F.interpolate(y, scale_factor=2.0, mode="nearest"))


@dataclass
class SemanticSegmenterOutput:
    """Shaped like transformers' ModelOutput of SegformerForSemanticSegmentation."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None


class QuarterLogits(nn.Module):
    """SegFormer-like: two stride-2 stages, logits at 1/4 of the input, returned in a ModelOutput dataclass."""

    divisor = 8

    def __init__(self, classes: int = 4):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        h1 = F.relu(self.a(x))
        h2 = F.relu(self.b(h1))
        return SemanticSegmenterOutput(logits=self.head(h2), hidden_states=(h1, h2))


class DictQuarter(nn.Module):
    """torchvision-style {"out", "aux"} dict (plus "logits"), logits at 1/4."""

    divisor = 4

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.logits_head, self.aux_head = nn.Conv2d(8, 3, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = F.relu(self.stem(x))
        return {"aux": self.aux_head(h), "logits": self.logits_head(h)}


class DeepSupervision(nn.Module):
    """UNet++-style: a tuple of three heads at full resolution; the last is the finest."""

    divisor = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleList([nn.Conv2d(8, 2, 1) for _ in range(3)])

    def forward(self, x):
        h = F.interpolate(F.relu(self.conv(F.max_pool2d(x, 2))), scale_factor=2.0, mode="nearest")
        return tuple(head(h) for head in self.heads)


class Svd(nn.Module):
    """An operator neither exporter translates (singular values)."""

    divisor = 1

    def forward(self, x):
        return x * torch.linalg.svdvals(x[:, :, :4, :4]).sum()
