"""The export stage's choices for nets the reference path cannot take as they are (issue 27 items 1-3).

- **Which output** (``select_output``): a net returning a dict, a dataclass / Hugging Face ``ModelOutput``, a
  tuple or a list (deep supervision, auxiliary heads) is wrapped in ``SelectOutput``, which returns the logits
  chosen by ``--output-key`` / ``--output-index`` (default: the conventional ``logits``, then ``out``; the
  first tensor of a tuple), with one note naming what was chosen.
- **At which resolution**: logits smaller than the input by an integer factor (SegFormer: 1/4) are recorded
  as the output stride; ``--upsample-in-graph`` wraps the net in ``UpsampleLogits`` (bilinear, half-pixel:
  ``align_corners=False``, as ``SegformerImageProcessor.post_process_semantic_segmentation`` does), so the
  graph returns full-size logits.
- **Which exporter** (``export_graph``): ``auto`` runs the torch.export-based exporter and, where it fails for a
  reason the TorchScript exporter handles (data-dependent control flow, a construct torch.export does not
  take, an operator it has no translation for), falls back to ``torch.onnx.export(dynamo=False)`` with
  ``dynamic_axes``, saying why in one line. A data-dependent branch the tracer followed one way
  (``TracerWarning`` at the user's FILE:LINE) is checked on inputs that move the branch (``check_branches``):
  where the other branch gives other logits, the file is refused naming the line.
- **Failures that explain themselves** (``explain``): everything the exporters print (graph dumps, progress,
  warnings) is captured at the file-descriptor level (``captured_output``), kept in ``NAME.export.log`` under
  ``--debug``; the ``error:`` line names the cause class (data-dependent branch at FILE:LINE, unsupported
  operator and its name, shape constraint, unsupported construct) and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import linecache
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from deploy_unet.errors import ConfigError, first_line

EXPORTERS = ("auto", "dynamo", "torchscript")
CONVENTIONAL_KEYS = ("logits", "out")
EXPORTER_NAMES = {"dynamo": "torch.onnx.export(dynamo=True)", "torchscript": "torch.onnx.export(dynamo=False)"}


# --- which output, at which resolution ---------------------------------------------------------------------


def _tensors_of(out) -> list[tuple[str, torch.Tensor]] | None:
    """(key, tensor) pairs of a dict / ModelOutput / dataclass (None for anything else)."""
    if isinstance(out, Mapping):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        values = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
        return [(k, v) for k, v in values if isinstance(v, torch.Tensor)]
    return None


def _pick(out, key: str | None, index: int | None):
    named = _tensors_of(out)
    if named is not None:
        if key is not None:
            return out[key] if isinstance(out, Mapping) else getattr(out, key)
        return named[index][1]
    return out[index]


class SelectOutput(nn.Module):
    """``net(x)[key]`` / ``net(x).key`` / ``net(x)[index]``: the logits of a structured output, as one tensor."""

    def __init__(self, net: nn.Module, key: str | None = None, index: int | None = None):
        super().__init__()
        self.net, self.key, self.index = net, key, index
        for attr in ("divisor", "in_channels", "arch", "contract_reason", "shape_contract", "config", "padding"):
            if hasattr(net, attr):
                setattr(self, attr, getattr(net, attr))

    def forward(self, x):
        return _pick(self.net(x), self.key, self.index)


class UpsampleLogits(nn.Module):
    """The logits brought to the input's H, W inside the graph (bilinear, half-pixel: align_corners=False)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return F.interpolate(self.net(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@dataclass
class Selection:
    net: nn.Module
    output_stride: int = 1
    chosen: str = ""  # "logits" (key), "[0]" (index), "" (one tensor)
    note: str = ""
    upsampled_from: int = 0  # --upsample-in-graph: the stride the graph upsamples from (0: none)


def select_output(net: nn.Module, sample: torch.Tensor, key: str | None = None, index: int | None = None,
                  upsample_in_graph: bool = False, sizes_free: bool = False) -> Selection:
    """Run ``net`` once at ``sample`` and wrap it so it returns the logits tensor, full size if asked.

    ``sizes_free``: a valid-convolution net (output smaller by a border, shapes.ShapeContract): no stride."""
    with torch.no_grad():
        try:
            out = net(sample)
        except Exception as exc:
            raise ConfigError(f"the net fails on a {'x'.join(map(str, sample.shape))} sample ({first_line(exc)}); check --in-channels "
                              "and the size") from exc
    kind = type(out).__name__
    chosen, note = "", ""
    if isinstance(out, torch.Tensor):
        if key is not None or index is not None:
            raise ConfigError("the net returns one tensor; drop --output-key/--output-index")
        tensor = out
    else:
        named = _tensors_of(out)
        if named is not None:
            keys = [k for k, _ in named]
            if key is not None and index is not None:
                raise ConfigError("pass --output-key or --output-index, not both")
            if key is not None and key not in keys:
                raise ConfigError(f"the net returned {kind} without a tensor {key!r}; its tensors: {', '.join(keys)}")
            if index is not None and not -len(keys) <= index < len(keys):
                raise ConfigError(f"--output-index {index}: the net returned {kind} with {len(keys)} tensors "
                                  f"({', '.join(keys)})")
            if key is None and index is None:
                key = next((k for k in CONVENTIONAL_KEYS if k in keys), None)
                if key is None:
                    raise ConfigError(f"the net returned {kind} with tensors {', '.join(keys) or 'none'} and none is "
                                      f"named {' or '.join(CONVENTIONAL_KEYS)}; choose the logits with --output-key NAME")
                note = f"the net returns {kind} ({', '.join(keys)}): exporting {key!r} (--output-key to choose another)"
            if key is None:
                key = keys[index]
                index = None
            chosen = key
        elif isinstance(out, (tuple, list)):
            if key is not None:
                raise ConfigError(f"the net returned a {kind} of {len(out)}; choose with --output-index, not --output-key")
            if not out:
                raise ConfigError(f"the net returned an empty {kind}")
            given = index is not None
            index = 0 if index is None else index
            if not -len(out) <= index < len(out):
                raise ConfigError(f"--output-index {index}: the net returned a {kind} of {len(out)}")
            if not isinstance(out[index], torch.Tensor):
                raise ConfigError(f"the net's {kind}[{index}] is a {type(out[index]).__name__}, not a tensor; "
                                  "choose the logits with --output-index")
            chosen = f"[{index}]"
            if not given:
                shapes = ", ".join("x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                                   for t in out)
                note = (f"the net returns a {kind} of {len(out)} ({shapes}): exporting [0], the first "
                        "(--output-index to choose another head)")
            key = None
        else:
            raise ConfigError(f"the net returned {kind}; it must return NCHW logits, or a dict, dataclass, tuple or "
                              "list holding them")
        tensor = _pick(out, key, index)
        net = SelectOutput(net, key, index).eval()
    layout = "N x C x D x H x W" if sample.ndim == 5 else "N x C x H x W"
    if tensor.ndim != sample.ndim:
        raise ConfigError(f"the net's output{' ' + chosen if chosen else ''} has shape "
                          f"{'x'.join(map(str, tensor.shape))}; it must be {layout} logits")
    if sample.ndim == 5 and tuple(tensor.shape[2:]) != tuple(sample.shape[2:]) and not sizes_free:
        raise ConfigError(f"the net gives {'x'.join(map(str, tensor.shape[2:]))} logits for a "
                          f"{'x'.join(map(str, sample.shape[2:]))} volume; volume nets must give logits at the "
                          "input's size")
    h, w = sample.shape[-2:]
    oh, ow = tensor.shape[-2:]
    stride = 1
    if (oh, ow) != (h, w) and not sizes_free:
        if oh and h % oh == 0 and h // oh == w // ow and ow * (h // oh) == w:
            stride = h // oh
        else:
            raise ConfigError(f"the net gives {oh}x{ow} logits for a {h}x{w} input, neither its size nor an "
                              "integer fraction of it; deploy-unet cannot map them to pixels")
    if stride > 1 and upsample_in_graph:
        net = UpsampleLogits(net).eval()
        for attr in ("divisor", "in_channels", "arch", "contract_reason", "config"):
            if hasattr(net.net, attr):
                setattr(net, attr, getattr(net.net, attr))
        note = "; ".join(filter(None, [note, f"logits at 1/{stride}: upsampled in the graph (bilinear, "
                                                   "align_corners=False)"]))
        return Selection(net, 1, chosen, note, upsampled_from=stride)
    if stride > 1:
        note = "; ".join(filter(None, [note, f"logits at 1/{stride} of the input: recorded (output_stride "
                                             f"{stride}); masks are upsampled bilinearly where they are made "
                                             "(--upsample-in-graph: in the graph)"]))
    return Selection(net, stride, chosen, note)


# --- captured output ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_output(sink: list[str]):
    """Everything written to fd 1 and 2 (Python, torch's logging handlers, C++) goes to ``sink`` instead."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no real fds (an embedding host): the Python-level redirect still helps
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            saved = []
        try:
            with contextlib.redirect_stdout(_Text(tmp)), contextlib.redirect_stderr(_Text(tmp)):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


class _Text:
    def __init__(self, binary):
        self.binary = binary

    def write(self, text: str) -> int:
        self.binary.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        self.binary.flush()

    def isatty(self) -> bool:
        return False


# --- why an exporter failed -----------------------------------------------------------------------------------


@dataclass
class Cause:
    kind: str  # data-dependent branch | unsupported operator | shape constraint | unsupported construct | other
    what: str  # one clause
    fix: str
    fallback: bool  # the TorchScript exporter may take it

    def line(self, exporter: str, then: Cause | None = None) -> str:
        """One line: who failed, the cause class, what, the fix (and what auto would do, after --exporter dynamo)."""
        if then is None:
            hint = "; --exporter auto falls back to the TorchScript exporter" if exporter == "torch.export" and \
                self.fallback else ""
            return f"{exporter} cannot export the net: {self.kind}: {self.what}; {self.fix}{hint}"
        if then.kind == self.kind:
            return (f"neither torch.export nor the TorchScript exporter can export the net: {self.kind}: {self.what} "
                    f"(TorchScript: {then.what}); {self.fix}")
        return (f"torch.export cannot export the net ({self.kind}: {self.what}), nor can the TorchScript exporter: "
                f"{then.kind}: {then.what}; {then.fix}")


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [\w<>]+\n\s*(.+)')
_OP = re.compile(r"(aten(?:::|\.)[A-Za-z_][\w]*(?:\.[\w]+)?|torchvision(?:::|\.)\w+|[\w]+::[\w]+)")


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _user_frame(text: str, excs: list[BaseException]) -> str:
    """FILE:LINE (code) of the first frame outside torch, from the message or the tracebacks."""
    for path, line, code in _FRAME.findall(text):
        if not _is_library(path):
            return f"{path}:{line} ({code.strip()})"
    for exc in reversed(excs):
        tb, last = exc.__traceback__, None
        while tb is not None:
            if not _is_library(tb.tb_frame.f_code.co_filename):
                last = tb
            tb = tb.tb_next
        if last is not None:
            path, line = last.tb_frame.f_code.co_filename, last.tb_lineno
            return f"{path}:{line} ({linecache.getline(path, line).strip()})"
    return "an unknown line"


def _is_library(path: str) -> bool:
    norm = path.replace("\\", "/")
    return any(part in norm for part in ("/torch/", "/onnxscript/", "/onnx_ir/", "/deploy_unet/", "<frozen",
                                         "/contextlib.py", "/functools.py"))


def explain(exc: BaseException) -> Cause:
    """The cause class of an exporter failure, from the exception chain's types and messages."""
    excs = _chain(exc)
    text = "\n".join(f"{type(e).__module__}.{type(e).__name__}: {e}" for e in excs)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    names = " ".join(type(e).__name__ for e in excs)
    if ("GuardOnDataDependent" in names or "data-dependent" in text or "DataDependent" in names):
        where = _user_frame(text, excs)
        return Cause("data-dependent branch", f"a condition on tensor values at {where}",
                     "make it a tensor op (torch.where(cond, a, b)) or move it out of forward()", True)
    if re.search(r"Unsupported(OperatorError| FX nodes)|No decompositions? registered|not supported|"
                 r"DispatchError|Unsupported operator", text):
        ops = [op for op in _OP.findall(text) if not op.startswith(("torch::", "c10::", "std::"))]
        op = ops[0] if ops else "an operator"
        return Cause("unsupported operator", f"{op} has no ONNX translation in this exporter",
                     "replace it in the net, or give the exporter a translation (torch.onnx.export "
                     "custom_translation_table)", True)
    if re.search(r"Constraints? violated|ConstraintViolation|Not all values of|specialized|guard", text):
        clause = next((ln.strip() for ln in text.splitlines()
                       if re.search(r"Not all values|specialized|must be|satisfy", ln)), first_line(exc))
        return Cause("shape constraint", clause[:300],
                     "the net fixes or constrains a size: export with --dynamic none (or hw/batch) at the size you "
                     "run, or change the code that reads the size", False)
    if re.search(r"Unsupported|UserError|torch\._dynamo\.exc", text + names):
        where = _user_frame(text, excs)
        return Cause("unsupported construct", f"{first_line(excs[-1])[:200]} at {where}",
                     "rewrite it (https://pytorch.org/docs/stable/generated/exportdb/index.html)", True)
    return Cause("other", first_line(excs[-1]), "re-run with --debug for the exporter's log", True)


# --- the exporters ------------------------------------------------------------------------------------------


@dataclass
class Exported:
    model: onnx.ModelProto
    exporter: str  # dynamo | torchscript
    notes: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)  # FILE:LINE (code) of data-dependent conditions traced
    log: str = ""  # what the exporters printed (captured)


def torchscript_export(net: nn.Module, sample: torch.Tensor, dynamic_axes: dict[int, str], opset: int,
                       input_name: str, output_name: str, output_dims: dict[int, str]) -> tuple[onnx.ModelProto, list[str]]:
    """``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``; returns the model and the FILE:LINE of each
    data-dependent condition the tracer warned about (it followed one branch there)."""
    with tempfile.TemporaryDirectory(prefix="deploy-unet-ts-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                net, (sample,), os.fspath(path), input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: dynamic_axes, output_name: output_dims} if dynamic_axes else None,
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        branches = []
        for w in caught:
            if w.category.__name__ == "TracerWarning" and "boolean" in str(w.message) and not _is_library(w.filename):
                where = f"{w.filename}:{w.lineno} ({linecache.getline(w.filename, w.lineno).strip()})"
                if where not in branches:
                    branches.append(where)
        return onnx.load(os.fspath(path)), branches


def export_graph(net: nn.Module, sample: torch.Tensor, exporter: str, dynamo: Callable[[], onnx.ModelProto],
                 torchscript: Callable[[], tuple[onnx.ModelProto, list[str]]]) -> Exported:
    """Run the chosen exporter(s) with their output captured; one ConfigError line naming the cause on failure."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r} is not valid; choose one of: {', '.join(EXPORTERS)}")
    log: list[str] = []
    notes: list[str] = []
    if exporter in ("auto", "dynamo"):
        try:
            with captured_output(log):
                model = dynamo()
            return Exported(model, "dynamo", notes, [], "".join(log))
        except ConfigError:
            raise
        except Exception as exc:
            cause = explain(exc)
            if exporter == "dynamo" or not cause.fallback:
                raise ExportFailed(cause.line("torch.export"), "".join(log)) from exc
            notes.append(f"torch.export cannot take it ({cause.kind}: {cause.what}): falling back to the "
                         "TorchScript exporter (torch.onnx.export(dynamo=False))")
            first = cause
    else:
        first = None
    try:
        with captured_output(log):
            model, branches = torchscript()
    except Exception as exc:
        cause = explain(exc)
        text = first.line("torch.export", then=cause) if first is not None else cause.line("the TorchScript exporter")
        raise ExportFailed(text, "".join(log)) from exc
    return Exported(model, "torchscript", notes, branches, "".join(log))


class ExportFailed(ConfigError):
    """An exporter refused the net; ``log`` is what it printed (kept in NAME.export.log under --debug)."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def check_branches(net: nn.Module, path: str | os.PathLike, branches: list[str], shape: tuple[int, ...],
                   input_name: str, tolerance: float, sample: Callable[..., np.ndarray]) -> int:
    """The traced graph against PyTorch on inputs that move a data-dependent condition (the sample negated,
    scaled up and down, shifted): the number compared; a ConfigError naming the branch where one differs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    base = sample(*shape, seed=11)
    variants = {"negated": -base, "x10": base * 10, "x0.1": base * 0.1, "+3": base + 3, "-3": base - 3,
                "zeros": np.zeros_like(base)}
    for name, x in variants.items():
        x = np.ascontiguousarray(x, dtype=np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {input_name: x})[0]
        err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not err <= tolerance * max(1.0, float(np.abs(ref).max())):
            raise ConfigError(
                f"the TorchScript exporter traced one branch of the data-dependent condition at {branches[0]}: "
                f"an input that takes the other ({name} sample) gives other logits (max abs error {err:.3g}); make "
                "the condition a tensor op (torch.where(cond, a, b)) or remove it from forward(); no file was written")
    return len(variants)
