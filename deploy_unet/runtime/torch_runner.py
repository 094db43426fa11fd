"""PyTorch eager runner: the reference every other backend is validated against.

Built from a self-describing checkpoint, from an explicit arch + net config, or from an ONNX file's
metadata (``ModelInfo``) plus the checkpoint holding the weights. Runs on CPU, or CUDA when present.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy_unet.checkpoint import Checkpoint, load_checkpoint, load_weights
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.metadata import ModelInfo
from deploy_unet.nets import create_net
from deploy_unet.nets.pad_in_graph import PadInGraph
from deploy_unet.runtime.base import Runner, TensorSpec

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when a device is there, else CPU; ``cuda`` without one is a clear error."""
    name = str(device)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ConfigError(f"device {device!r} is not valid; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError(
            f"device {device!r} asked for, but torch sees no CUDA device (torch {torch.__version__}); "
            "use --device cpu, or install a CUDA build of torch on a GPU machine"
        )
    return torch.device(name)


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode`` on NumPy feeds."""

    backend = "torch"

    def __init__(
        self,
        net: nn.Module,
        *,
        device: str = "auto",
        pad: bool = False,
        pad_mode: str = "reflect",
        input_name: str = "input",
        output_name: str = "logits",
        threads: int | None = None,
        info: ModelInfo | None = None,
        source: str = "",
    ):
        super().__init__(
            divisor=int(getattr(net, "divisor", 1)),
            in_channels=getattr(net, "in_channels", None),
            pad=pad,
            pad_mode=pad_mode,
            contract_reason=getattr(net, "contract_reason", ""),
            pad_in_graph=isinstance(net, PadInGraph),
        )
        self.net = net
        self.device = resolve_device(device)
        self.input_name = input_name
        self.output_name = output_name
        self.threads = threads
        self.info = info
        self.source = source
        self._saved_threads: int | None = None

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, strict: bool = True, **options: Any) -> TorchRunner:
        """A checkpoint saved by ``save_checkpoint`` (it names its arch and net config)."""
        ckpt = load_checkpoint(path)
        if not ckpt.arch:
            raise ArtifactError(
                f"checkpoint {ckpt.path} does not name its architecture (a bare state_dict); "
                "re-save it with deploy_unet.checkpoint.save_checkpoint, or run the exported ONNX "
                "with --backend torch --checkpoint FILE"
            )
        return cls.from_config(ckpt.arch, ckpt.net_config or {}, ckpt, strict=strict, **options)

    @classmethod
    def from_config(
        cls,
        arch: str,
        net_config: dict[str, Any],
        checkpoint: Checkpoint | str | os.PathLike | None = None,
        *,
        strict: bool = True,
        info: ModelInfo | None = None,
        **options: Any,
    ) -> TorchRunner:
        """``create_net(arch, **net_config)`` with the checkpoint's weights (random init when None)."""
        net = create_net(arch, **net_config)
        ckpt = _as_checkpoint(checkpoint)
        if ckpt is not None:
            load_weights(net, ckpt, strict=strict)
        if info is not None and info.pad_in_graph:
            # The ONNX it was exported to pads inside the graph; so does this net, to stay comparable.
            net = PadInGraph(net, net.divisor)
        if info is None:
            info = ModelInfo(
                arch=arch,
                divisor=int(net.divisor),
                in_channels=int(net.in_channels),
                num_classes=int(net.num_classes),
                net_config=dict(net.config),
                mean=list(ckpt.mean or []) if ckpt else [],
                std=list(ckpt.std or []) if ckpt else [],
                extra={"checkpoint_sha256": ckpt.sha256} if ckpt else {},
            )
        source = str(ckpt.path) if ckpt else f"{arch} (random init)"
        return cls(net, info=info, source=source, **options)

    @classmethod
    def from_model_info(
        cls, info: ModelInfo, checkpoint: Checkpoint | str | os.PathLike, *, strict: bool = True, **options: Any
    ) -> TorchRunner:
        """The net an ONNX file was exported from (its metadata), with weights from ``checkpoint``."""
        ckpt = _as_checkpoint(checkpoint)
        if ckpt is None:
            raise ConfigError(
                f"running the {info.arch!r} net from ONNX metadata on torch needs its weights; "
                "pass the checkpoint it was exported from (--checkpoint FILE)"
            )
        if ckpt.arch and ckpt.arch != info.arch:
            raise ArtifactError(
                f"checkpoint {ckpt.path} is a {ckpt.arch!r} net but the ONNX metadata says {info.arch!r}; "
                "pass the checkpoint the ONNX file was exported from"
            )
        exported_from = info.extra.get("checkpoint_sha256")
        if exported_from and exported_from != ckpt.sha256:
            raise ArtifactError(
                f"checkpoint {ckpt.path} (sha256 {ckpt.sha256[:12]}) is not the one the ONNX file was exported "
                f"from (sha256 {exported_from[:12]}); pass the matching checkpoint"
            )
        options.setdefault("input_name", info.input_names[0] if info.input_names else "input")
        options.setdefault("output_name", info.output_names[0] if info.output_names else "logits")
        return cls.from_config(info.arch, info.net_config, ckpt, strict=strict, info=info, **options)

    # -- protocol ------------------------------------------------------------------------------
    @property
    def input_spec(self) -> dict[str, TensorSpec]:
        return {self.input_name: TensorSpec(self.input_name, "float32", ("N", self.in_channels, "H", "W"))}

    @property
    def output_names(self) -> list[str]:
        return [self.output_name]

    def _activate(self) -> None:
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self.net.to(self.device).eval()

    def _deactivate(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_phased(feeds)

    def infer_phased(
        self, feeds: dict[str, np.ndarray], mark: Callable[[str], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Inference split into host-to-device, compute and device-to-host phases.

        ``mark(phase)`` is called as each phase ends, so a bench clock (CUDA events on a GPU) can time
        them separately as trtexec does. Feeds must already satisfy the contract (``infer`` checks).
        """
        mark = mark or _no_mark
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(feeds[self.input_name])).to(self.device, non_blocking=True)
            mark("h2d")
            y = self.net(x)
            mark("compute")
            out = y.float().cpu().numpy()
            mark("d2h")
        return {self.output_name: out}

    @property
    def device_kind(self) -> str:
        return self.device.type


def _no_mark(_phase: str) -> None:
    pass


def _as_checkpoint(checkpoint: Checkpoint | str | os.PathLike | None) -> Checkpoint | None:
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    return load_checkpoint(checkpoint)
