"""Checkpoints: load a state_dict (bare, or inside ``state_dict``/``model``), save self-describing ones.

A checkpoint saved by ``save_checkpoint`` carries its arch, net config and input normalization, so
``deploy-unet export --checkpoint FILE`` needs no other option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy_unet.errors import ArtifactError
from deploy_unet.fileio import atomic_path, sha256_file

FORMAT = "deploy-unet-checkpoint/1"


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    sha256: str
    path: Path
    arch: str | None = None
    net_config: dict[str, Any] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """One name per class: ``extra["class_names"]`` when the checkpoint records them; for a net trained on
        the synthetic scenes (``extra.training.data`` synthetic), their class names; else none."""
        names = self.extra.get("class_names")
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            return list(names)
        training = self.extra.get("training") or {}
        classes = (self.net_config or {}).get("num_classes")
        if str(training.get("data", "")).startswith("synthetic") and isinstance(classes, int):
            from deploy_unet.data import CLASS_NAMES, CLASS_NAMES_3D

            names = CLASS_NAMES_3D if str(training.get("data", "")).count("x") == 2 else CLASS_NAMES  # DxHxW: volumes
            return list(names[:classes]) if classes <= len(names) else []
        return []


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors vary; the cause goes in the message
        raise ArtifactError(
            f"checkpoint {path} could not be read as a weights-only torch file ({type(exc).__name__}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    state, meta = _find_state_dict(obj, path)
    state = _strip_prefix(state, "module.")  # DataParallel / DDP checkpoints
    norm = meta.get("normalization") or {}
    return Checkpoint(
        state_dict=state,
        sha256=sha256_file(path),
        path=path,
        arch=meta.get("arch"),
        net_config=meta.get("net_config"),
        mean=norm.get("mean"),
        std=norm.get("std"),
        extra=meta.get("extra") or {},
    )


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, {}
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner, obj
    raise ArtifactError(
        f"checkpoint {path} holds no state_dict: expected a dict of tensors, or a dict with a "
        "'state_dict' or 'model' entry holding one"
    )


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


@dataclass
class WeightFit:
    """How a checkpoint's tensors line up with a net's: what is missing, extra, or of another shape."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key (ckpt shape) vs (net shape)"
    matching: int
    total: int

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def weight_fit(net: nn.Module, state_dict: dict[str, torch.Tensor]) -> WeightFit:
    expected = net.state_dict()
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    return WeightFit(
        missing=[k for k in expected if k not in state_dict],
        unexpected=[k for k in state_dict if k not in expected],
        mismatched=mismatched,
        matching=sum(1 for k, v in expected.items() if k in state_dict and state_dict[k].shape == v.shape),
        total=len(expected),
    )


def load_weights(net: nn.Module, ckpt: Checkpoint, strict: bool = True, skip_mismatched: bool = False) -> None:
    """Load weights; with ``strict`` any missing or unexpected key is an error that lists them.

    A tensor of another shape is always an error, unless ``skip_mismatched`` (a deliberate, non-strict
    override of the checkpoint's config): then only the tensors that fit are loaded.
    """
    fit = weight_fit(net, ckpt.state_dict)
    if fit.mismatched and not skip_mismatched:
        raise ArtifactError(
            f"checkpoint {ckpt.path} does not fit the net: shape mismatch in {_listing(fit.mismatched)}; "
            "check the net options (depth, base_channels, num_classes, ...)"
        )
    if strict and (fit.missing or fit.unexpected):
        parts = []
        if fit.missing:
            parts.append(f"missing keys {_listing(fit.missing)}")
        if fit.unexpected:
            parts.append(f"unexpected keys {_listing(fit.unexpected)}")
        raise ArtifactError(
            f"checkpoint {ckpt.path} does not fit the net: {'; '.join(parts)}; "
            "check the net options, or pass --no-strict to load what matches"
        )
    expected = net.state_dict()
    state = {k: v for k, v in ckpt.state_dict.items() if k in expected and v.shape == expected[k].shape}
    net.load_state_dict(state, strict=False)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def save_checkpoint(
    path: str | os.PathLike,
    net: nn.Module,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save weights with arch, net config and normalization (what export needs to stand alone)."""
    payload = {
        "format": FORMAT,
        "arch": getattr(net, "arch", None),
        "net_config": dict(getattr(net, "config", {}) or {}),
        "normalization": {"mean": mean, "std": std},
        "extra": extra or {},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
