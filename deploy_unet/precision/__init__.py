"""Precision in ONNX: fp16 (cast graph, IO fp32) and int8 (explicit Q/DQ) from real calibration data.

``quantize(...)`` is the one entry the CLI calls: calibrate (or reuse the cache), convert, write the
file atomically with its metadata, then run the accuracy gate against the fp32 model on held-out data.
A tool failing inside a stage (ONNX Runtime's calibrator, the fp16 converter, the Q/DQ inserter,
``quantize_static``, the gate's ONNX Runtime session) is one ``StageError`` line naming the stage and
the model; with ``keep_failed`` a converted model that then fails is kept as ``NAME.failed-<stage>.onnx``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from deploy_unet.describe import read_model_info
from deploy_unet.errors import ArtifactError, ConfigError, GateFailedError, stage_errors
from deploy_unet.fileio import atomic_path, onnx_keeper
from deploy_unet.metadata import load_onnx, read_props, write_props
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
    # Layers kept in higher precision (--exclude, auto-fallback): node -> why; and the search, if it ran.
    kept_higher: dict[str, str] = field(default_factory=dict)
    fallback: object | None = None  # fallback.FallbackResult


def default_output(model_path: str | os.PathLike, precision: str, target: str) -> Path:
    path = Path(model_path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.stem
    stem = stem[: -len(".fp32")] if stem.endswith(".fp32") else stem
    suffix = precision if precision == "fp16" or target == "tensorrt" else f"{precision}.ort"
    if precision == "int8" and target == "openvino":
        suffix = "int8.ov"
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
    min_mask_agreement: float | None = None,
    max_rel_l2: float | None = None,
    auto_fallback: bool = False,
    fallback_precision: str | None = None,
    exclude: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    rank: str = "revert",
    log: Callable[[str], None] | None = None,
    gate_backend: str = "onnxruntime",
) -> QuantizeResult:
    """An fp16 or int8 ONNX from the fp32 export at ``model_path``: one calibration pass over ``calib``
    (``calib_samples`` samples, ranges by ``method``, cached in ``calib_cache``), then fp16 casts (IO kept
    fp32, overflowing nodes kept fp32) or int8 Q/DQ placed for ``target`` (``tensorrt``, ``onnxruntime`` or
    ``openvino``), written atomically to ``output`` (default ``MODEL.fp16.onnx``, ``MODEL.int8.onnx``,
    ``MODEL.int8.ort.onnx``, ``MODEL.int8.ov.onnx``).
    With ``eval_source`` (None: skip) the accuracy gate compares it with fp32 on held-out data (Dice drop, and
    ``min_mask_agreement``/``max_rel_l2`` when given); it does not raise on a failed gate: call
    ``check_gate(result)``. ``exclude``/``exclude_op_types`` keep the matching groups in ``fallback_precision``
    (fp16 for the tensorrt placement, fp32 for onnxruntime and for fp16 itself); ``auto_fallback`` searches
    the fewest groups to keep there until the gate holds (``fallback.py``). ``gate_backend="openvino"`` runs the
    candidates of the gate (and of the search) on OpenVINO's CPU device, as they will deploy there."""
    from deploy_unet.data import check_distinct_sources, load_samples
    from deploy_unet.precision import calibration, gate, mixed
    from deploy_unet.precision.int8 import TARGETS, check_opset

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise ConfigError(f"--target {target!r} is not valid; choose one of: {', '.join(TARGETS)}")
    if precision == "fp16" and method != "minmax":
        raise ConfigError(
            f"--method {method} applies to int8 only; fp16 keeps nodes fp32 by their observed max |x| (minmax)"
        )
    spec = gate.GateSpec(max_dice_drop, min_mask_agreement, max_rel_l2)
    fallback_precision = _fallback_precision(precision, target, fallback_precision)
    if auto_fallback and eval_source is None:
        raise ConfigError("--auto-fallback measures the gate on held-out data; drop --no-eval (or pass --eval SRC)")
    model = load_onnx(model_path)
    props = read_props(model)
    info = read_model_info(model, source=os.fspath(model_path))  # a foreign file: described (describe.py)
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
    excluded: dict[str, str] = {}
    if exclude or exclude_op_types or auto_fallback:
        model = mixed.name_nodes(model)  # exclusions go by node name (exports name every node already)
        excluded = mixed.resolve_exclusions(mixed.groups_for(model, precision, target), exclude, exclude_op_types)
    conversion = {"fp16": "fp16 conversion (onnxconverter-common)", "tensorrt": "Q/DQ insertion (tensorrt placement)",
                  "openvino": "Q/DQ insertion (openvino placement)",
                  "onnxruntime": "ORT quantize_static"}[precision if precision == "fp16" else target]
    with times.stage(f"convert to {precision}" + (f" ({target} Q/DQ)" if precision == "int8" else "")), \
            stage_errors(conversion, name):
        new_model, kept = mixed.build(model, calib_result, precision, target, excluded, fallback_precision)
    searched = None
    if auto_fallback:
        with times.stage("auto-fallback search"), stage_errors("auto-fallback search", name):
            from deploy_unet.precision.fallback import search

            samples = load_samples(eval_source, info, eval_samples)
            with tempfile.TemporaryDirectory(prefix="deploy-unet-ref-") as tmp:
                fp32_path = Path(tmp) / "fp32.onnx"
                onnx.save(model, fp32_path)
                evaluator = gate.GateEvaluator(fp32_path, samples, info.num_classes, spec, threads,
                                               backend=gate_backend)
            searched = search(model, calib_result, precision, target, evaluator, fallback=fallback_precision,
                              exclude=excluded, rank=rank, progress=progress, log=log, threads=threads)
            new_model, excluded = searched.model, {k: v for k, v in searched.kept.items() if k not in kept}

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
    if excluded:
        higher = "fp32" if precision == "fp16" else fallback_precision
        meta["kept_higher_precision"] = json.dumps(
            {"precision": higher, "layers": [{"node": n, "why": why} for n, why in excluded.items()]})
    if searched is not None:
        meta["auto_fallback"] = json.dumps(searched.metadata())
    del new_model.metadata_props[:]
    write_props(new_model, {**props, **info.to_props(), **meta})

    # Gate before the rename: a failing file is still written (the user may want to inspect it), but
    # only after evaluation succeeds technically; the exit code tells the verdict.
    with tempfile.TemporaryDirectory(prefix="deploy-unet-q-") as tmp:
        candidate = Path(tmp) / "candidate.onnx"
        onnx.save(new_model, candidate)
        report = None
        if searched is not None:
            report = searched.final  # measured by the search on this very graph (metadata aside)
        elif eval_source is not None:
            keep = onnx_keeper(candidate, out) if keep_failed else None
            with times.stage("accuracy gate"), stage_errors("accuracy gate", name, keep):
                samples = load_samples(eval_source, info, eval_samples)
                report = gate.evaluate(model_path, candidate, samples, info.num_classes, threads=threads, spec=spec,
                                       backend=gate_backend)
        with atomic_path(out) as dst:
            dst.write_bytes(candidate.read_bytes())
    result = QuantizeResult(
        path=out, precision=precision, target=target, method=method, calib_source=calib_result.source,
        calib_samples=calib_result.samples, from_cache=from_cache, gate=report, kept_fp32=kept,
        size_bytes=out.stat().st_size, stages=times, kept_higher=excluded, fallback=searched,
    )
    return result


def _fallback_precision(precision: str, target: str, fallback: str | None) -> str:
    """The precision excluded layers run in: fp16 for TensorRT int8 (default), else fp32."""
    from deploy_unet.precision.mixed import FALLBACKS

    if fallback is not None and fallback not in FALLBACKS:
        raise ConfigError(f"--fallback-precision {fallback!r} is not valid; choose one of: {', '.join(FALLBACKS)}")
    if precision == "fp16":
        if fallback == "fp16":
            raise ConfigError("--fallback-precision fp16 with --precision fp16 keeps nothing higher; "
                              "fp16 falls back to fp32 (drop the option)")
        return "fp32"
    if target == "openvino":
        if fallback == "fp16":
            raise ConfigError("--fallback-precision fp16 is for the tensorrt placement; --target openvino keeps "
                              "layers in fp32 (OpenVINO's CPU plugin then runs them in its own inference precision)")
        return "fp32"
    if target == "onnxruntime":
        if fallback == "fp16":
            raise ConfigError("--fallback-precision fp16 is for the tensorrt placement; ONNX Runtime's CPU "
                              "provider has no fast fp16 convolutions, so --target onnxruntime keeps layers in fp32")
        return "fp32"
    return fallback or "fp16"


def check_gate(result: QuantizeResult) -> None:
    """Raise GateFailedError (exit 1) when the gate (Dice drop, and any other metric asked for) fails."""
    report = result.gate
    if report is not None and not report.passed and result.fallback is not None:
        searched = result.fallback
        raise GateFailedError(
            f"accuracy gate failed even with auto-fallback: {', '.join(c.describe() for c in report.checks)} "
            f"with {len(searched.kept)} of {len(searched.groups) + len(searched.range_kept)} groups in "
            f"{searched.fallback}; written to {result.path} for inspection; "
            + ("try --fallback-precision fp32, " if searched.fallback == "fp16" else "")
            + "--method entropy/percentile, or more --calib-samples; `deploy-unet validate FILE --reference "
            "FP32.onnx --per-layer` shows where the error comes from"
        )
    if report is not None and not report.passed and report.dice_drop <= report.max_dice_drop:
        raise GateFailedError(
            f"accuracy gate failed: {', '.join(c.describe() for c in report.checks if not c.passed)}; "
            f"written to {result.path} for inspection; try --auto-fallback to keep the layers that cost it in "
            "higher precision, or --method entropy/percentile"
        )
    if report is not None and not report.passed:
        raise GateFailedError(
            f"accuracy gate failed: {result.precision} Dice {report.candidate['mean_dice']:.4f} vs fp32 "
            f"{report.fp32['mean_dice']:.4f} (drop {report.dice_drop:.4f} > --max-dice-drop "
            f"{report.max_dice_drop}); written to {result.path} for inspection; try --method entropy/percentile, "
            "more --calib-samples, or fp16"
        )
