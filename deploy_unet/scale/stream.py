"""Streaming predict: one image of any size, output chunk by output chunk, in memory bounded by the chunk.

The image is cut into output chunks (``StreamOptions.chunk``, 2048 x 2048 by default) that are also the storage
chunks of the mask (``io.rasters.MaskStore``). Each chunk is one call of ``run_chunk`` (``scale.chunks``, the
module below this one and ``scale.cluster``): it reads the chunk plus the halo its windows need through the
image's reader (``io``), prepares those pixels with the caller's ``prepare`` (the model's own normalisation,
pixel by pixel), runs the windows of the one grid fixed for the whole image through
``runtime.windows.blend_region`` (batched, any runner), takes the argmax and writes the chunk once, whole. So the mask does not depend on the chunk size, the worker count or the order (``runtime/windows.py``
says what is byte-identical), and peak memory is set by the window, the batch and the chunk, never the image.

A chunk already on disk is not computed again: ``--resume`` (and a task Dask reruns after its worker died)
finds it and only reads back its class counts. ``stream_image`` runs the chunks in one process with one open
runner; ``scale.cluster`` runs the same ``run_chunk`` as Dask tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.runtime import windows as W
from deploy_unet.scale.chunks import ChunkJob, GridSpec, Prepare, open_store, run_chunk

DEFAULT_STREAM_PIXELS = 64 * 1024 * 1024  # images above this many pixels are streamed (64 MP: ~0.7 GB of logits)
DEFAULT_CHUNK = 2048
DEFAULT_WINDOW = 512  # when neither the user, nor the metadata, nor an engine profile gives one
MASK_FORMATS = ("ome-zarr", "tiff")


@dataclass(frozen=True)
class StreamOptions:
    """How a streamed image is windowed, chunked and written (see ``docs/large-images.md``)."""

    window: tuple[int, int] | None = None  # default: the export size, an engine's opt profile, else 512
    overlap: float = W.DEFAULT_OVERLAP
    blend: str = "gaussian"  # gaussian | constant | crop
    halo: int | None = None  # crop: pixels kept away from window edges (the net's receptive radius)
    sw_batch: int = W.DEFAULT_SW_BATCH
    mirror_axes: tuple[int, ...] = ()
    chunk: tuple[int, int] = (DEFAULT_CHUNK, DEFAULT_CHUNK)
    limit_pixels: int = DEFAULT_STREAM_PIXELS  # auto-streaming threshold
    mask_format: str = "ome-zarr"
    resume: bool = False
    dask: str | None = None  # tcp://scheduler:8786 | local:N

    def __post_init__(self) -> None:
        if self.blend not in (*W.BLEND_MODES, "crop"):
            raise ConfigError(f"--blend {self.blend!r} is not valid; choose gaussian, constant or crop")
        if self.blend == "crop" and self.halo is None:
            raise ConfigError("--blend crop needs --halo (pixels of context each kept pixel needs: the net's "
                              "receptive radius)")
        if self.mask_format not in MASK_FORMATS:
            raise ConfigError(f"--mask-format {self.mask_format!r} is not valid; choose {' or '.join(MASK_FORMATS)}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap {self.overlap} must be in [0, 1)")
        if self.sw_batch < 1:
            raise ConfigError(f"--sw-batch {self.sw_batch} must be >= 1")
        if min(self.chunk) < 16:
            raise ConfigError(f"--chunk {self.chunk} must be at least 16 pixels per side")


def plan_grid(runner, shape: tuple[int, int], options: StreamOptions) -> GridSpec:
    """The grid for an image of ``shape`` on ``runner``'s net: a valid-convolution net gets its exact overlap-tile
    (``valid``), else ``options.blend``. The window is a valid input size, inside an engine's profile."""
    contract = runner.contract
    export = getattr(getattr(runner, "info", None), "export_shape", None)
    opt, largest = engine_profile(runner)
    window = options.window
    if window is None:
        window = opt or ((int(export[2]), int(export[3])) if export and len(export) == 4 and export[2] >= 64
                         else (DEFAULT_WINDOW, DEFAULT_WINDOW))
    window = tuple(int(w) for w in window)
    hint = "choose a valid --window"
    contract.validate(window, hint)
    if largest and any(w > m for w, m in zip(window, largest)):
        raise ShapeContractError(f"--window {window[0]}x{window[1]} is larger than the engine's profile max "
                                 f"{largest[0]}x{largest[1]}; choose a window inside the profile")
    if not contract.is_divisor_only:
        return GridSpec(tuple(shape), window, "valid", 0.0, None, contract.divisor, contract)
    return GridSpec(tuple(shape), window, options.blend, float(options.overlap), options.halo, contract.divisor)


def engine_profile(runner) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(opt, max) H x W of an engine's optimisation profile; (None, None) for other runners."""
    manifest = getattr(runner, "manifest", None)
    inputs = getattr(manifest, "inputs", None) or []
    for t in inputs:
        if t.get("max") and len(t["max"]) == 4:
            opt = t.get("opt") or t["max"]
            return (int(opt[2]), int(opt[3])), (int(t["max"][2]), int(t["max"][3]))
    return None, None


def should_stream(runner, shape: Sequence[int], options: StreamOptions, forced: bool | None) -> str | None:
    """Why an image of (H, W) ``shape`` is streamed (one line), or None when it is run whole."""
    if forced is False:
        return None
    h, w = int(shape[0]), int(shape[1])
    if forced:
        return "--stream"
    if h * w > options.limit_pixels:
        return f"{h}x{w} = {h * w / 1e6:.0f} megapixels is over the {options.limit_pixels / 1e6:.0f}-megapixel limit"
    _, largest = engine_profile(runner)
    if largest and (h > largest[0] or w > largest[1]):
        return f"{h}x{w} is larger than the engine's profile max {largest[0]}x{largest[1]}"
    return None


# --- one image, one process --------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What ``stream_image`` did: the files, the class counts over the image, timings per chunk."""

    shape: tuple[int, int]
    files: dict[str, str]
    counts: list[int]
    chunks: int
    computed: int  # chunks computed in this run (the others were on disk: --resume)
    windows: int
    seconds: float
    grid: dict[str, Any] = field(default_factory=dict)
    chunk_seconds: list[float] = field(default_factory=list)
    workers: int = 1
    peak_rss: dict[int, int] = field(default_factory=dict)  # process id -> its peak resident bytes


def output_names(out_dir: Path, stem: str, options: StreamOptions, probs: bool) -> tuple[Path, Path | None, Path | None]:
    """(mask store, probabilities store, BigTIFF) paths for an image named ``stem``."""
    store = out_dir / f"{stem}.mask.ome.zarr"
    if options.mask_format == "tiff":
        store = out_dir / f".{stem}.mask.chunks.zarr"  # the chunks, then the BigTIFF made from them
    return (store, out_dir / f"{stem}.probs.zarr" if probs else None,
            out_dir / f"{stem}.mask.tif" if options.mask_format == "tiff" else None)


def prepare_store(job_store: Path, probs_store: Path | None, shape, options: StreamOptions, num_classes: int,
                  like, settings: dict) -> tuple[Any, bool]:
    """The mask store, made fresh, or reopened for ``--resume`` when its settings match; (store, resumed)."""
    from deploy_unet.io.rasters import MaskStore

    if options.resume:
        existing = MaskStore.open_existing(job_store, probs_store)
        if existing is not None:
            stored = existing.attrs["deploy_unet"].get("settings")
            if stored == settings and tuple(existing.array.shape) == tuple(shape):
                return existing, True
            raise ConfigError(f"--resume: {job_store} was made with other settings ({_diff(stored, settings)}); "
                              "run without --resume to start it again")
    return MaskStore.create(job_store, tuple(shape), tuple(options.chunk), num_classes, like=like, settings=settings,
                            probs=probs_store is not None, probs_path=probs_store), False


def _diff(old: dict | None, new: dict) -> str:
    old = old or {}
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]) or "unknown"


def job_settings(artifact: str, grid: GridSpec, options: StreamOptions, num_classes: int) -> dict:
    """What a resumed store must have been made with (the artifact by size and time, the grid, the chunks)."""
    st = os.stat(artifact) if os.path.exists(artifact) else None
    return {"artifact": os.path.basename(artifact), "artifact_bytes": st.st_size if st else None,
            "artifact_mtime": int(st.st_mtime) if st else None, "shape": list(grid.shape),
            "window": list(grid.window), "mode": grid.mode, "overlap": grid.overlap, "halo": grid.halo,
            "mirror": list(options.mirror_axes), "chunk": list(options.chunk), "num_classes": num_classes}


def stream_image(runner, source, job: ChunkJob, options: StreamOptions, tick=None) -> tuple[list[dict], int]:
    """Run every chunk not yet stored in this process; (chunk summaries, chunks computed)."""
    results, computed = [], 0
    for lo, hi in W.chunk_regions(job.grid.shape, options.chunk):
        summary = run_chunk(job, lo, hi, runner, image=source)
        computed += summary["written"]
        results.append(summary)
        if tick:
            tick(summary)
    return results, computed


def finish(results: list[dict], store, tiff_path: Path | None, num_classes: int, settings: dict) -> list[int]:
    """Mark the store complete (and write the BigTIFF); the class counts over the image."""
    counts = np.zeros(max(num_classes, 2), np.int64)
    for r in results:
        counts[:len(r["counts"])] += np.asarray(r["counts"], np.int64)
    store.finish({"counts": counts.tolist()})
    if tiff_path is not None:
        store.to_tiff(tiff_path)
    return counts.tolist()


def describe(grid: GridSpec, options: StreamOptions) -> dict[str, Any]:
    data = asdict(options)
    data.update({"window": list(grid.window), "mode": grid.mode})
    return data


def stream_predict(
    runner,
    source,
    stem: str,
    out_dir: str | os.PathLike,
    *,
    prepare: Prepare,
    num_classes: int,
    artifact: str,
    options: StreamOptions,
    save_probs: bool = False,
    runner_spec: Any = None,
    progress: Callable[[dict], None] | None = None,
) -> StreamResult:
    """Predict one image of any size into ``out_dir/STEM.mask.ome.zarr`` (or ``STEM.mask.tif``), chunk by chunk.

    ``source``: a ``LazyImage`` (``io.open_image``) or an (H, W[, C]) array. ``prepare`` turns stored pixels into
    the net's (C, h, w) float32 input. With ``options.dask`` the chunks run as Dask tasks (``scale.cluster``),
    the runner reopened once per worker from ``runner_spec`` (a ``cluster.RunnerSpec``)."""
    from deploy_unet.io.base import LazyImage

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(source, np.ndarray):
        source = LazyImage(source, "array")
    shape = tuple(int(s) for s in source.shape[:2])
    grid = plan_grid(runner, shape, options)
    store_path, probs_path, tiff_path = output_names(out_dir, stem, options, save_probs)
    settings = job_settings(artifact, grid, options, num_classes)
    store, resumed = prepare_store(store_path, probs_path, shape, options, num_classes, source, settings)
    input_name = next(iter(runner.input_spec))
    job = ChunkJob(source=os.fspath(source.path) if source.path is not None else "", grid=grid, prepare=prepare,
                   store=os.fspath(store_path), probs_store=os.fspath(probs_path) if probs_path else None,
                   num_classes=num_classes, sw_batch=options.sw_batch, mirror_axes=tuple(options.mirror_axes),
                   max_batch=getattr(runner, "max_batch", None), input_name=input_name,
                   output_name=runner.output_names[0])
    open_store.cache_clear()
    workers = 1
    if options.dask:
        from deploy_unet.scale.cluster import run_on_dask

        results, computed, workers = run_on_dask(job, source, options, runner_spec, out_dir, progress)
    else:
        results, computed = stream_image(runner, source, job, options, progress)
    counts = finish(results, store, tiff_path, num_classes, settings)
    files = {"mask": os.fspath(tiff_path or store_path)}
    if tiff_path is not None:
        import shutil

        shutil.rmtree(store_path, ignore_errors=True)
    if probs_path is not None:
        files["probs"] = os.fspath(probs_path)
    return StreamResult(shape=shape, files=files, counts=counts, chunks=len(results), computed=computed,
                        windows=sum(r["windows"] for r in results), seconds=time.perf_counter() - started,
                        grid={**describe(grid, options), "resumed": resumed},
                        chunk_seconds=[r["seconds"] for r in results], workers=workers,
                        peak_rss=_peaks(results))


def _peaks(results: list[dict]) -> dict[int, int]:
    peaks: dict[int, int] = {}
    for r in results:
        if r.get("peak_rss"):
            peaks[r["pid"]] = max(peaks.get(r["pid"], 0), r["peak_rss"])
    return peaks
