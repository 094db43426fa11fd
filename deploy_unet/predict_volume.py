"""``predict`` on volumes: scans in (NIfTI, NRRD, MHA/MHD, a DICOM series folder, ``.npy``), masks out in the
input's own format with its geometry, by sliding-window inference through any runner.

Per volume NAME (``scan`` for ``scan.nii.gz``, the folder's name for a DICOM series):

- ``NAME.mask.<input's suffix>`` (``scan.mask.nii.gz``; a DICOM series gives ``NAME.mask.nii.gz``): class ids,
  uint8 (uint16 above 256 classes), the input's shape, affine / spacing, origin and direction (``deploy_unet.io``);
- ``NAME.slices.png`` (``overlays``): three orthogonal slices through the largest structure, the mask blended in;
- ``NAME.probs.npy`` with ``save_probs``: (K, i, j, k) float16 class probabilities;

and ``predictions.json`` as for images, with the sliding-window settings and per-stage times (read, preprocess,
model, windows + blend, postprocess, write).

Steps: read (``io.read``) -> channels first -> intensity as the metadata says (``volume_processing``) ->
optional resampling to the net's spacing -> ``runtime.windows``: MONAI's grid and Gaussian (or constant)
blending, ``sw_batch`` windows per runner call, optional mirroring (all 7 flips of the 3 axes batched with the
windows, nnU-Net's TTA) -> argmax -> back to the input's grid (nearest) -> write. Memory: the volume, its float
copy and one float32 accumulator per class plus a weight map (MONAI holds the same), never the window count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, DeployUnetError
from deploy_unet.prediction_report import (
    PredictionReport,
    class_fractions,
    finish_report,
    progress_bar,
    skip_input,
)
from deploy_unet.volume_processing import (
    Intensity,
    logits_to_mask,
    parse_spacing,
    resample_linear,
    resample_nearest,
    resampled_shape,
    to_channels_first,
    volume_settings,
)

VOLUME_STAGES = ("read", "preprocess", "model", "windows + blend", "postprocess", "write")


@dataclass(frozen=True)
class SlidingWindow:
    """Sliding-window settings (MONAI's ``sliding_window_inference`` names): ``window`` a valid size per axis
    (None: the export size in the metadata), ``overlap`` in [0, 1), ``blend`` gaussian | constant, ``sw_batch``
    windows per runner call, ``mirror_axes``: also run each window flipped over every subset of these axes
    (nnU-Net mirrors over all three: ``(0, 1, 2)``, 7 flipped copies)."""

    window: tuple[int, ...] | None = None
    overlap: float = 0.5
    blend: str = "gaussian"
    sw_batch: int = 4
    mirror_axes: tuple[int, ...] = ()
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        if self.blend not in ("gaussian", "constant"):
            raise ConfigError(f"--blend {self.blend!r} does not apply to volumes; use gaussian or constant")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ConfigError(f"--mirror {','.join(map(str, self.mirror_axes))}: a volume has axes 0, 1 and 2")
        if self.sw_batch < 1:
            raise ConfigError(f"--sw-batch {self.sw_batch} must be >= 1")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap {self.overlap} must be in [0, 1)")

    @classmethod
    def from_options(cls, options) -> SlidingWindow:
        """predict's window settings (a ``scale.stream.StreamOptions``, shared with large images; None: defaults)."""
        if options is None:
            return cls()
        window = options.window
        return cls(window=(window,) if isinstance(window, int) else (tuple(window) if window else None),
                   overlap=float(options.overlap), blend=options.blend, sw_batch=int(options.sw_batch),
                   mirror_axes=tuple(options.mirror_axes or ()))


def is_volume_input(item) -> bool | None:
    """True for a path a volume reader takes: a volume suffix (``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``) or a
    folder holding DICOM files (not a folder of images); None for an ``.npy`` (a volume for a 3D net, images for
    a 2D one); False otherwise."""
    if isinstance(item, np.ndarray):
        return False
    from deploy_unet.io.base import full_suffix, readers

    path = Path(item).expanduser()
    if path.suffix.lower() == ".npy":
        return None
    volume_suffixes = [s for r in readers() if r.kind == "volume" for s in r.suffixes]
    if path.is_dir():
        return any(p.suffix.lower() == ".dcm" or (p.is_file() and p.suffix == "" and _is_dicom(p))
                   for p in list(path.iterdir())[:64])
    return full_suffix(path, volume_suffixes) is not None


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def volume_window(sw: SlidingWindow, info, contract) -> tuple[int, ...]:
    """The window: the one asked for, else the export size in the metadata; checked against the contract (one
    line naming the axis and the nearest valid sizes)."""
    window = sw.window
    if window is None:
        shape = list(getattr(info, "export_shape", None) or []) if info is not None else []
        if len(shape) == 5 and all(isinstance(v, int) and v > 0 for v in shape[2:]):
            window = tuple(int(v) for v in shape[2:])
        else:
            raise ConfigError("the net records no 3D export size; give the window, e.g. --window 96x96x96 "
                              "(a size the net takes)")
    window = tuple(int(w) for w in window)
    if len(window) == 1:
        window = window * 3
    if len(window) != 3:
        raise ConfigError(f"window {window} must be one size or three (DxHxW)")
    contract.validate(window, "pick a valid --window")
    return window


def sliding_window_logits(runner, volume: np.ndarray, window: Sequence[int], sw: SlidingWindow,
                          spent: dict[str, float] | None = None) -> tuple[np.ndarray, int]:
    """(C, *spatial) float32 -> ((K, *spatial) blended logits, windows run) through ``runner`` (any backend).

    ``spent`` (if given) gains ``model`` (inside the runner) and ``windows + blend`` (the rest)."""
    from deploy_unet.runtime.windows import array_reader, blend_grid, blend_region

    contract = runner.contract
    out_window = tuple(contract.output_size(int(w)) for w in window) if not contract.is_divisor_only else None
    grid = blend_grid(volume.shape[1:], tuple(window), sw.overlap, sw.blend, sw.sigma_scale, out_window)
    input_name = next(iter(runner.input_spec))
    output_name = runner.output_names[0]
    model = [0.0]

    def run_batch(batch: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = runner.infer({input_name: batch})[output_name]
        model[0] += time.perf_counter() - t
        if out.ndim != batch.ndim:
            raise ConfigError("sliding-window inference blends logits; the runner returned class ids "
                              "(drop --output mask)")
        return out

    started = time.perf_counter()
    zeros = (0,) * (volume.ndim - 1)
    logits = blend_region(run_batch, array_reader(volume), grid, zeros, volume.shape[1:], sw_batch=sw.sw_batch,
                          mirror_axes=sw.mirror_axes)
    total = time.perf_counter() - started
    if spent is not None:
        spent["model"] = spent.get("model", 0.0) + model[0]
        spent["windows + blend"] = spent.get("windows + blend", 0.0) + total - model[0]
    return logits, grid.count


# --- results --------------------------------------------------------------------------------------------


@dataclass
class VolumePrediction:
    name: str
    source: str
    size: list[int]  # the input's (i, j, k)
    spacing: list[float] | None
    class_fractions: dict[str, float]
    inference_ms: float  # sliding window (model + windows + blend)
    windows: int
    resampled_to: list[int] | None = None  # the grid the net saw when resampled
    files: dict[str, str] = field(default_factory=dict)
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("mask")
        return data


@dataclass
class VolumeReport(PredictionReport):
    """``predict``'s report for volumes: the entries are ``VolumePrediction``s, written as ``volumes``."""

    sliding_window: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["sliding_window"] = self.sliding_window
        data["volumes"] = data.pop("images")
        return data


# --- the stage ------------------------------------------------------------------------------------------


def predict_volumes(
    runner,
    info,
    inputs: Sequence[str | os.PathLike | np.ndarray],
    output_dir: str | os.PathLike | None,
    *,
    artifact: str | os.PathLike,
    sw: SlidingWindow,
    times,
    intensity: str | None = None,
    resample: bool = False,
    spacing: str | Sequence[float] | None = None,
    save_probs: bool = False,
    overlays: bool = True,
    keep_masks: bool | None = None,
    threads: int | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    started: float | None = None,
):
    """Predict every volume of ``inputs`` with the active ``runner`` (see the module doc); returns the report
    (a ``VolumeReport``: ``prediction_report.PredictionReport`` with ``volumes`` and ``sliding_window``). Called
    by ``predict.predict`` when the inputs are volumes or the net is 3D."""
    from deploy_unet.io import base as io

    warn = warn or (lambda _m: None)
    if runner.contract.spatial_dims != 3:
        raise ConfigError(f"{artifact} is a 2D net (NCHW); volumes need a 3D net (NCDHW). Export one with "
                          "--spatial-dims 3 / --size DxHxW, or predict on 2D images")
    meta_intensity, meta_spacing = volume_settings(info) if info is not None else (Intensity(), None)
    how = Intensity.parse(intensity) if intensity else meta_intensity
    target = parse_spacing(spacing) if spacing else meta_spacing
    if resample and target is None:
        raise ConfigError("--resample needs the net's voxel spacing: export with --spacing, or pass --spacing")
    window = volume_window(sw, info, runner.contract)
    in_channels = int(info.in_channels) if info is not None else _graph_channels(runner)
    num_classes = int(info.num_classes) if info is not None else 0
    class_names = list(getattr(info, "class_names", None) or []) if info is not None else []
    mean = list(getattr(info, "mean", None) or []) if info is not None else []
    std = list(getattr(info, "std", None) or []) if info is not None else []
    keep = keep_masks if keep_masks is not None else output_dir is None
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    for item in inputs:
        if isinstance(item, np.ndarray):
            raise ConfigError("pass volumes as files (NIfTI, NRRD, MHA/MHD, DICOM folder, .npy), not arrays; "
                              "for arrays call deploy_unet.predict_volume.sliding_window_logits")
        path = Path(item).expanduser()
        if not path.exists():
            raise ArtifactError(f"input {path} does not exist; pass volume files or DICOM folders")
        paths.append(path)
    spent = dict.fromkeys(VOLUME_STAGES, 0.0)
    skipped: list[dict[str, str]] = []
    results: list[VolumePrediction] = []
    used: set[str] = set()
    loop_start = time.perf_counter()
    with progress_bar(progress, f"predict {Path(artifact).name}", len(paths)) as tick:
        for path in paths:
            t0 = time.perf_counter()
            try:
                reader = io.reader_for(path, ("volume", "array"))
                image = reader.read(path)
                array = image.array
                channels = image.channels
                if image.format == "npy" and array.ndim == 4:  # (C, D, H, W), MONAI's channel-first
                    array, channels = np.moveaxis(array, 0, -1), True
                volume = to_channels_first(array, channels, in_channels, str(path))
                if np.issubdtype(volume.dtype, np.floating) and not np.isfinite(volume).all():
                    raise ArtifactError(f"{path} holds NaN or Inf values; replace them (np.nan_to_num)")
            except DeployUnetError as exc:
                skip_input(skipped, warn, str(path), str(exc))
                tick(1)
                continue
            t1 = time.perf_counter()
            spatial = tuple(volume.shape[1:])
            x = how.apply(volume, mean, std)
            grid_shape = None
            if resample:
                if image.geometry.spacing is None:
                    warn(f"{path} has no voxel spacing (.npy); not resampled")
                else:
                    grid_shape = resampled_shape(spatial, image.geometry.spacing, target)
                    x = resample_linear(x, grid_shape)
            t2 = time.perf_counter()
            spent["read"] += t1 - t0
            spent["preprocess"] += t2 - t1
            logits, count = sliding_window_logits(runner, x, window, sw, spent)
            t3 = time.perf_counter()
            if not num_classes:
                num_classes = int(logits.shape[0]) if logits.shape[0] > 1 else 2
            mask = logits_to_mask(logits)
            if grid_shape is not None:
                mask = resample_nearest(mask, spatial)
            probs = _probabilities(logits, spatial) if save_probs else None
            t4 = time.perf_counter()
            name = _unique(reader.stem(path), used)
            entry = VolumePrediction(
                name=name, source=str(path), size=[int(s) for s in spatial],
                spacing=[float(s) for s in image.geometry.spacing] if image.geometry.spacing else None,
                class_fractions=class_fractions(mask, num_classes, class_names),
                inference_ms=round(1000 * (t3 - t2), 3), windows=count,
                resampled_to=list(grid_shape) if grid_shape is not None else None,
                mask=mask if keep else None,
            )
            if out_dir is not None:
                entry.files = _write_outputs(out_dir, name, image, volume, mask, num_classes, class_names,
                                             overlays, probs)
            results.append(entry)
            spent["postprocess"] += t4 - t3
            spent["write"] += time.perf_counter() - t4
            tick(1)
    loop_seconds = time.perf_counter() - loop_start
    report = finish_report(
        VolumeReport, runner, artifact, times=times, spent=spent, loop_seconds=loop_seconds, threads=threads,
        out_dir=out_dir, fit="sliding-window", output="logits", num_classes=num_classes, class_names=class_names,
        images=results, skipped=skipped,
        sliding_window={"window": list(window), "overlap": sw.overlap, "blend": sw.blend, "sw_batch": sw.sw_batch,
                        "mirror_axes": list(sw.mirror_axes), "intensity": str(how), "resample": bool(resample),
                        "spacing": list(target) if target else None},
    )
    report.seconds = time.perf_counter() - (started if started is not None else loop_start)
    if out_dir is not None:
        report.write(out_dir)
    return report


def _graph_channels(runner) -> int:
    shape = next(iter(runner.input_spec.values())).shape
    channels = shape[1] if shape is not None and len(shape) > 1 else None
    return int(channels) if isinstance(channels, int) and channels > 0 else 1


def _unique(stem: str, used: set[str]) -> str:
    for candidate in (stem, *(f"{stem}-{n}" for n in range(2, 10**6))):
        if candidate not in used:
            used.add(candidate)
            return candidate
    raise AssertionError("unreachable")


def _probabilities(logits: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    if logits.shape[0] == 1:
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        probs = e / e.sum(axis=0, keepdims=True)
    if tuple(probs.shape[1:]) != tuple(spatial):
        probs = resample_linear(probs, spatial)
    return probs.astype(np.float16)


def _write_outputs(out_dir: Path, name: str, image, volume: np.ndarray, mask: np.ndarray, num_classes: int,
                   class_names: Sequence[str], overlays: bool, probs: np.ndarray | None) -> dict[str, str]:
    from deploy_unet.fileio import atomic_path
    from deploy_unet.io import base as io

    path = io.output_path(out_dir, image, name=name)
    files = {"mask": os.fspath(io.write_like(path, mask, image))}
    if overlays:
        from deploy_unet.visualize import save_png, volume_slices_image

        picture = volume_slices_image(volume[0], mask, num_classes, class_names, image.geometry.spacing,
                                      title=f"{name}: {'x'.join(map(str, mask.shape))}")
        files["slices"] = os.fspath(save_png(picture, out_dir / f"{name}.slices.png"))
    if probs is not None:
        target = out_dir / f"{name}.probs.npy"
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.save(f, probs)
        files["probs"] = os.fspath(target)
    return files
