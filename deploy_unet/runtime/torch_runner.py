"""PyTorch eager runner: the reference every other backend is validated against.

Built from a self-describing checkpoint, from an explicit arch + net config, or from an ONNX file's
metadata (``ModelInfo``) plus the checkpoint holding the weights. Runs on CPU, or CUDA when present.

fp32 means fp32: while active, the runner turns TF32 off for cuDNN convolutions and matmuls (cuDNN's default
runs fp32 convolutions in TF32, which moved the shipped UNet 1.9e-4 rel L2 from ONNX Runtime on an H100),
unless ``allow_tf32=True``; the global flags are restored on exit. On CUDA, inputs are staged through a pinned
host buffer kept per shape and outputs come back into pinned memory from torch's caching host allocator (reused
once the caller drops the previous result), so transfers run at pinned-copy speed instead of pageable.
``output="mask"`` returns the argmax over classes computed on the device (1 byte a pixel instead of 4 a class).

The ways users make a torch net fast on a GPU are options here, so the project's own runner is the fast path and
not a slower stand-in: ``precision="fp16"`` (weights and activations in half), ``channels_last`` (NHWC memory, what
cuDNN's tensor-core kernels want), ``cuda_graph`` (one graph per input shape, replayed: a 512x512 UNet at batch 1
is launch-bound) and ``compile`` (``torch.compile`` with one of its modes). fp32 stays the reference default.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy_unet.checkpoint import Checkpoint, load_checkpoint
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.metadata import ModelInfo
from deploy_unet.nets.loading import build_net
from deploy_unet.nets.pad_in_graph import PadInGraph
from deploy_unet.runtime.base import MASK_OUTPUT, Runner, TensorSpec, check_output_kind, mask_dtype, no_mark
from deploy_unet.runtime.host_buffers import PinnedStaging

DEVICES = ("auto", "cpu", "cuda")
TORCH_PRECISIONS = ("fp32", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MAX_CUDA_GRAPHS = 4  # input shapes whose CUDA graphs a torch runner keeps


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
        allow_tf32: bool = False,
        output: str = "logits",
        precision: str = "fp32",
        channels_last: bool = False,
        cuda_graph: bool = False,
        compile: str | None = None,
    ):
        super().__init__(
            divisor=int(getattr(net, "divisor", 1)),
            in_channels=getattr(net, "in_channels", None),
            pad=pad,
            pad_mode=pad_mode,
            contract_reason=getattr(net, "contract_reason", ""),
            contract=getattr(net, "shape_contract", None),
            pad_in_graph=isinstance(net, PadInGraph),
        )
        self.net = net
        self.device = resolve_device(device)
        self.input_name = input_name
        self.output_name = output_name
        self.threads = threads
        self.info = info
        self.source = source
        self.allow_tf32 = bool(allow_tf32)
        self.output = check_output_kind(output)
        self.precision, self.channels_last, self.cuda_graph, self.compile = _check_speed_options(
            precision, bool(channels_last), bool(cuda_graph), compile, self.device)
        self._module: Callable[[torch.Tensor], torch.Tensor] | None = None  # the net as run: cast, laid out, compiled
        # input shape -> (CUDAGraph, static input, static output), least recently used first
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._saved_threads: int | None = None
        self._saved_tf32: tuple[bool, bool] | None = None
        self._staging = PinnedStaging(torch)  # pinned input buffers per input shape (CUDA)

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
        given_by: str | None = None,
        **options: Any,
    ) -> TorchRunner:
        """``arch`` with ``net_config`` over the checkpoint's own config, its weights loaded (random init
        when None); a config the weights do not fit is refused by ``build_net``'s one rule."""
        ckpt = _as_checkpoint(checkpoint)
        built = build_net(arch, net_config, ckpt, strict=strict, given_by=given_by)
        for message in built.warnings:
            warnings.warn(message, stacklevel=2)
        net = built.net
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
                **ModelInfo.contract_fields(net.shape_contract, getattr(net, "padding", "same")),
                mean=list(ckpt.mean or []) if ckpt else [],
                std=list(ckpt.std or []) if ckpt else [],
                extra={"checkpoint_sha256": ckpt.sha256} if ckpt else {},
                class_names=ckpt.class_names if ckpt else [],
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
        return cls.from_config(info.arch, info.net_config, ckpt, strict=strict, info=info,
                               given_by="the ONNX metadata", **options)

    # -- protocol ------------------------------------------------------------------------------
    @property
    def input_spec(self) -> dict[str, TensorSpec]:
        axes = ("D", "H", "W")[-self.contract.spatial_dims:]
        return {self.input_name: TensorSpec(self.input_name, "float32", ("N", self.in_channels, *axes))}

    @property
    def _memory_format(self) -> torch.memory_format:
        """Channels-last for the net's rank: NHWC for 2D, NDHWC (``channels_last_3d``) for a volume net."""
        return torch.channels_last_3d if self.contract.spatial_dims == 3 else torch.channels_last

    @property
    def output_names(self) -> list[str]:
        return [MASK_OUTPUT if self.output == MASK_OUTPUT else self.output_name]

    def _activate(self) -> None:
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._saved_tf32 = tf32_flags()
        set_tf32_flags(self.allow_tf32, self.allow_tf32)
        self.net.to(self.device).eval()
        module: Any = self.net
        if self.precision == "fp16":
            module = copy.deepcopy(self.net).half()  # a copy: the fp32 net stays what the checkpoint holds
        if self.channels_last:
            module = module.to(memory_format=self._memory_format)
        if self.compile:
            module = torch.compile(module, mode=self.compile)
        self._module = module

    def _deactivate(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_tf32 is not None:
            set_tf32_flags(*self._saved_tf32)
            self._saved_tf32 = None
        self._staging.clear()
        self._module = None
        self._graphs.clear()

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_phased(feeds)

    def infer_phased(
        self, feeds: dict[str, np.ndarray], mark: Callable[[str], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Inference split into host-to-device, compute and device-to-host phases.

        ``mark(phase)`` is called as each phase ends, so a bench clock (CUDA events on a GPU) can time
        them separately as trtexec does. Feeds must already satisfy the contract (``infer`` checks).
        """
        mark = mark or no_mark
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            array = feeds[self.input_name]
            x = self._staging.stage(array) if cuda else torch.from_numpy(array)
            if self.cuda_graph:
                y = self._replay(x, mark)
            else:
                x = x.to(self.device, non_blocking=True)
                mark("h2d")
                y = self._forward(x)
            mark("compute")
            if cuda:
                host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)  # caching host allocator: reused
                host.copy_(y, non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()
            else:
                host = y.contiguous()  # channels_last comes back NHWC-strided
            out = host.numpy()
            mark("d2h")
        return {self.output_names[0]: out}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 NCHW in (on the device), logits (fp32) or the mask out, all on the device."""
        if self.precision == "fp16":
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=self._memory_format)
        try:
            y = self._module(x)
        except Exception as exc:  # torch.compile reports compiler failures as their own exception types
            if self.compile and type(exc).__module__.startswith("torch._"):
                raise ArtifactError(f"torch.compile(mode={self.compile!r}) failed: {str(exc).splitlines()[0]}; "
                                    "drop --compile to run eagerly") from None
            raise
        if self.output == MASK_OUTPUT:
            return y.argmax(1).to(getattr(torch, mask_dtype(y.shape[1])))
        return y if y.dtype == torch.float32 else y.float()

    def _replay(self, staged: torch.Tensor, mark: Callable[[str], None]) -> torch.Tensor:
        """Run through a CUDA graph captured for this input shape (captured on first sight, after warm-up).

        A few shapes keep their graphs (tiling alternates full and last tile batches; a benchmark walks through
        shapes); beyond ``MAX_CUDA_GRAPHS`` the least recently used is dropped, so memory stays bounded. The
        returned tensor is the graph's static output: the caller copies it out before the next replay.
        """
        shape = tuple(staged.shape)
        if shape not in self._graphs:
            while len(self._graphs) >= MAX_CUDA_GRAPHS:
                self._graphs.popitem(last=False)
            static_in = torch.empty(shape, dtype=torch.float32, device=self.device)
            static_in.copy_(staged)
            side = torch.cuda.Stream(self.device)  # warm-up off the default stream, as torch's docs require
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        self._graphs.move_to_end(shape)
        graph, static_in, static_out = self._graphs[shape]
        static_in.copy_(staged, non_blocking=True)
        mark("h2d")
        graph.replay()
        return static_out

    @property
    def mode(self) -> str:
        """How the net runs, for labels: ``fp16 channels_last cuda-graph compile=max-autotune``."""
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.cuda_graph:
            parts.append("cuda-graph")
        if self.compile:
            parts.append(f"compile={self.compile}")
        return " ".join(parts)

    @property
    def device_kind(self) -> str:
        return self.device.type


def _check_speed_options(precision: str, channels_last: bool, cuda_graph: bool, compile: str | None,
                         device: torch.device) -> tuple[str, bool, bool, str | None]:
    if precision not in TORCH_PRECISIONS:
        raise ConfigError(f"--torch-precision {precision!r} is not valid; choose one of: {', '.join(TORCH_PRECISIONS)}")
    if compile is not None and compile not in COMPILE_MODES:
        raise ConfigError(f"--compile {compile!r} is not a torch.compile mode; choose one of: {', '.join(COMPILE_MODES)}")
    if cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device, and the torch runner is on {device.type}; "
                          "drop --cuda-graph or use --device cuda")
    if cuda_graph and compile:
        raise ConfigError("--cuda-graph and --compile do not combine: torch.compile brings its own CUDA graphs; "
                          "use --compile reduce-overhead (or max-autotune) alone")
    return precision, channels_last, cuda_graph, compile


def tf32_flags() -> tuple[bool, bool]:
    """(cuDNN convolutions, CUDA matmuls) may use TF32."""
    return bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32)


def set_tf32_flags(cudnn: bool, matmul: bool) -> None:
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.backends.cuda.matmul.allow_tf32 = matmul


def _as_checkpoint(checkpoint: Checkpoint | str | os.PathLike | None) -> Checkpoint | None:
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    return load_checkpoint(checkpoint)
