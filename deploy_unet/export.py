"""torch -> ONNX: dynamic axes, checker, shape inference, simplification, metadata, parity check.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export-based, the default since torch 2.9).
It exports every reference net with ``Dim.AUTO`` batch/height/width, and it *derives* the shape
contract itself: the logits' symbolic H is ``16*((h//16))`` for a depth-4 UNet. The TorchScript
exporter is deprecated and needs ``dynamic_axes`` guesses, so it is not used.

The file is verified in ONNX Runtime against PyTorch before it is moved into place: a model that
fails parity never reaches the output path.

Two traps of ``torch.export`` are avoided, and checked for. It specializes a dynamic dimension whose
sample size is 0 or 1 (a batch-1 sample gets baked into reshapes while the ONNX input still says
``batch``), and it gives dimensions with equal sample sizes one symbol ("duck sizing": a square sample
makes the graph assume H == W). So the sample it traces (``trace_shape``) is not the export shape: every
dynamic axis is >= 2 and the dynamic axes differ from one another. After export, ONNX Runtime runs the
file at the traced shape and at shapes that change one dynamic axis at a time (``check_shapes``), so a
graph that only runs at the traced size of some axis is refused in one line naming that axis.

Every stage (PyTorch forward, torch.onnx.export, onnx.checker, onnxslim, the ONNX Runtime session, the
parity run) turns a failure into one ``StageError`` line; with ``keep_failed`` the intermediate ONNX
of a failing stage is written beside the output as ``NAME.failed-<stage>.onnx``.
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
from deploy_unet.errors import ConfigError, GateFailedError, first_line, stage_errors
from deploy_unet.fileio import atomic_path, onnx_keeper
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
AXIS_INDEX = {"batch": 0, "height": 2, "width": 3}
DYNAMIC_AXES = {"all": ("batch", "height", "width"), "batch": ("batch",), "hw": ("height", "width"), "none": ()}
# Volumes (NCDHW, rank 5): depth is axis 2, height 3, width 4; "hw" makes every spatial axis dynamic.
SPATIAL_AXES = ("depth", "height", "width")


def axis_index(axis: str, rank: int = 4) -> int:
    """Where ``axis`` lies in an input of ``rank`` (4: NCHW, 5: NCDHW)."""
    if axis == "batch":
        return 0
    return rank - 3 + SPATIAL_AXES.index(axis)


def dynamic_axes(dynamic: str, rank: int = 4) -> tuple[str, ...]:
    """The axes ``--dynamic`` makes dynamic, for an input of ``rank`` (volumes add depth)."""
    axes = DYNAMIC_AXES[dynamic]
    if rank == 5 and "height" in axes:
        axes = tuple(a for a in axes if a == "batch") + SPATIAL_AXES
    return axes


def dim_names(rank: int = 4) -> dict[int, str]:
    """Symbolic names of the input's dims: batch, (depth,) height, width."""
    return {0: "batch", **{axis_index(a, rank): a for a in SPATIAL_AXES[5 - rank:]}}


def _axis_step(step, axis: str, rank: int) -> int:
    """The divisor of ``axis``: ``step`` is one int, or one per spatial axis."""
    if isinstance(step, int):
        return step
    return int(step[axis_index(axis, rank) - 2])


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: dict[str, float] = field(default_factory=dict)  # "BxCxHxW" -> max abs error vs PyTorch
    seconds: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)  # where the time went
    trace_shape: tuple[int, ...] = ()  # the sample torch.export traced (not the export shape; see trace_shape())
    notes: list[str] = field(default_factory=list)  # what was chosen or fell back (exporters.py), one line each


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
    keep_failed: bool = False,
    trace: tuple[int, ...] | None = None,
    depth: int | None = None,
    spatial_dims: int | None = None,
    divisors: Sequence[int] | None = None,
    exporter: str = "auto",
    output_key: str | None = None,
    output_index: int | None = None,
    upsample_in_graph: bool = False,
    metadata_extra: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``net`` to ``output`` (written atomically) and return what was written and measured.

    ``keep_failed`` (``--debug``): a stage that fails after the ONNX exists leaves it as
    ``NAME.failed-<stage>.onnx`` beside ``output``. ``trace`` overrides the traced sample shape
    (tests use it to reproduce the exporter's traps on purpose).

    ``net``: an ``nn.Module``, or the path of a deploy-unet checkpoint, which supplies the net, its
    normalization, arch, config, class names and hash (arguments given here still win).
    ``pad_in_graph``: export ``PadInGraph(net)``, whose graph reflect-pads H and W up to the divisor
    and crops the logits back, so the file takes any H, W (>= ``shapes.min_size_pad_in_graph``).
    ``class_names``: one name per class, stored in the metadata (legends of ``predict``, reports).
    Volumes: a net with 3 spatial dims (it says so: ``spatial_dims`` or its ``shape_contract``; else pass
    ``spatial_dims=3``) exports NCDHW at ``depth`` x ``height`` x ``width``, each axis checked against its
    divisor, with dynamic N, D, H, W and the specialization check on each of the three axes. ``divisors``:
    one per axis (depth, height, width) for a net that states none (``--divisor 4,32,32``).
    ``exporter``: auto | dynamo | torchscript; ``output_key``/``output_index``: the logits of a structured
    output; ``upsample_in_graph``: low-resolution logits brought to full size in the graph (exporters.py).
    ``metadata_extra``: more metadata entries (strings), e.g. a volume net's ``intensity`` and ``spacing``
    (``volume_processing.volume_props``, from ``export --intensity/--spacing``).
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
    known = _known_contract(net)  # a third-party net whose settings give its contract (MONAI's)
    divisor = divisor or getattr(net, "divisor", None) or (known.divisor if known is not None else None)
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
    if contract is None and known is not None:
        from deploy_unet.nets.known import reconcile_divisor

        contract = reconcile_divisor(known, None if divisor == known.divisor else divisor, divisors, arch)
        divisor, divisors, reason = contract.divisor, None, contract.reason
    output_mode = getattr(net, "output_mode", None)  # read before a PadInGraph wrapper hides it
    dims = _spatial_dims_of(net, contract, spatial_dims, depth)
    if divisors is not None and len(set(divisors)) > 1:
        from deploy_unet.shapes import ShapeContract

        if contract is not None and getattr(contract, "divisors", ()) and tuple(contract.divisors) != tuple(divisors):
            raise ConfigError(f"--divisor {','.join(map(str, divisors))} contradicts the net's own "
                              f"{contract.rule_text()}; drop --divisor")
        contract = ShapeContract.per_axis(divisors, len(divisors), reason=reason)
        divisor = contract.divisor
    if dims == 3:
        contract = _volume_contract(contract, int(divisor), reason)
        if pad_in_graph:
            raise ConfigError("--pad-in-graph pads 2D images; a volume net takes --pad at run time instead")
        if depth is None:
            raise ConfigError("a net with 3 spatial dims needs a depth: pass --size DxHxW (e.g. 32x64x64)")
        contract.validate((depth, height, width), pad_hint="choose a valid --size DxHxW")
    from deploy_unet.exporters import EXPORTER_NAMES, check_branches, export_graph, select_output

    if exporter not in EXPORTER_NAMES and exporter != "auto":
        raise ConfigError(f"--exporter {exporter!r} is not valid; choose one of: auto, dynamo, torchscript")
    same_size = contract is None or contract.is_divisor_only
    d = int(divisor)
    if dims == 3:  # validated above: the export size itself
        probe = (batch, in_channels, depth, height, width)
    else:
        probe = (batch, in_channels) + ((-(-height // d) * d, -(-width // d) * d) if same_size else (height, width))
    selection = select_output(net, torch.from_numpy(_sample(*probe, seed=0)), output_key,
                              output_index, upsample_in_graph, sizes_free=not same_size)
    net, notes = selection.net, [selection.note] if selection.note else []
    if selection.output_stride > 1 and pad_in_graph:
        raise ConfigError(f"--pad-in-graph crops full-size logits; this net's are at 1/{selection.output_stride}: "
                          "add --upsample-in-graph (or drop --pad-in-graph)")
    if dims == 3:
        pass  # checked per axis above
    elif pad_in_graph:
        if contract is not None and not contract.is_divisor_only:
            raise ConfigError("--pad-in-graph pads to the divisor of a net whose output equals its input; a "
                              "valid-convolution net shrinks its output: use --tile at run time instead")
        check_size_pad_in_graph((height, width), divisor)
        net = PadInGraph(net, divisor).eval()
    elif contract is None or contract.is_divisor_only:
        validate_shape((height, width), divisor, reason, pad_hint="choose a valid --height/--width")
    else:  # e.g. a valid-convolution UNet: sizes divisor*k + remainder, output smaller than input
        contract.validate((height, width), pad_hint="choose a valid --height/--width")

    model_name = arch
    step = contract.divisor if contract is not None else int(divisor)
    export_shape = (batch, in_channels, height, width)
    if dims == 3:
        step, export_shape = contract.axis_divisors, (batch, in_channels, depth, height, width)
    traced = tuple(trace) if trace is not None else trace_shape(export_shape, dynamic, step)
    shapes = check_shapes(traced, export_shape, dynamic, step, pad_in_graph=pad_in_graph)

    # PyTorch first, at every shape the parity check will use: a net that cannot take another size on an
    # axis is told so here, in one line, before the (slow) export.
    references: dict[tuple[int, ...], np.ndarray] = {}
    with torch.no_grad(), times.stage("PyTorch forward (samples)"):
        for shape, axis in [(export_shape, None)] + [s for s in shapes if s[0] != export_shape]:
            references[shape] = _torch_forward(net, shape, export_shape, axis, dynamic)
    reference = references[export_shape]
    if not isinstance(reference, np.ndarray) or reference.ndim != len(export_shape):
        raise ConfigError(f"the net must return one {'NCDHW' if dims == 3 else 'NCHW'} tensor of logits")
    num_classes = int(reference.shape[1])
    names = [str(n).strip() for n in (class_names or [])]
    if names and (len(names) != num_classes or not all(names)):
        raise ConfigError(f"--class-names gives {len(names)} name(s) ({', '.join(names)}) for a net with "
                          f"{num_classes} classes; give exactly one non-empty name per class, comma-separated")

    def keeper(model: onnx.ModelProto | None):
        """With keep_failed, a failing stage leaves ``model`` as ``NAME.failed-<stage>.onnx``."""
        return onnx_keeper(model, output) if keep_failed else None

    log(f"exporting ({exporter}), sample {_key(traced)}")
    traced_sample = torch.from_numpy(_sample(*traced, seed=0))
    rank = len(traced)
    dims_out = {axis_index(a, rank): (a if a == "batch" or selection.output_stride == 1 and same_size else "out_" + a)
                for a in dynamic_axes(dynamic, rank)}
    try:
        with times.stage(f"torch.onnx.export ({'torchscript' if exporter == 'torchscript' else 'dynamo'})"), \
                stage_errors("torch.onnx.export", model_name):
            exported = export_graph(
                net, traced_sample, exporter,
                dynamo=lambda: _torch_export(net, traced_sample, dynamic, opset),
                torchscript=lambda: _torchscript_export(net, traced_sample, dynamic, opset, dims_out))
    except Exception as exc:
        kept_log = _keep_log(output, getattr(exc, "log", ""), keep_failed)
        if kept_log and exc.args:
            exc.args = (f"{exc.args[0]} (the exporters' output is kept in {kept_log})", *exc.args[1:])
        raise
    _keep_log(output, exported.log, keep_failed)
    if exported.exporter == "torchscript":  # auto fell back: the stage took both tries
        times.stages[-1].name = "torch.onnx.export (dynamo, then torchscript)" if exporter == "auto" else \
            "torch.onnx.export (torchscript)"
    notes += exported.notes
    model = exported.model
    _check_dynamic_inputs(model, dynamic, traced, keeper(model))
    _name_dims(model, dynamic, same_size=(contract is None or contract.border == 0) and selection.output_stride == 1,
               rank=len(export_shape))
    log("checking (onnx.checker, full shape inference)")
    with times.stage("onnx.checker + shape inference"), stage_errors("onnx.checker", model_name, keeper(model)):
        model = _check(model)
    if simplify:
        log("simplifying (onnxslim)")
        with times.stage("onnxslim"), stage_errors("onnxslim", model_name, keeper(model),
                                                   hint="re-run with --no-simplify"):
            model = _simplify(model)

    info = ModelInfo(
        arch=arch,
        divisor=int(divisor),
        in_channels=int(in_channels),
        num_classes=num_classes,
        net_config=dict(net_config if net_config is not None else _plain_config(getattr(net, "config", {}))),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        mean=list(mean) if mean else [],
        std=list(std) if std else [],
        precision="fp32",
        export_shape=list(export_shape),
        class_names=names,
        **(ModelInfo.contract_fields(contract, getattr(net, "padding", "same")) if contract is not None else {}),
        extra={
            "exporter": EXPORTER_NAMES[exported.exporter],
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "deploy_unet_version": __version__,
            "dynamic": dynamic,
            "trace_shape": _key(traced),
            "opset": str(opset),
            "checkpoint_sha256": checkpoint_sha256 or "",
            PAD_IN_GRAPH_KEY: "reflect" if pad_in_graph else "none",
            # A net with several outputs to choose from (UNet++ heads / pruning) says which one this is.
            **({"output_mode": output_mode} if output_mode else {}),
            # Structured or low-resolution outputs (exporters.py): which tensor, and at what stride.
            **({"output_selected": selection.chosen} if selection.chosen else {}),
            **({"output_stride": str(selection.output_stride), "upsample": "bilinear"}
               if selection.output_stride > 1 else {}),
            **({"upsampled_in_graph": f"bilinear from 1/{selection.upsampled_from}"} if selection.upsampled_from else {}),
            **({"traced_branches": "; ".join(exported.branches)} if exported.branches else {}),
            **(metadata_extra or {}),
        },
    )
    write_props(model, info.to_props())

    with atomic_path(output) as tmp:
        onnx.save(model, os.fspath(tmp))
        parity: dict[str, float] = {}
        if verify and exported.branches:  # the tracer followed one branch of a data-dependent condition: move it
            with times.stage("branch check (ORT vs PyTorch)"):
                checked = check_branches(net, tmp, exported.branches, traced, INPUT_NAME, tolerance, _sample)
            notes.append(f"the TorchScript exporter traced one branch of the data-dependent condition at "
                         f"{exported.branches[0]}; ONNX Runtime equals PyTorch on {checked} inputs chosen to move it")
        if verify:
            log("verifying in ONNX Runtime against PyTorch")
            with times.stage("parity check (ORT vs PyTorch)"):
                parity = _verify(net, tmp, shapes, references, traced, dynamic, tolerance, model_name, keeper(model))
    return ExportResult(Path(output), info, parity, time.perf_counter() - start, times, traced, notes)


def _plain_config(config) -> dict:
    """A net's ``.config`` as JSON-able dict: a dict as it is, a transformers PretrainedConfig by ``to_dict``,
    anything else (or what does not serialize) as {}."""
    import json

    if not isinstance(config, dict):
        config = config.to_dict() if hasattr(config, "to_dict") else {}
    try:
        json.dumps(config)
    except (TypeError, ValueError):
        return {}
    return dict(config or {})


def _keep_log(output, text: str, keep: bool) -> str | None:
    """--debug: what the exporters printed, beside the output as NAME.export.log (its path)."""
    if keep and text:
        path = f"{os.fspath(output)}.export.log"
        Path(path).write_text(text)
        return path
    return None


def _torchscript_export(net: nn.Module, sample: torch.Tensor, dynamic: str, opset: int, dims_out: dict[int, str]):
    """The TorchScript exporter (exporters.torchscript_export) with this module's names and dynamic axes."""
    from deploy_unet.exporters import torchscript_export

    rank = sample.dim()
    dims = {axis_index(a, rank): a for a in dynamic_axes(dynamic, rank)}
    with _quiet_exporter():
        return torchscript_export(net, sample, dims, opset, INPUT_NAME, OUTPUT_NAME, dims_out)


def trace_shape(export_shape: tuple[int, ...], dynamic: str, step) -> tuple[int, ...]:
    """The sample torch.export traces: the export shape, moved off its traps on the dynamic axes.

    A dynamic axis of size 0 or 1 is specialized (batch 1 -> 2); dynamic axes of equal size share one
    symbol, so each one is moved up by ``step`` (the divisor: sizes stay valid) until it differs from
    the dynamic axes before it (a 256x256 export traces 2x3x256x272 with divisor 16). Volumes (rank 5):
    the same on depth, height and width, ``step`` being one divisor or one per spatial axis.
    """
    shape = list(export_shape)
    rank = len(shape)
    taken: list[int] = []
    for axis in dynamic_axes(dynamic, rank):
        i = axis_index(axis, rank)
        if axis == "batch" and shape[i] < 2:
            shape[i] = 2
        while shape[i] < 2 or shape[i] in taken:
            shape[i] += 1 if axis == "batch" else _axis_step(step, axis, rank)
        taken.append(shape[i])
    return tuple(shape)


def check_shapes(
    traced: tuple[int, ...],
    export_shape: tuple[int, ...],
    dynamic: str,
    step,
    pad_in_graph: bool = False,
) -> list[tuple[tuple[int, ...], str | None]]:
    """Shapes the parity check runs, each with the one axis it changes from ``traced`` (None: several/none).

    The traced shape first; then one shape per dynamic axis with only that axis changed (batch 1, the
    size a 0/1 specialization would have baked; H and W one step up); then the export shape if it is
    not among them; with pad-in-graph a size off the divisor.
    """
    shapes: list[tuple[tuple[int, ...], str | None]] = [(traced, None)]
    rank = len(traced)
    for axis in dynamic_axes(dynamic, rank):
        i = axis_index(axis, rank)
        changed = list(traced)
        changed[i] = (1 if traced[i] != 1 else 2) if axis == "batch" else traced[i] + _axis_step(step, axis, rank)
        shapes.append((tuple(changed), axis))
    if all(shape != export_shape for shape, _ in shapes):
        shapes.append((export_shape, None))
    if rank != 4:
        return shapes
    b, c, h, w = traced
    if pad_in_graph and "height" in DYNAMIC_AXES[dynamic] and step > 1:
        # Off the divisor on both sides, by different pads: the in-graph Pad and Slice are exercised.
        shapes.append(((b, c, h + 1, w + step - 1), None))
    return shapes


def _key(shape) -> str:
    return "x".join(map(str, shape))


def _fix_for(axis: str, dynamic: str, rank: int = 4) -> str:
    """What to pass instead, for an axis the net or the graph cannot vary."""
    if axis == "batch":
        keep = "hw" if dynamic == "all" else "none"
        return f"export with --dynamic {keep} and --batch N for the batch you run"
    keep = "batch" if dynamic == "all" else "none"
    if rank == 5:
        return f"export with --dynamic {keep} and --size DxHxW set to the size you run"
    return f"export with --dynamic {keep} and --height/--width set to the size you run"


def _torch_forward(net: nn.Module, shape, export_shape, axis: str | None, dynamic: str) -> np.ndarray:
    """The net's logits at ``shape``; a failure is one line, naming the axis that changed if one did."""
    try:
        out = net(torch.from_numpy(_sample(*shape, seed=_seed(shape))))
    except Exception as exc:
        if shape == tuple(export_shape):
            raise ConfigError(
                f"the net fails on a {_key(shape)} sample ({first_line(exc)}); check --in-channels and the size"
                + (" (a 3D net: pass --spatial-dims 3 and --size DxHxW)" if len(shape) == 4 and "5D" in str(exc)
                   else "")
            ) from exc
        changed = axis or _failing_axes(net, shape, export_shape)
        raise ConfigError(
            f"the net runs at {_key(export_shape)} but not at {_key(shape)} ({changed} changed: {first_line(exc)}); "
            f"it does not take a dynamic {changed}: {_fix_for(changed.split()[0], dynamic, len(shape))}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the net returned {type(out).__name__}; it must return one tensor of logits")
    return out.detach().numpy()


def _failing_axes(net: nn.Module, shape, export_shape) -> str:
    """Which of the axes ``shape`` changes from the export shape the net fails on, each changed alone."""
    rank = len(shape)
    names = ("batch", *SPATIAL_AXES[5 - rank:])
    changed = [n for n in names if shape[axis_index(n, rank)] != export_shape[axis_index(n, rank)]]
    failing = []
    for axis in changed:
        probe = list(export_shape)
        probe[axis_index(axis, rank)] = shape[axis_index(axis, rank)]
        try:
            net(torch.from_numpy(_sample(*probe, seed=0)))
        except Exception:
            failing.append(axis)
    return " and ".join(failing or changed)


def _seed(shape) -> int:
    return sum(int(v) * 7 ** i for i, v in enumerate(shape)) % (2**31)


def _sample(*shape: int, seed: int) -> np.ndarray:
    """A normal sample of ``shape`` (N, C, H, W) or (N, C, D, H, W)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_export(net: nn.Module, sample: torch.Tensor, dynamic: str, opset: int) -> onnx.ModelProto:
    auto = torch.export.Dim.AUTO
    rank = sample.dim()
    dims = {axis_index(axis, rank): auto for axis in dynamic_axes(dynamic, rank)}
    arg_name = _first_arg_name(net)
    with _quiet_exporter(), tempfile_dir() as folder:
        path = Path(folder) / "model.onnx"
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
        return onnx.load(os.fspath(path))


def _check_dynamic_inputs(model: onnx.ModelProto, dynamic: str, traced, keep) -> None:
    """An axis asked to be dynamic that came out static: torch.export specialized it (the net's code
    fixed it: a size read as a Python int, a fixed positional embedding, ...). Refuse it by name."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rank = len(traced)
    for axis in dynamic_axes(dynamic, rank):
        dim = dims[axis_index(axis, rank)]
        if not dim.dim_param and dim.HasField("dim_value"):
            kept = keep("dynamic axes") if keep is not None else None
            raise ConfigError(
                f"torch.export fixed the {axis} to {dim.dim_value} (traced at {_key(traced)}): the net's code "
                f"does not let it vary; {_fix_for(axis, dynamic, rank)}" + (f" (the ONNX is kept as {kept})" if kept else "")
            )


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


def _name_dims(model: onnx.ModelProto, dynamic: str, same_size: bool = True, rank: int = 4) -> None:
    """Give the exporter's symbols (s77, s53, ``16*((s53//16))``) readable names.

    The output's H is exported as ``16*((h//16))``; under the enforced contract that equals the
    input's H, so it gets the same name, which is what TensorRT and Polygraphy users expect to see.
    A net whose output is smaller (``same_size=False``, valid convolutions) names it out_height/out_width.
    """
    graph = model.graph
    renames: dict[str, str] = {}
    names = dim_names(rank)  # batch, (depth,) height, width
    for io_list in (graph.input, graph.output):
        for value in io_list:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.dim_param and axis in names and axis != 0 and not same_size and io_list is graph.output:
                    dim.dim_param = "out_" + names[axis]
                    continue
                if dim.dim_param and axis in names:
                    symbol = re.findall(r"s\d+", dim.dim_param)
                    if len(symbol) == 1:
                        renames.setdefault(symbol[0], names[axis])
                    dim.dim_param = names[axis]
    for value in graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = re.sub(r"s\d+", lambda m: renames.get(m.group(0), m.group(0)), dim.dim_param)


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with _quiet_exporter():
        slim = onnxslim.slim(model)
    if slim is None:
        raise RuntimeError("onnxslim returned no model")
    onnx.checker.check_model(slim)
    return slim


def _known_contract(net: nn.Module):
    """``nets.known.stated_contract`` for a net that states no contract of its own, else None."""
    if getattr(net, "shape_contract", None) is not None:
        return None
    from deploy_unet.nets.known import stated_contract

    return stated_contract(net)


def _spatial_dims_of(net: nn.Module, contract, spatial_dims: int | None, depth: int | None) -> int:
    """3 for a volume net: it says so (``spatial_dims``, or its contract), or the caller does
    (``--spatial-dims 3``, or a depth given for a net that says nothing); else 2."""
    own = getattr(net, "spatial_dims", None)
    own = int(own) if isinstance(own, int) and own in (2, 3) else None  # MONAI nets carry spatial_dims too
    if spatial_dims is not None and spatial_dims not in (2, 3):
        raise ConfigError(f"--spatial-dims {spatial_dims} is not valid; choose 2 (images) or 3 (volumes)")
    if own and spatial_dims and own != spatial_dims:
        raise ConfigError(f"the net states {own} spatial dims, not {spatial_dims}; drop --spatial-dims")
    if own:
        return own
    if spatial_dims:
        return spatial_dims
    if contract is not None and contract.spatial_dims == 3:
        return 3
    return 3 if depth is not None else 2


def _volume_contract(contract, divisor: int, reason: str):
    """The net's contract on three axes: its own when it states one, else ``divisor`` on each axis."""
    from deploy_unet.shapes import ShapeContract

    if contract is not None and contract.spatial_dims == 3:
        return contract
    if contract is not None and not contract.is_divisor_only:
        raise ConfigError("a valid-convolution contract is 2D only; volumes take padded (same-size) nets")
    return ShapeContract(int(divisor), reason=reason, spatial_dims=3)


def known_cause(net: nn.Module, axis: str) -> str:
    """A pattern known to fix a size in the exported graph, found in the net's modules, as a clause."""
    if axis == "batch":
        return ""
    for name, module in net.named_modules():
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size
            if size not in (1, (1, 1)):
                return (f" ({name}: {type(module).__name__}(output_size={size}); ONNX has no adaptive pooling and the "
                        "exporter's decomposition fixes its input size, microsoft/onnxscript#1646)")
    return ""


def _verify(net: nn.Module, path: Path, shapes, references, traced, dynamic: str, tolerance: float,
            model_name: str, keep) -> dict[str, float]:
    """Run the file in ONNX Runtime at each of ``shapes`` and compare with PyTorch's ``references``.

    Gate: max abs error <= tolerance * max(1, max |reference|) -- absolute for unit-scale logits,
    relative for nets whose logits are large. A shape that changes one axis from the traced one and
    fails (ONNX Runtime error, wrong output shape, or numbers off) while the traced shape passed means
    the graph is specialized on that axis: a ConfigError that names it and the fix.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is reported below, in one line; ORT's own log would repeat it
    with stage_errors("ONNX Runtime session", model_name, keep):
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    parity = {}
    for shape, axis in shapes:
        key = _key(shape)
        ref = references[shape]
        problem = None
        try:
            got = session.run(None, {INPUT_NAME: _sample(*shape, seed=_seed(shape))})[0]
        except Exception as exc:
            got, problem = None, f"ONNX Runtime fails ({first_line(exc)})"
        if got is not None and got.shape != ref.shape:
            problem = f"the ONNX output is {_key(got.shape)}, PyTorch's {_key(ref.shape)}"
        err = float(np.abs(got - ref).max()) if problem is None else float("nan")
        limit = tolerance * max(1.0, float(np.abs(ref).max()))
        if problem is None and not err <= limit:
            problem = f"max abs error {err:.3g} > {limit:.3g} (--tolerance)"
        if problem is None:
            parity[key] = err
            continue
        kept = keep("parity") if keep is not None else None
        where = f" (the ONNX is kept as {kept})" if kept else "; the file was not written"
        if axis is not None:
            value = traced[axis_index(axis, len(traced))]
            raise ConfigError(
                f"the exported graph only runs at the traced {axis} {value}: at input {key} (only the {axis} "
                f"changed from the traced {_key(traced)}) {problem}; torch.export baked {axis} {value} into the "
                f"graph{known_cause(net, axis)}; {_fix_for(axis, dynamic, len(traced))}{where}"
            )
        raise GateFailedError(f"ONNX Runtime differs from PyTorch at input {key}: {problem}{where}")
    return parity
