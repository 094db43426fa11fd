"""Build a net from what the user gave: a registry name + options, a self-describing checkpoint, or
``package.module:callable`` for their own ``nn.Module``; then load weights."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from deploy_unet.checkpoint import Checkpoint, load_checkpoint, load_weights
from deploy_unet.errors import ConfigError
from deploy_unet.nets.registry import create_net

DEFAULT_ARCH = "unet"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class LoadedNet:
    net: nn.Module
    arch: str
    net_config: dict[str, Any]
    divisor: int
    in_channels: int
    checkpoint: Checkpoint | None
    mean: list[float]
    std: list[float]


def default_normalization(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for RGB (what smp/torchvision users expect), 0.5/0.5 otherwise."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5] * in_channels, [0.5] * in_channels


def import_model(spec: str) -> nn.Module:
    """``package.module:callable`` -> an nn.Module (the callable is a class or factory taking no args)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {spec!r} is not of the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--model {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def load_net(
    arch: str | None = None,
    options: dict[str, Any] | None = None,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    strict: bool = True,
    divisor: int | None = None,
    in_channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> LoadedNet:
    options = dict(options or {})
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else None
    if model is not None:
        if arch is not None:
            raise ConfigError("pass either --arch or --model, not both")
        if divisor is None:
            raise ConfigError(
                "--model needs --divisor: the spatial multiple your net requires (2**number_of_poolings)"
            )
        net = import_model(model)
        arch_name, config = f"custom:{model}", {}
        channels = in_channels or getattr(net, "in_channels", None) or 3
    else:
        if arch is None:
            arch = (ckpt.arch if ckpt and ckpt.arch else None) or DEFAULT_ARCH
            if ckpt and ckpt.arch == arch and ckpt.net_config:
                options = {**ckpt.net_config, **options}  # explicit options override the checkpoint's
        if in_channels is not None:
            options["in_channels"] = in_channels
        net = create_net(arch, **options)
        arch_name, config = arch, dict(net.config)
        channels = net.in_channels
        if divisor is not None and divisor != net.divisor:
            raise ConfigError(f"--divisor {divisor} contradicts {arch}'s own divisor {net.divisor}; drop --divisor")
        divisor = net.divisor
    if divisor < 1:
        raise ConfigError(f"--divisor {divisor} must be >= 1")
    if ckpt is not None:
        load_weights(net, ckpt, strict=strict)
    default_mean, default_std = default_normalization(channels)
    mean = mean or (ckpt.mean if ckpt and ckpt.mean else None) or default_mean
    std = std or (ckpt.std if ckpt and ckpt.std else None) or default_std
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConfigError(f"--{name} has {len(values)} values; the net takes {channels} channels")
    if any(s <= 0 for s in std):
        raise ConfigError(f"--std {std} must be all > 0")
    return LoadedNet(net.eval(), arch_name, config, divisor, channels, ckpt, list(mean), list(std))
