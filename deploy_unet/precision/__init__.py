"""Precision in ONNX: fp16 (cast graph, IO fp32) and int8 (explicit Q/DQ) from real calibration data.

``quantize(...)`` is the one entry the CLI calls: calibrate (or reuse the cache), convert, write the
file atomically with its metadata, then run the accuracy gate against the fp32 model on held-out data.
A tool failing inside a stage (ONNX Runtime's calibrator, the fp16 converter, the Q/DQ inserter,
``quantize_static``, the gate's ONNX Runtime session) is one ``StageError`` line naming the stage and
the model; with ``keep_failed`` a converted model that then fails is kept as ``NAME.failed-<stage>.onnx``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from deploy_unet.errors import ArtifactError, ConfigError, GateFailedError, stage_errors
from deploy_unet.fileio import atomic_path, onnx_keeper
from deploy_unet.metadata import ModelInfo, load_onnx, read_props, write_props
from deploy_unet.timing import StageTimes

PRECISIONS = ("fp16", "int8")
DEFAULT_CALIB = "synthetic:seed=1"
DEFAULT_EVAL = "synthetic:seed=2"


@dataclass
class QuantizeResult:
    path: Path
    precision: str
    target: str
    method: str
    calib_source: str
    calib_samples: int
    from_cache: bool
    gate: object | None  # gate.GateReport
    kept_fp32: list[str] = field(default_factory=list)
    size_bytes: int = 0
    stages: StageTimes = field(default_factory=StageTimes)  # calibration, conversion, gate


def default_output(model_path: str | os.PathLike, precision: str, target: str) -> Path:
    path = Path(model_path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.stem
    stem = stem[: -len(".fp32")] if stem.endswith(".fp32") else stem
    suffix = precision if precision == "fp16" or target == "tensorrt" else f"{precision}.ort"
    return path.with_name(f"{stem}.{suffix}.onnx")


def quantize(
    model_path: str | os.PathLike,
    precision: str,
    *,
    target: str = "tensorrt",
    calib: str = DEFAULT_CALIB,
    calib_samples: int = 64,
    method: str = "minmax",
    calib_cache: str | os.PathLike | None = None,
    eval_source: str | None = DEFAULT_EVAL,
    eval_samples: int = 32,
    max_dice_drop: float = 0.01,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = None,
    keep_failed: bool = False,
) -> QuantizeResult:
    """An fp16 or int8 ONNX from the fp32 export at ``model_path``: one calibration pass over ``calib``
    (``calib_samples`` samples, ranges by ``method``, cached in ``calib_cache``), then fp16 casts (IO kept
    fp32, overflowing nodes kept fp32) or int8 Q/DQ placed for ``target`` (``tensorrt`` or ``onnxruntime``),
    written atomically to ``output`` (default ``MODEL.fp16.onnx``, ``MODEL.int8.onnx``, ``MODEL.int8.ort.onnx``).
    With ``eval_source`` (None: skip) the accuracy gate compares it with fp32 on held-out data; it does not
    raise on a failed gate: call ``check_gate(result)``."""
    from deploy_unet.data import check_distinct_sources, load_samples
    from deploy_unet.precision import calibration, gate
    from deploy_unet.precision.int8 import TARGETS, check_opset, quantize_int8

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise ConfigError(f"--target {target!r} is not valid; choose one of: {', '.join(TARGETS)}")
    if precision == "fp16" and method != "minmax":
        raise ConfigError(
            f"--method {method} applies to int8 only; fp16 keeps nodes fp32 by their observed max |x| (minmax)"
        )
    if max_dice_drop < 0:
        raise ConfigError(f"--max-dice-drop {max_dice_drop} must be >= 0")
    model = load_onnx(model_path)
    props = read_props(model)
    info = ModelInfo.from_props(props, source=os.fspath(model_path))
    if info.precision != "fp32":
        raise ArtifactError(
            f"{model_path} is already {info.precision}; quantize the fp32 export (precision fp32 in its metadata)"
        )
    if precision == "int8":
        check_opset(model)
    if eval_source is not None:
        check_distinct_sources(calib, eval_source)
    out = Path(output) if output else default_output(model_path, precision, target)
    if out.resolve() == Path(model_path).resolve():
        raise ConfigError(f"output {out} would overwrite the input model; pass another -o")

    times = StageTimes()
    name = os.fspath(model_path)
    with times.stage("calibration"), stage_errors("calibration (ONNX Runtime)", name):
        calib_result, from_cache = calibration.calibrate(
            model, info, calib, calib_samples, method, calib_cache, progress=progress
        )
    if from_cache:
        times.stages[-1].name = "calibration (from cache)"
    kept: list[str] = []
    conversion = {"fp16": "fp16 conversion (onnxconverter-common)", "tensorrt": "Q/DQ insertion (tensorrt placement)",
                  "onnxruntime": "ORT quantize_static"}[precision if precision == "fp16" else target]
    with times.stage(f"convert to {precision}" + (f" ({target} Q/DQ)" if precision == "int8" else "")), \
            stage_errors(conversion, name):
        if precision == "fp16":
            from deploy_unet.precision.fp16 import convert_fp16

            new_model, kept = convert_fp16(model, calib_result)
        else:
            new_model = quantize_int8(model, calib_result, target)

    meta = {
        "precision": precision,
        "quant_target": target if precision == "int8" else "any",
        "quant_method": method,
        "calib_source": calib_result.source,
        "calib_samples": str(calib_result.samples),
        "calib_fingerprint": calib_result.fingerprint,
        "source_precision_file": Path(model_path).name,
    }
    if precision == "int8":
        meta["quant_scheme"] = "int8 symmetric; weights per-channel (Conv axis 0, ConvTranspose axis 1); activations per-tensor"
    if kept:
        meta["fp16_kept_fp32"] = ",".join(kept)
    del new_model.metadata_props[:]
    write_props(new_model, {**props, **meta})

    # Gate before the rename: a failing file is still written (the user may want to inspect it), but
    # only after evaluation succeeds technically; the exit code tells the verdict.
    with tempfile.TemporaryDirectory(prefix="deploy-unet-q-") as tmp:
        candidate = Path(tmp) / "candidate.onnx"
        onnx.save(new_model, candidate)
        report = None
        if eval_source is not None:
            keep = onnx_keeper(candidate, out) if keep_failed else None
            with times.stage("accuracy gate"), stage_errors("accuracy gate", name, keep):
                samples = load_samples(eval_source, info, eval_samples)
                report = gate.evaluate(model_path, candidate, samples, info.num_classes, max_dice_drop, threads)
        with atomic_path(out) as dst:
            dst.write_bytes(candidate.read_bytes())
    result = QuantizeResult(
        path=out, precision=precision, target=target, method=method, calib_source=calib_result.source,
        calib_samples=calib_result.samples, from_cache=from_cache, gate=report, kept_fp32=kept,
        size_bytes=out.stat().st_size, stages=times,
    )
    return result


def check_gate(result: QuantizeResult) -> None:
    """Raise GateFailedError (exit 1) when the Dice drop is over the limit."""
    report = result.gate
    if report is not None and not report.passed:
        raise GateFailedError(
            f"accuracy gate failed: {result.precision} Dice {report.candidate['mean_dice']:.4f} vs fp32 "
            f"{report.fp32['mean_dice']:.4f} (drop {report.dice_drop:.4f} > --max-dice-drop "
            f"{report.max_dice_drop}); written to {result.path} for inspection; try --method entropy/percentile, "
            "more --calib-samples, or fp16"
        )
