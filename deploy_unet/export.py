"""torch -> ONNX: dynamic axes, checker, shape inference, simplification, metadata, parity check.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export-based, the default since torch 2.9).
It exports every reference net with ``Dim.AUTO`` batch/height/width, and it *derives* the shape
contract itself: the logits' symbolic H is ``16*((h//16))`` for a depth-4 UNet. The TorchScript
exporter is deprecated and needs ``dynamic_axes`` guesses, so it is not used.

The file is verified in ONNX Runtime against PyTorch before it is moved into place: a model that
fails parity never reaches the output path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from deploy_unet import __version__
from deploy_unet.errors import ArtifactError, ConfigError, GateFailedError
from deploy_unet.fileio import atomic_path
from deploy_unet.metadata import PAD_IN_GRAPH_KEY, ModelInfo, write_props
from deploy_unet.nets.pad_in_graph import PadInGraph
from deploy_unet.shapes import check_size_pad_in_graph, validate_shape
from deploy_unet.timing import StageTimes

DYNAMIC_CHOICES = ("all", "batch", "hw", "none")
MIN_OPSET = 13  # per-channel Q/DQ (the int8 path) needs 13; the dynamo exporter itself emits 18
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Symbolic dim names users see in Netron / trtexec --shapes / polygraphy inspect.
DIM_NAMES = {0: "batch", 2: "height", 3: "width"}


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: dict[str, float] = field(default_factory=dict)  # "BxCxHxW" -> max abs error vs PyTorch
    seconds: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)  # where the time went


def export_onnx(
    net: nn.Module | str | os.PathLike,
    output: str | os.PathLike,
    *,
    height: int = 256,
    width: int = 256,
    batch: int = 1,
    dynamic: str = "all",
    opset: int = DEFAULT_OPSET,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    arch: str | None = None,
    net_config: dict | None = None,
    divisor: int | None = None,
    in_channels: int | None = None,
    checkpoint_sha256: str | None = None,
    simplify: bool = True,
    verify: bool = True,
    tolerance: float = 1e-4,
    pad_in_graph: bool = False,
    class_names: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``net`` to ``output`` (written atomically) and return what was written and measured.

    ``net``: an ``nn.Module``, or the path of a deploy-unet checkpoint, which supplies the net, its
    normalization, arch, config, class names and hash (arguments given here still win).
    ``pad_in_graph``: export ``PadInGraph(net)``, whose graph reflect-pads H and W up to the divisor
    and crops the logits back, so the file takes any H, W (>= ``shapes.min_size_pad_in_graph``).
    ``class_names``: one name per class, stored in the metadata (legends of ``predict``, reports).
    """
    if not isinstance(net, nn.Module):
        from deploy_unet.nets.loading import load_net

        loaded = load_net(checkpoint=net)
        net = loaded.net
        mean, std = mean or loaded.mean, std or loaded.std
        arch, net_config = arch or loaded.arch, net_config if net_config is not None else loaded.net_config
        checkpoint_sha256 = checkpoint_sha256 or (loaded.checkpoint.sha256 if loaded.checkpoint else None)
        class_names = class_names if class_names is not None else (
            loaded.checkpoint.class_names if loaded.checkpoint else None)
    log = log or (lambda _msg: None)
    start = time.perf_counter()
    times = StageTimes()
    net = net.eval()
    divisor = divisor or getattr(net, "divisor", None)
    if not divisor:
        raise ConfigError("the net states no divisor; pass --divisor (2**number_of_poolings)")
    in_channels = in_channels or getattr(net, "in_channels", None) or 3
    if dynamic not in DYNAMIC_CHOICES:
        raise ConfigError(f"--dynamic {dynamic!r} is not valid; choose one of: {', '.join(DYNAMIC_CHOICES)}")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is below {MIN_OPSET}; per-channel int8 Q/DQ needs opset >= 13")
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    reason = getattr(net, "contract_reason", "") or f"the divisor {divisor}"
    arch = arch or getattr(net, "arch", None) or type(net).__name__
    contract = getattr(net, "shape_contract", None)
    output_mode = getattr(net, "output_mode", None)  # read before a PadInGraph wrapper hides it
    if pad_in_graph:
        if contract is not None and not contract.is_divisor_only:
            raise ConfigError("--pad-in-graph pads to the divisor of a net whose output equals its input; a "
                              "valid-convolution net shrinks its output: use --tile at run time instead")
        check_size_pad_in_graph((height, width), divisor)
        net = PadInGraph(net, divisor).eval()
    elif contract is None or contract.is_divisor_only:
        validate_shape((height, width), divisor, reason, pad_hint="choose a valid --height/--width")
    else:  # e.g. a valid-convolution UNet: sizes divisor*k + remainder, output smaller than input
        contract.validate((height, width), pad_hint="choose a valid --height/--width")

    sample = torch.from_numpy(_sample(batch, in_channels, height, width, seed=0))
    with torch.no_grad(), times.stage("PyTorch forward (sample)"):
        try:
            reference = net(sample)
        except Exception as exc:
            raise ConfigError(
                f"the net fails on a {batch}x{in_channels}x{height}x{width} sample "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); check --in-channels and the size"
            ) from None
    if not isinstance(reference, torch.Tensor) or reference.dim() != 4:
        raise ConfigError("the net must return one NCHW tensor of logits")
    num_classes = int(reference.shape[1])
    names = [str(n).strip() for n in (class_names or [])]
    if names and (len(names) != num_classes or not all(names)):
        raise ConfigError(f"--class-names gives {len(names)} name(s) ({', '.join(names)}) for a net with "
                          f"{num_classes} classes; give exactly one non-empty name per class, comma-separated")

    log("exporting with torch.onnx.export(dynamo=True)")
    with times.stage("torch.onnx.export (dynamo)"):
        model = _torch_export(net, sample, dynamic, opset)
        _name_dims(model, dynamic, same_size=contract is None or contract.border == 0)
    log("checking (onnx.checker, full shape inference)")
    with times.stage("onnx.checker + shape inference"):
        model = _check(model)
    if simplify:
        log("simplifying (onnxslim)")
        with times.stage("onnxslim"):
            model = _simplify(model)

    info = ModelInfo(
        arch=arch,
        divisor=int(divisor),
        in_channels=int(in_channels),
        num_classes=num_classes,
        net_config=dict(net_config if net_config is not None else getattr(net, "config", {}) or {}),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        mean=list(mean) if mean else [],
        std=list(std) if std else [],
        precision="fp32",
        export_shape=[batch, in_channels, height, width],
        class_names=names,
        **(ModelInfo.contract_fields(contract, getattr(net, "padding", "same")) if contract is not None else {}),
        extra={
            "exporter": "torch.onnx.export(dynamo=True)",
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "deploy_unet_version": __version__,
            "dynamic": dynamic,
            "opset": str(opset),
            "checkpoint_sha256": checkpoint_sha256 or "",
            PAD_IN_GRAPH_KEY: "reflect" if pad_in_graph else "none",
            # A net with several outputs to choose from (UNet++ heads / pruning) says which one this is.
            **({"output_mode": output_mode} if output_mode else {}),
        },
    )
    write_props(model, info.to_props())

    with atomic_path(output) as tmp:
        onnx.save(model, os.fspath(tmp))
        parity: dict[str, float] = {}
        if verify:
            log("verifying in ONNX Runtime against PyTorch")
            with times.stage("parity check (ORT vs PyTorch)"):
                parity = _verify(net, tmp, info, dynamic, tolerance)
    return ExportResult(Path(output), info, parity, time.perf_counter() - start, times)


def _sample(batch: int, channels: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(np.float32)


def _torch_export(net: nn.Module, sample: torch.Tensor, dynamic: str, opset: int) -> onnx.ModelProto:
    auto = torch.export.Dim.AUTO
    dims = {
        "all": {0: auto, 2: auto, 3: auto},
        "batch": {0: auto},
        "hw": {2: auto, 3: auto},
        "none": {},
    }[dynamic]
    arg_name = _first_arg_name(net)
    with _quiet_exporter(), tempfile_dir() as folder:
        path = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(
                net,
                (sample,),
                os.fspath(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={arg_name: dims} if dims else None,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            raise ArtifactError(
                f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from None
        return onnx.load(os.fspath(path))


def _first_arg_name(net: nn.Module) -> str:
    import inspect

    params = [p for p in inspect.signature(net.forward).parameters.values() if p.name != "self"]
    if not params:
        raise ConfigError("the net's forward() takes no input")
    return params[0].name


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs warnings about optional torchvision ops and prints a progress banner."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def tempfile_dir():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deploy-unet-") as folder:
        yield folder


def _name_dims(model: onnx.ModelProto, dynamic: str, same_size: bool = True) -> None:
    """Give the exporter's symbols (s77, s53, ``16*((s53//16))``) readable names.

    The output's H is exported as ``16*((h//16))``; under the enforced contract that equals the
    input's H, so it gets the same name, which is what TensorRT and Polygraphy users expect to see.
    A net whose output is smaller (``same_size=False``, valid convolutions) names it out_height/out_width.
    """
    graph = model.graph
    renames: dict[str, str] = {}
    for io_list in (graph.input, graph.output):
        for value in io_list:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.dim_param and axis in DIM_NAMES and axis != 0 and not same_size and io_list is graph.output:
                    dim.dim_param = "out_" + DIM_NAMES[axis]
                    continue
                if dim.dim_param and axis in DIM_NAMES:
                    symbol = re.findall(r"s\d+", dim.dim_param)
                    if len(symbol) == 1:
                        renames.setdefault(symbol[0], DIM_NAMES[axis])
                    dim.dim_param = DIM_NAMES[axis]
    for value in graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = re.sub(r"s\d+", lambda m: renames.get(m.group(0), m.group(0)), dim.dim_param)


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ArtifactError(f"the exported ONNX does not pass onnx.checker: {str(exc).splitlines()[0]}") from None


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with _quiet_exporter():
        slim = onnxslim.slim(model)
    if slim is None:
        raise ArtifactError("onnxslim returned no model; re-run with --no-simplify")
    onnx.checker.check_model(slim)
    return slim


def _verify(net: nn.Module, path: Path, info: ModelInfo, dynamic: str, tolerance: float) -> dict[str, float]:
    """Run the file in ONNX Runtime at the export size and a second valid size; compare with PyTorch.

    Gate: max abs error <= tolerance * max(1, max |reference|) — absolute for unit-scale logits,
    relative for nets whose logits are large.
    """
    import onnxruntime as ort

    b, c, h, w = info.export_shape
    d = info.divisor
    shapes = [(b, c, h, w)]
    second = (
        b + 2 if dynamic in ("all", "batch") else b,
        c,
        h + d if dynamic in ("all", "hw") else h,
        w + 2 * d if dynamic in ("all", "hw") else w,
    )
    if second != shapes[0]:
        shapes.append(second)
    if info.pad_in_graph and dynamic in ("all", "hw") and d > 1:
        # Off the divisor on both sides, by different pads: the in-graph Pad and Slice are exercised.
        shapes.append((b, c, h + 1, w + d - 1))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    parity = {}
    for i, shape in enumerate(shapes):
        x = _sample(*shape, seed=i + 1)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        if got.shape != ref.shape:
            raise GateFailedError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} at input {shape}")
        err = float(np.abs(got - ref).max())
        key = "x".join(map(str, shape))
        parity[key] = err
        limit = tolerance * max(1.0, float(np.abs(ref).max()))
        if not err <= limit:
            raise GateFailedError(
                f"ONNX Runtime differs from PyTorch at input {key}: max abs error {err:.3g} > {limit:.3g} "
                "(--tolerance); the file was not written"
            )
    return parity
