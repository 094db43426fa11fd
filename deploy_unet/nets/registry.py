"""Name -> constructor registry, in the style of timm's ``@register_model`` and smp's ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploy_unet.errors import ConfigError

if TYPE_CHECKING:
    from deploy_unet.nets.blocks import SegmentationNet

_NETS: dict[str, Callable[..., Any]] = {}


def register_net(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _NETS:
            raise RuntimeError(f"net {name!r} registered twice")
        _NETS[name] = factory
        return factory

    return decorator


def list_nets() -> list[str]:
    return sorted(_NETS)


def net_options(name: str) -> dict[str, Any]:
    """The options ``create_net(name, ...)`` accepts, with their defaults."""
    factory = _get(name)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def create_net(name: str, **config: Any) -> SegmentationNet:
    """Build a registered reference net (``unet``, ``unetpp``, ``fcn8s``, ``fcn16s``, ``fcn32s``) with its options,
    e.g. ``create_net("unet", depth=4, base_channels=32, num_classes=3)``; it states its own ``divisor`` and
    ``shape_contract``. Unknown names or options raise a ConfigError listing the valid ones (``net_options``)."""
    factory = _get(name)
    valid = net_options(name)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for net {name!r}; valid options: {', '.join(valid)}"
        )
    return factory(**config)


def _get(name: str) -> Callable[..., Any]:
    try:
        return _NETS[name]
    except KeyError:
        raise ConfigError(f"unknown net {name!r}; valid names: {', '.join(list_nets())}") from None
