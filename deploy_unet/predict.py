"""A deployed model on a user's images: artifact + image files, folders or arrays -> masks and overlays.

A stage beside ``validate`` and ``bench``: it opens the artifact with ``runtime.open_runner`` (any backend
they take), prepares each image with ``processing`` (the model's own metadata: channels, mean/std, the
shape contract), runs images of one size together in batches, and brings each mask back to its image's size.

Per image NAME (the file's stem) in the output folder:

- ``NAME.mask.png``: indexed PNG, pixel value = class id, with the VOC palette attached so it is viewable
  (16-bit greyscale above 256 classes);
- ``NAME.overlay.png``: the image with the mask blended in and a legend (colour, class id and name, pixel share);
- ``NAME.probs.npy`` with ``save_probs``: (C, H, W) float16 class probabilities;

and ``predictions.json``: per image its size, per-class pixel fractions and inference time; the artifact,
backend, precision, fit, class names, machine and per-stage times. Every file is written atomically. An
image that cannot be read is named in one warning and skipped; the report lists it and
``raise_for_skipped`` (the CLI: exit 1) fails at the end, after the others were written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, DeployUnetError
from deploy_unet.fileio import atomic_path
from deploy_unet.io.images import ARRAY_SUFFIXES, IMAGE_SUFFIXES, _pixels, read_image  # noqa: F401 (moved to io)
from deploy_unet.io.images import header_size as _header_size
from deploy_unet.prediction_report import (
    PredictionReport,
    class_fractions,
    finish_report,
    progress_bar,
    skip_input,
)
from deploy_unet.processing import Preprocessing, postprocess, preprocess, probabilities
from deploy_unet.timing import StageTimes

LOOP_STAGES = ("read images", "preprocess", "inference", "postprocess", "write outputs")


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass
class ImageInput:
    """One image to predict: a file, one image of a ``.npy``, or an array passed in memory."""

    name: str  # output stem, unique within a run
    source: str  # what the user gave (path, path[index], or <array i>)
    path: Path | None = None
    index: int | None = None  # position inside an .npy holding several images
    array: np.ndarray | None = None  # in-memory image
    size: tuple[int, int] | None = None  # (H, W), read from the header where possible


def _array_images(array: np.ndarray, source: str) -> np.ndarray:
    """An .npy as a stack of HWC (or HW) images: NHWC, NCHW (C in 1..4), HW, HWC or CHW."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        if array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 2, 3, 4):
            array = array.transpose(1, 2, 0)
        return array[None]
    if array.ndim == 4:
        if array.shape[1] in (1, 3, 4) and array.shape[3] not in (1, 2, 3, 4):
            array = array.transpose(0, 2, 3, 1)
        return array
    raise ArtifactError(f"{source} has shape {array.shape}; an .npy of images is HxW, HxWxC or NxHxWxC (or NCHW)")


def collect_inputs(inputs: Iterable[str | os.PathLike | np.ndarray],
                   warn: Callable[[str], None] | None = None) -> tuple[list[ImageInput], list[dict[str, str]]]:
    """Expand files, folders (their image files, sorted; not recursive) and ``.npy`` files into images.

    Returns (images, skipped): a file whose header cannot be read is skipped (named in ``warn``). A path
    that does not exist, a folder with no images or a file type that is not an image is a usage error.
    """
    warn = warn or (lambda _m: None)
    images: list[ImageInput] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()

    def unique(stem: str, suffix: str = "") -> str:
        for candidate in (stem, stem + suffix.replace(".", "_"), *(f"{stem}-{n}" for n in range(2, 10**6))):
            if candidate and candidate not in used:
                used.add(candidate)
                return candidate
        raise AssertionError("unreachable")

    def add_file(path: Path) -> None:
        if path.suffix.lower() in ARRAY_SUFFIXES:
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                stack = _array_images(array, str(path))
            except (OSError, ValueError) as exc:
                skip_input(skipped, warn, str(path), f"cannot read {path} as a NumPy image array ({exc})")
                return
            except ArtifactError as exc:
                skip_input(skipped, warn, str(path), str(exc))
                return
            for i in range(stack.shape[0]):
                images.append(ImageInput(unique(f"{path.stem}_{i:04d}"), f"{path}[{i}]", path, i,
                                         size=(int(stack.shape[1]), int(stack.shape[2]))))
            return
        try:
            size = _header_size(path)
        except Exception as exc:  # any Pillow failure on a header: name it and go on
            skip_input(skipped, warn, str(path), f"cannot read {path} ({str(exc).splitlines()[0] or type(exc).__name__})")
            return
        images.append(ImageInput(unique(path.stem, path.suffix), str(path), path, size=size))

    for k, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            stack = _array_images(item, f"<array {k}>") if item.ndim == 4 else item[None]
            for i, image in enumerate(stack):
                name = unique(f"image_{len(images):04d}")
                images.append(ImageInput(name, f"<array {k}>" + (f"[{i}]" if item.ndim == 4 else ""), array=image,
                                         size=(int(image.shape[0]), int(image.shape[1]))))
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES)
            if not files:
                raise ArtifactError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)})")
            for file in files:
                add_file(file)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES + ARRAY_SUFFIXES:
                raise ConfigError(f"input {path} is not an image ({', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)}); "
                                  "pass image files, folders of them, or .npy arrays")
            add_file(path)
        else:
            raise ArtifactError(f"input {path} does not exist; pass image files, folders or .npy files")
    return images, skipped


def _load(item: ImageInput) -> np.ndarray:
    if item.array is not None:
        image = np.asarray(item.array)
    elif item.index is not None:
        stack = _array_images(np.load(item.path, mmap_mode="r", allow_pickle=False), str(item.path))
        image = np.array(stack[item.index])
    else:
        return read_image(item.path)
    # A NaN pixel would reach the runner and fail the whole batch; this image alone is skipped.
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ArtifactError(f"{item.source} has {bad} NaN or Inf value(s); replace them (np.nan_to_num) or drop "
                            "this image")
    return image


# --- results --------------------------------------------------------------------------------------------


@dataclass
class ImagePrediction:
    name: str
    source: str
    height: int
    width: int
    class_fractions: dict[str, float]  # "id" or "id name" -> share of the image's pixels
    inference_ms: float  # this image's share of its batch's inference time
    batch: int  # how many images shared that batch
    files: dict[str, str] = field(default_factory=dict)  # mask / overlay / probs -> path
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) class ids, kept when asked
    stream: dict[str, Any] | None = None  # a streamed image: chunks, windows, workers, peak memory per process

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("mask")
        data["size"] = [data.pop("height"), data.pop("width")]
        return data


# --- the stage ------------------------------------------------------------------------------------------


def predict(
    artifact: str | os.PathLike,
    inputs: Sequence[str | os.PathLike | np.ndarray],
    output_dir: str | os.PathLike | None = None,
    *,
    backend: str | None = None,
    device: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    batch: int = 1,
    resize: tuple[int, int] | None = None,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
    output: str = "logits",
    save_probs: bool = False,
    overlays: bool = True,
    keep_masks: bool | None = None,
    threads: int | None = None,
    runner_options: dict[str, Any] | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    stream: bool | None = None,
    stream_options: Any = None,
    note: Callable[[str], None] | None = None,
    intensity: str | None = None,
    resample: bool = False,
    spacing: str | Sequence[float] | None = None,
) -> PredictionReport:
    """Run ``artifact`` (``.pt``, ``.onnx``, ``.engine``) on ``inputs`` and give each image its mask.

    ``inputs``: image files (PNG, JPEG, TIFF, BMP; 8/16-bit; grey, RGB, RGBA), folders of them, ``.npy`` arrays
    of images, or NumPy images (H x W [x C], uint8/uint16/float in [0, 1]). Preprocessing comes from the
    model's metadata; images are padded to the divisor and cropped back (default), resized to ``resize``
    (H, W) and masks resized back with nearest neighbour, or run as overlap tiles (``tile``, for
    valid-convolution nets). Images of one size run together, ``batch`` at a time.

    With ``output_dir``: writes NAME.mask.png, NAME.overlay.png (``overlays``), NAME.probs.npy (``save_probs``)
    and predictions.json; without it nothing is written and the masks come back in the report
    (``report.masks``; ``keep_masks`` overrides). ``output="mask"`` has the runner return only the argmax
    (computed on the GPU by the CUDA runners). Unreadable images are skipped and listed in ``report.skipped``
    (call ``report.raise_for_skipped()`` to fail on them); usage errors raise before anything is written.

    Large images (``scale.stream``): tiled/BigTIFF/OME/GeoTIFF and Zarr inputs, and any image over
    ``stream_options.limit_pixels`` (or an engine profile's max), are streamed chunk by chunk into
    NAME.mask.ome.zarr (or NAME.mask.tif) in bounded memory, with one ``note`` line saying so; ``stream=True``
    streams every image, ``False`` none; ``stream_options`` (a ``scale.stream.StreamOptions``) sets the windows,
    chunks, format, ``resume`` and a Dask cluster (``dask``).

    Volumes (NIfTI, NRRD, MHA/MHD, DICOM series folders; ``.npy`` with a 3D net) run by sliding window
    (``stream_options``' window, overlap, blend, sw_batch, mirror_axes; ``intensity``/``resample``/``spacing``
    override the metadata): ``deploy_unet.predict_volume``.
    """
    from deploy_unet.runtime import open_runner, runner_info
    from deploy_unet.runtime.base import check_output_kind

    started = time.perf_counter()
    warn = warn or (lambda _m: None)
    check_output_kind(output)
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    if resize is not None and tile:
        raise ConfigError("--resize and --tile both given; tiles already take any image size, pass one of them")
    if output == "mask" and save_probs:
        raise ConfigError("--save-probs needs the logits; drop --output mask (or --save-probs)")
    if output == "mask" and tile:
        raise ConfigError("--tile stitches logits; drop --output mask with --tile")
    keep = keep_masks if keep_masks is not None else output_dir is None
    times = StageTimes()
    volume_run = _volume_run(inputs)
    with times.stage("find inputs"):
        inputs, large = _split_large_inputs(inputs, stream) if not volume_run else (inputs, [])
        images, skipped = collect_inputs(inputs, warn) if not volume_run else ([], [])
        images += _large_items(large, images)
    if not images and not skipped and not volume_run:
        raise ConfigError("no inputs given; pass image files, folders or .npy files")

    options = {"device": device, "threads": threads, "checkpoint": checkpoint, "output": output,
               **(runner_options or {})}
    tiling = {"tile": True, "tile_size": tile_size} if tile else {}
    with times.stage("open runner"):
        runner = open_runner(artifact, backend, **tiling, **options)
        runner.activate()
    try:
        info = runner_info(runner)
        if volume_run or runner.contract.spatial_dims == 3:
            from deploy_unet.predict_volume import SlidingWindow, predict_volumes

            sw = SlidingWindow.from_options(stream_options)
            return predict_volumes(runner, info, inputs, output_dir, artifact=artifact, sw=sw, times=times,
                                   intensity=intensity, resample=resample, spacing=spacing, save_probs=save_probs,
                                   overlays=overlays, keep_masks=keep_masks, threads=threads, progress=progress,
                                   warn=warn, started=started)
        if stream_options is not None and any(a > 1 for a in (stream_options.mirror_axes or ())):
            raise ConfigError("--mirror axis 2 is for volumes; images have axes 0 (rows) and 1 (columns)")
        if info is None:
            why = "".join(f"; {w}" for w in getattr(runner, "undescribed", [])[:1])
            raise ArtifactError(f"{artifact} carries no deploy-unet metadata (channels, mean/std, divisor) and could "
                                f"not be described{why}; export it with `deploy-unet export`, or fix the file")
        if output == "mask" and info.num_classes == 1:
            raise ConfigError("a one-channel (binary) net's mask is logit > 0, not the argmax the runners' "
                              "--output mask computes; drop --output mask")
        spec = Preprocessing.from_model_info(info, fit="tile" if tile else "resize" if resize else "pad", size=resize)
        class_names = list(getattr(info, "class_names", None) or [])
        num_classes = int(info.num_classes)
        input_name = next(iter(runner.input_spec))
        out_dir = Path(output_dir) if output_dir is not None else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        spent = dict.fromkeys(LOOP_STAGES, 0.0)
        results: dict[str, ImagePrediction] = {}
        loop_start = time.perf_counter()
        streamed_start = time.perf_counter()
        results.update(_predict_streamed(images, runner, spec, info, artifact, out_dir, stream, stream_options,
                                         save_probs, output, backend, options, note or warn, skipped, warn))
        if results:
            times.add("stream large images", time.perf_counter() - streamed_start)
        whole = [item for item in images if item.name not in results]
        with progress_bar(progress, f"predict {Path(artifact).name}", len(whole)) as tick:
            for chunk in _batches_by_size(whole, batch):
                t0 = time.perf_counter()
                arrays, ok = [], []
                for item in chunk:
                    try:
                        arrays.append(_load(item))
                        ok.append(item)
                    except (ArtifactError, OSError, ValueError) as exc:
                        skip_input(skipped, warn, item.source, str(exc))
                        tick(1)
                t1 = time.perf_counter()
                spent["read images"] += t1 - t0
                if not ok:
                    continue
                try:
                    prepared = preprocess(arrays, spec)
                except DeployUnetError as exc:  # e.g. 5 channels, an int64 image: this input, not the run
                    for item in ok:
                        skip_input(skipped, warn, item.source, str(exc))
                        tick(1)
                    continue
                t2 = time.perf_counter()
                outputs = runner.infer({input_name: prepared.array})
                t3 = time.perf_counter()
                raw = outputs[runner.output_names[0]]
                masks = postprocess(raw, prepared.geometry)
                probs = probabilities(raw, prepared.geometry) if save_probs else None
                t4 = time.perf_counter()
                for k, item in enumerate(ok):
                    mask = masks[k]
                    entry = ImagePrediction(
                        name=item.name, source=item.source, height=int(mask.shape[0]), width=int(mask.shape[1]),
                        class_fractions=class_fractions(mask, num_classes, class_names),
                        inference_ms=round(1000 * (t3 - t2) / len(ok), 3), batch=len(ok),
                        mask=mask if keep else None,
                    )
                    if out_dir is not None:
                        entry.files = _write_outputs(out_dir, item.name, arrays[k], mask, num_classes, class_names,
                                                     overlays, None if probs is None else probs[k])
                    results[item.name] = entry
                    tick(1)
                t5 = time.perf_counter()
                spent["preprocess"] += t2 - t1
                spent["inference"] += t3 - t2
                spent["postprocess"] += t4 - t3
                spent["write outputs"] += t5 - t4
        loop_seconds = time.perf_counter() - loop_start
        report = finish_report(
            PredictionReport, runner, artifact, times=times, spent=spent, loop_seconds=loop_seconds,
            threads=threads, out_dir=out_dir, fit=spec.fit, output=output, num_classes=num_classes,
            class_names=class_names, images=[results[i.name] for i in images if i.name in results], skipped=skipped,
        )
    finally:
        runner.deactivate()
    report.seconds = time.perf_counter() - started
    if out_dir is not None:
        report.write(out_dir)
    return report


def _volume_run(inputs) -> bool:
    """True when every input is a volume (NIfTI, NRRD, MHA/MHD, a DICOM folder); images and volumes mixed in one
    run are refused (they need different nets)."""
    from deploy_unet.predict_volume import is_volume_input

    kinds = {is_volume_input(item) for item in inputs} - {None}  # None: an .npy, either (the net decides)
    if kinds == {True, False}:
        raise ConfigError("inputs mix volumes and 2D images; predict them in separate runs (they need a 3D and a "
                          "2D net)")
    return kinds == {True}


def _batches_by_size(images: Sequence[ImageInput], batch: int) -> Iterator[list[ImageInput]]:
    """Images grouped by (H, W) in order of first appearance, each group cut into batches."""
    groups: dict[tuple[int, int] | None, list[ImageInput]] = {}
    for item in images:
        groups.setdefault(item.size, []).append(item)
    for group in groups.values():
        for start in range(0, len(group), batch):
            yield group[start:start + batch]


def _write_outputs(out_dir: Path, name: str, image: np.ndarray, mask: np.ndarray, num_classes: int,
                   class_names: Sequence[str], overlays: bool, probs: np.ndarray | None) -> dict[str, str]:
    from deploy_unet.visualize import mask_image, overlay_image, save_png

    files = {"mask": os.fspath(save_png(mask_image(mask), out_dir / f"{name}.mask.png"))}
    if overlays:
        files["overlay"] = os.fspath(save_png(overlay_image(image, mask, num_classes, class_names),
                                              out_dir / f"{name}.overlay.png"))
    if probs is not None:
        path = out_dir / f"{name}.probs.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, probs.astype(np.float16))
        files["probs"] = os.fspath(path)
    return files


# --- large images: streamed chunk by chunk (scale.stream) ---------------------------------------------------


def _split_large_inputs(inputs, stream: bool | None) -> tuple[list, list[Path]]:
    """Inputs read by region (a Zarr store, a tiled/BigTIFF/OME/GeoTIFF) apart from the rest."""
    if stream is False:
        return list(inputs), []
    from deploy_unet.io.rasters import is_raster_path

    rest, large = [], []
    for item in inputs:
        if not isinstance(item, np.ndarray) and is_raster_path(item):
            large.append(Path(item))
        else:
            rest.append(item)
    return rest, large


def _large_items(paths: Sequence[Path], images: Sequence[ImageInput]) -> list[ImageInput]:
    from deploy_unet.io import reader_for

    used = {i.name for i in images}
    items = []
    for path in paths:
        stem = reader_for(path).stem(path)
        name = stem if stem not in used else next(f"{stem}-{n}" for n in range(2, 10**6) if f"{stem}-{n}" not in used)
        used.add(name)
        items.append(ImageInput(name, str(path), path, size=None))
    return items


def _predict_streamed(images, runner, spec, info, artifact, out_dir, stream, stream_options, save_probs, output,
                      backend, options, note, skipped, warn) -> dict[str, ImagePrediction]:
    """Stream the images that are read by region or are too large to run whole; their predictions by name."""
    import functools

    from deploy_unet.io import open_image
    from deploy_unet.io.base import LazyImage
    from deploy_unet.scale.cluster import RunnerSpec
    from deploy_unet.scale.stream import StreamOptions, should_stream, stream_predict

    opts = stream_options or StreamOptions()
    results: dict[str, ImagePrediction] = {}
    for item in images:
        by_region = item.size is None  # a raster path
        if not by_region and should_stream(runner, item.size, opts, stream) is None:
            continue
        if output == "mask":
            raise ConfigError("--output mask gives no logits to blend; drop --output mask for streamed images")
        if out_dir is None:
            raise ConfigError(f"{item.source} is streamed chunk by chunk to disk; pass an output folder")
        try:
            source = open_image(item.path) if by_region else LazyImage(_load(item), "array")
        except (ArtifactError, OSError, ValueError) as exc:
            skip_input(skipped, warn, item.source, str(exc))
            continue
        shape = tuple(int(s) for s in source.shape[:2])
        why = should_stream(runner, shape, opts, stream) or f"{item.source} is read by region"
        note(f"streaming {item.source} ({shape[0]}x{shape[1]}): {why}; chunks of {opts.chunk[0]}x{opts.chunk[1]}"
             + (f" on Dask {opts.dask}" if opts.dask else ""))
        spec_options = tuple(sorted((k, v) for k, v in options.items() if v is not None and k != "output"))
        result = stream_predict(
            runner, source, item.name, out_dir, prepare=functools.partial(_prepare, spec=spec),
            num_classes=int(info.num_classes), artifact=os.fspath(artifact), options=opts, save_probs=save_probs,
            runner_spec=RunnerSpec(os.fspath(artifact), backend, spec_options))
        source.close()
        total = max(sum(result.counts), 1)
        from deploy_unet.visualize import class_label

        names = list(getattr(info, "class_names", None) or [])
        fractions = {class_label(i, names): round(c / total, 6) for i, c in enumerate(result.counts)
                     if i < max(int(info.num_classes), 2)}
        results[item.name] = ImagePrediction(
            name=item.name, source=item.source, height=shape[0], width=shape[1], class_fractions=fractions,
            inference_ms=round(1000 * result.seconds, 3), batch=1, files=result.files,
            stream={"chunks": result.chunks, "computed": result.computed, "windows": result.windows,
                    "workers": result.workers, "seconds": round(result.seconds, 3), "grid": result.grid,
                    "peak_rss": {str(k): v for k, v in result.peak_rss.items()}})
        item.size = shape
    return results


def _prepare(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    from deploy_unet.processing import prepare_region

    return prepare_region(pixels, spec)


# ``deploy_unet.predict(artifact, inputs, output_dir, ...)`` is this stage's entry point.
from deploy_unet import _make_callable  # noqa: E402

_make_callable(__name__, predict)
