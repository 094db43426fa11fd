"""Build a net from what the user gave: a registry name + options, a self-describing checkpoint, or
``package.module:callable`` for their own ``nn.Module``; then load weights.

``build_net`` holds the one rule for combining a checkpoint with an arch and options; export, the
pipeline and the torch runner (validate/bench ``--checkpoint``) all build through it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from deploy_unet.checkpoint import Checkpoint, load_checkpoint, load_weights, weight_fit
from deploy_unet.errors import ConfigError, first_line
from deploy_unet.nets.registry import create_net, net_options

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
    warnings: list[str] = field(default_factory=list)


@dataclass
class BuiltNet:
    net: nn.Module
    arch: str
    warnings: list[str]  # e.g. a --no-strict override that loaded only part of the weights


def build_net(
    arch: str | None,
    options: dict[str, Any] | None,
    ckpt: Checkpoint | None,
    *,
    strict: bool = True,
    given_by: str | None = None,
) -> BuiltNet:
    """Build a registered net and load ``ckpt`` into it, combining the two by one rule.

    - A self-describing checkpoint supplies arch and config; ``options`` override single fields, and an
      ``arch`` or option equal to the checkpoint's changes nothing.
    - An arch or override under which the net no longer fits the weights is a conflict: one ConfigError
      line naming the checkpoint's values and the asked-for ones. With ``strict=False`` it goes ahead,
      loading the tensors that still fit, and says so in ``warnings``.
    - A plain state_dict (no metadata) builds ``arch`` (default unet) with ``options`` as given.

    ``given_by`` names where arch/options came from when not from command-line options (e.g. an ONNX
    file's metadata); it only changes the wording of the conflict line.
    """
    options = dict(options or {})
    if ckpt is None or not ckpt.arch:
        arch = arch or DEFAULT_ARCH
        net = create_net(arch, **options)
        if ckpt is not None:
            load_weights(net, ckpt, strict=strict)
        return BuiltNet(net, arch, [])
    arch = arch or ckpt.arch
    trained = dict(ckpt.net_config or {})
    accepted = net_options(arch)
    # Another arch keeps the checkpoint's fields it shares (fcn8s -> fcn16s keeps width_mult, ...).
    base = {k: v for k, v in trained.items() if k in accepted}
    net = create_net(arch, **{**base, **options})
    overrides = {k: v for k, v in options.items() if trained.get(k, accepted.get(k)) != v}
    fit = weight_fit(net, ckpt.state_dict)
    if fit.fits or (arch == ckpt.arch and not overrides):
        # Nothing the user asked for made it misfit: any error left is the checkpoint's own.
        load_weights(net, ckpt, strict=strict)
        return BuiltNet(net, arch, [])
    asked = ({"arch": arch} if arch != ckpt.arch else {}) | overrides
    had = {k: ckpt.arch if k == "arch" else trained.get(k, accepted.get(k)) for k in asked}
    what = _asked_for(asked, given_by)
    if strict or fit.matching == 0:
        line = _conflict_line(what, asked, had, ckpt, given_by)
        raise ConfigError(line if strict else f"{line}; not one of its tensors fits, even with --no-strict")
    load_weights(net, ckpt, strict=False, skip_mismatched=True)
    return BuiltNet(net, arch, [
        f"{what} overrides {ckpt.path}'s {', '.join(f'{k}={v}' for k, v in had.items())} (--no-strict): "
        f"loaded the {fit.matching} of {fit.total} tensors that still fit; the rest keep their random init"
    ])


def _asked_for(asked: dict[str, Any], given_by: str | None) -> str:
    """``--depth 5 and --base-channels 8`` for options, ``model.onnx's metadata (depth=5)`` otherwise."""
    if given_by is None:
        return _and([f"{_flag(k)} {v}" for k, v in asked.items()])
    return f"{given_by} ({', '.join(f'{k}={v}' for k, v in asked.items())})"


def _conflict_line(what: str, asked: dict[str, Any], had: dict[str, Any], ckpt: Checkpoint,
                   given_by: str | None) -> str:
    """``--depth 5 conflicts with F, which was trained with depth=4; drop --depth or pass a checkpoint for
    depth 5`` (all the differing fields are named together)."""
    verb = "conflict" if given_by is None and len(asked) > 1 else "conflicts"
    trained = ", ".join(f"{k}={v}" for k, v in had.items())
    wanted = ", ".join(f"{k} {v}" for k, v in asked.items())
    drop = f"drop {_and([_flag(k) for k in asked])} or " if given_by is None else ""
    return f"{what} {verb} with {ckpt.path}, which was trained with {trained}; {drop}pass a checkpoint for {wanted}"


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def default_normalization(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for RGB (what smp/torchvision users expect), 0.5/0.5 otherwise."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5] * in_channels, [0.5] * in_channels


def parse_model_args(items) -> dict[str, Any]:
    """``--model-arg key=value`` items -> keyword arguments for the ``--model`` callable.

    Values are Python literals (``4``, ``None``, ``(16, 32)``, ``'instance'``), JSON (``null``, ``true``),
    or else plain strings (``encoder_name=resnet18``), as smp and MONAI constructors take them.
    """
    import ast
    import json

    kwargs: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-arg {item!r} is not KEY=VALUE (e.g. --model-arg encoder_name=resnet18)")
        if key in kwargs:
            raise ConfigError(f"--model-arg {key} is given twice")
        text = text.strip()
        for parse in (ast.literal_eval, json.loads):
            try:
                kwargs[key] = parse(text)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        else:
            kwargs[key] = text
    return kwargs


def import_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``package.module:callable`` -> an nn.Module: the callable (a class or factory) called with ``kwargs``."""
    import inspect

    kwargs = dict(kwargs or {})
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {spec!r} is not of the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = module
    for part in attr.split("."):  # also pkg.module:Class.from_config
        factory = getattr(factory, part, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        try:
            takes = ", ".join(p for p in inspect.signature(factory).parameters if p != "self")
        except (TypeError, ValueError):
            takes = "?"
        raise ConfigError(f"--model {spec!r} does not accept these --model-arg values ({exc}); it takes: {takes}") from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass
    try:
        net = factory(**kwargs)
    except Exception as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ConfigError(f"--model {spec!r} failed to build with {given} ({first_line(exc)})") from None
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
    model_args: dict[str, Any] | None = None,
) -> LoadedNet:
    options = dict(options or {})
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else None
    if model is not None:
        if arch is not None:
            raise ConfigError("pass either --arch or --model, not both")
        net = import_model(model, model_args)
        divisor = divisor or getattr(net, "divisor", None)  # a net may state its own contract
        if divisor is None:  # or a known third-party net's settings give it (MONAI's strides, ...)
            from deploy_unet.nets.known import stated_contract

            known = stated_contract(net)
            divisor = known.divisor if known is not None else None
        if divisor is None:
            raise ConfigError(
                "--model needs --divisor: the spatial multiple your net requires (2**number_of_poolings: "
                "32 for an smp encoder of depth 5, 2**len(strides) for a MONAI UNet)"
            )
        arch_name, config = f"custom:{model}", dict(model_args or {})
        channels = in_channels or getattr(net, "in_channels", None) or 3
        if ckpt is not None:
            load_weights(net, ckpt, strict=strict)
        warnings = []
    else:
        if model_args:
            raise ConfigError("--model-arg goes with --model; for --arch use its options (--depth, ...)")
        if in_channels is not None:
            options["in_channels"] = in_channels
        built = build_net(arch, options, ckpt, strict=strict)
        net, arch_name, config, warnings = built.net, built.arch, dict(built.net.config), built.warnings
        channels = net.in_channels
        if divisor is not None and divisor != net.divisor:
            raise ConfigError(f"--divisor {divisor} contradicts {arch_name}'s own divisor {net.divisor}; drop --divisor")
        divisor = net.divisor
    if divisor < 1:
        raise ConfigError(f"--divisor {divisor} must be >= 1")
    default_mean, default_std = default_normalization(channels)
    mean = mean or (ckpt.mean if ckpt and ckpt.mean else None) or default_mean
    std = std or (ckpt.std if ckpt and ckpt.std else None) or default_std
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConfigError(f"--{name} has {len(values)} values; the net takes {channels} channels")
    if any(s <= 0 for s in std):
        raise ConfigError(f"--std {std} must be all > 0")
    return LoadedNet(net.eval(), arch_name, config, divisor, channels, ckpt, list(mean), list(std), warnings)
