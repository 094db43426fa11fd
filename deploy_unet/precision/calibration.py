"""Calibration: per-tensor activation ranges from real samples, and the JSON cache that stores them.

Ranges are collected for every float tensor of the (prepared) fp32 graph with ONNX Runtime's
calibrators (``minmax``: observed min/max; ``entropy``: KL-optimal clip; ``percentile``: 99.999th
percentile of |x|), so one calibration serves both int8 placements. The cache records the model's
fingerprint (the graph without its metadata), the method, the source and the sample count; a cache is
reused only when all four match, and refused with one clear line otherwise. Reused ranges go through
the same float32 path as fresh ones, so a cached run writes a byte-identical model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.fileio import write_text_atomic

METHODS = ("minmax", "entropy", "percentile")
MIN_SAMPLES = 8
CACHE_FORMAT = "deploy-unet-calibration/1"


@dataclass
class Calibration:
    method: str
    source: str
    samples: int
    fingerprint: str
    ranges: dict[str, tuple[float, float]]  # tensor name -> (low, high), float32 values

    def absmax(self, name: str) -> float:
        low, high = self.ranges[name]
        return float(max(abs(low), abs(high)))


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the graph and opsets, ignoring metadata (so re-tagging a file keeps its cache valid)."""
    digest = hashlib.sha256()
    digest.update(model.graph.SerializeToString(deterministic=True))
    for opset in sorted((o.domain, o.version) for o in model.opset_import):
        digest.update(repr(opset).encode())
    return digest.hexdigest()


def check_sample_count(n: int, available: int | None = None, source: str = "") -> None:
    if n < MIN_SAMPLES:
        raise ConfigError(
            f"--calib-samples {n} is too few: calibration needs at least {MIN_SAMPLES} samples "
            "(64 or more recommended) for stable activation ranges"
        )
    if available is not None and available < n:
        raise ConfigError(
            f"calibration source {source} has only {available} samples but {n} were asked for; "
            f"pass --calib-samples {max(available, MIN_SAMPLES)} or add data (at least {MIN_SAMPLES})"
        )


class _Reader:
    """ORT CalibrationDataReader over an NCHW array, one sample per step, advancing a progress bar."""

    def __init__(self, input_name: str, images: np.ndarray, on_step=None):
        self.input_name, self.images, self.on_step, self.index = input_name, images, on_step, 0

    def get_next(self):
        if self.index >= len(self.images):
            return None
        sample = self.images[self.index : self.index + 1]
        self.index += 1
        if self.on_step:
            self.on_step()
        return {self.input_name: sample}

    def __len__(self) -> int:
        return len(self.images)

    def rewind(self) -> None:
        self.index = 0


def collect_ranges(
    model: onnx.ModelProto,
    images: np.ndarray,
    method: str = "minmax",
    source: str = "",
    progress: bool = True,
) -> Calibration:
    """Run the fp32 model over ``images`` and return ranges for every float tensor."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is not valid; choose one of: {', '.join(METHODS)}")
    check_sample_count(len(images))
    ort_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="deploy-unet-calib-") as tmp:
        model_path = os.path.join(tmp, "model.onnx")
        onnx.save(model, model_path)
        calibrator = create_calibrator(
            Path(model_path),
            [],  # every float tensor
            augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=ort_method,
            # MinMax keeps the true (min, max): the onnxruntime target needs it for its uint8 activations,
            # the symmetric targets take max(|min|, |max|). The histogram methods stay symmetric.
            extra_options={"symmetric": method != "minmax"},
        )
        with _progress(progress, f"calibrating ({method})", len(images)) as step:
            calibrator.collect_data(_Reader(input_name, images.astype(np.float32), step))
        data = calibrator.compute_data()
        del calibrator
    ranges = {}
    for name in data:
        low, high = data[name].range_value
        ranges[name] = (float(np.float32(np.asarray(low).min())), float(np.float32(np.asarray(high).max())))
    return Calibration(method, source, len(images), model_fingerprint(model), ranges)


class _progress:
    """A rich progress bar (or nothing), used as ``with _progress(...) as step: step()``."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total, self.bar = enabled, label, total, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            transient=False,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def save_cache(path: str | os.PathLike, calib: Calibration) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "model_fingerprint": calib.fingerprint,
        "method": calib.method,
        "source": calib.source,
        "samples": calib.samples,
        "ranges": {k: [v[0], v[1]] for k, v in sorted(calib.ranges.items())},
    }
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def load_cache(
    path: str | os.PathLike, model: onnx.ModelProto, method: str, source: str, samples: int
) -> Calibration:
    """Read a cache and check it was made for this model, method, source and sample count."""
    try:
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != CACHE_FORMAT:
            raise ValueError("format")
        ranges = {k: (float(np.float32(v[0])), float(np.float32(v[1]))) for k, v in payload["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise ArtifactError(
            f"calibration cache {path} is not a deploy-unet calibration cache ({CACHE_FORMAT}); "
            "delete it or pass another --calib-cache path to calibrate afresh"
        ) from None
    fingerprint = model_fingerprint(model)
    mismatches = []
    if payload.get("model_fingerprint") != fingerprint:
        mismatches.append("it was made for a different model")
    if payload.get("method") != method:
        mismatches.append(f"method {payload.get('method')} != {method}")
    if payload.get("source") != source:
        mismatches.append(f"source {payload.get('source')} != {source}")
    if payload.get("samples") != samples:
        mismatches.append(f"samples {payload.get('samples')} != {samples}")
    if mismatches:
        raise ArtifactError(
            f"calibration cache {path} does not match this run ({'; '.join(mismatches)}); "
            "delete it, pass another --calib-cache path, or repeat the original --calib/--calib-samples/--method"
        )
    return Calibration(method, source, samples, fingerprint, ranges)


def calibrate(
    model: onnx.ModelProto,
    info,
    source: str,
    n: int,
    method: str = "minmax",
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Calibration, bool]:
    """Ranges for ``model`` from ``n`` samples of ``source``, via ``cache`` when it exists.

    Returns ``(calibration, from_cache)``; a fresh calibration is written to ``cache`` when given.
    """
    from deploy_unet.data import load_samples

    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is not valid; choose one of: {', '.join(METHODS)}")
    check_sample_count(n)
    if cache is not None and Path(cache).is_file():
        return load_cache(cache, model, method, source, n), True
    samples = load_samples(source, info, n)
    check_sample_count(n, len(samples), source)
    calib = collect_ranges(model, samples.images, method, source, progress)
    if cache is not None:
        save_cache(cache, calib)
    return calib, False
