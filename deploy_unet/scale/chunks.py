"""One output chunk of a streamed image, computed and stored: what ``scale.stream`` runs in one process and
``scale.cluster`` runs as Dask tasks, below both (neither is imported here).

``run_chunk`` reads the chunk plus the halo its windows need through the image's reader (``io``), prepares those
pixels with the job's ``prepare`` (the model's own normalisation, pixel by pixel), runs the windows of the one
grid fixed for the whole image through ``runtime.windows.blend_region`` (batched, any runner), takes the argmax
and writes the chunk once, whole; a chunk already on disk is only read back for its class counts. ``ChunkJob``
(with its ``GridSpec``) is everything a chunk needs, small and picklable.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.runtime import windows as W

Prepare = Callable[[np.ndarray], np.ndarray]  # (h, w[, c]) pixels as stored -> (C, h, w) float32


@dataclass(frozen=True)
class GridSpec:
    """What fixes the window grid of one image (hashable: workers build and cache the grid from it)."""

    shape: tuple[int, int]
    window: tuple[int, int]
    mode: str  # gaussian | constant | crop | valid
    overlap: float
    halo: int | None
    divisor: int
    contract: Any = None  # a ShapeContract for valid-convolution nets

    @property
    def grid(self) -> W.WindowGrid:
        return _grid(self)


@functools.lru_cache(maxsize=8)
def _grid(spec: GridSpec) -> W.WindowGrid:
    if spec.mode == "valid":
        return W.valid_grid(spec.shape, spec.window, spec.contract)
    if spec.mode == "crop":
        return W.crop_grid(spec.shape, spec.window, spec.halo, spec.divisor)
    return W.blend_grid(spec.shape, spec.window, spec.overlap, spec.mode)


@dataclass(frozen=True)
class ChunkJob:
    """Everything a chunk needs, small and picklable (a Dask worker gets it once): where the image is, how its
    pixels are prepared, the grid, where the mask goes."""

    source: str  # path the reader opens (an in-memory image is saved as .npy first for a cluster)
    grid: GridSpec
    prepare: Prepare
    store: str
    probs_store: str | None
    num_classes: int
    sw_batch: int
    mirror_axes: tuple[int, ...]
    max_batch: int | None = None
    input_name: str = "input"
    output_name: str | None = None


@functools.lru_cache(maxsize=4)
def _open_source(path: str):
    from deploy_unet.io import open_image

    return open_image(path)


@functools.lru_cache(maxsize=4)
def open_store(store: str, probs: str | None):
    from deploy_unet.io.rasters import MaskStore

    return MaskStore(Path(store), Path(probs) if probs else None)


def logits_to_mask(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, h, w) blended logits -> class ids: argmax (first on ties), or logit > 0 for a one-channel net."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).astype(np.uint8)
    return logits.argmax(axis=0).astype(np.uint8 if num_classes <= 256 else np.int32)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[0] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def run_chunk(job: ChunkJob, lo: tuple[int, int], hi: tuple[int, int], runner, image=None) -> dict[str, Any]:
    """Compute and store the chunk [lo, hi) (skipped when already stored); its class counts and timings."""
    store = open_store(job.store, job.probs_store)
    started = time.perf_counter()
    if store.has_chunk(lo):
        mask = store.read_chunk(lo, [b - a for a, b in zip(lo, hi)])
        return _summary(lo, mask, job.num_classes, written=False, seconds=time.perf_counter() - started, windows=0)
    source = image if image is not None else _open_source(job.source)
    grid = job.grid.grid

    def read(a, b):
        pixels = source.read_region(tuple(slice(x, y) for x, y in zip(a, b)))
        return job.prepare(pixels)

    output = job.output_name or runner.output_names[0]

    def run_batch(x: np.ndarray) -> np.ndarray:
        return runner.infer({job.input_name: x})[output]

    logits = W.blend_region(run_batch, read, grid, lo, hi, sw_batch=job.sw_batch, mirror_axes=job.mirror_axes,
                            max_batch=job.max_batch)
    mask = logits_to_mask(logits, job.num_classes)
    probs = _probabilities(logits) if job.probs_store else None
    store.write_chunk(lo, mask, probs)
    return _summary(lo, mask, job.num_classes, written=True, seconds=time.perf_counter() - started,
                    windows=grid.windows_for(lo, hi))


def _summary(lo, mask, num_classes, written, seconds, windows) -> dict[str, Any]:
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(num_classes, 2))
    return {"lo": [int(v) for v in lo], "counts": counts.tolist(), "written": written, "seconds": seconds,
            "windows": int(windows), "pid": os.getpid(), "peak_rss": peak_rss()}


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (Linux VmHWM; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
