"""The one N-D sliding-window core: window grids, batched (and mirrored) window runs, blending by region.

Images (2D) and volumes (3D) of any size go through a net that takes windows of one size. Three grids, all
fixed per axis for the whole image (a window's place never depends on how the work is cut up):

- ``blend_grid``: MONAI's ``sliding_window_inference`` grid (``_get_scan_interval``: step
  ``int(window * (1 - overlap))``, the whole window when it equals the image; ``dense_patch_slices``: starts
  ``i * step``, the last one moved back to end at the image's end; an image smaller than the window padded to it,
  ``diff // 2`` before, with zeros), windows weighted by ``importance_map`` (``gaussian``: MONAI's
  ``compute_importance_map``, sigma = 0.125 x window, clamped below at max(min, 1e-3); or ``constant``) and the
  weighted sum divided by the sum of weights. nnU-Net's predictor is the same with step 0.5 and Gaussian 1/8.
- ``crop_grid``: crop-to-centre for nets of a known receptive field: windows every ``window - 2 * halo`` pixels
  (a multiple of ``divisor``, so each window pools on the whole image's grid), clamped inside the image, and each
  output pixel taken from the one window whose centre part holds it (cut halfway through each overlap, so every
  kept pixel is >= ``halo`` from a window edge that is not the image's edge). For a zero-padded net (convs,
  pools, eval BatchNorm; nothing global such as InstanceNorm or attention) with ``halo`` >= its receptive
  radius, this is whole-image inference within float tolerance.
- ``valid_grid``: the exact overlap-tile of a valid-convolution net (output smaller than its input), planned by
  ``runtime/tiling.tile_axis`` (the C++ runtime mirrors that geometry): mirror padding, each window keeps its
  ``step`` aligned output pixels.

``blend_region`` is the key function: the blended output of one REGION (a chunk) of the image. It runs only the
windows of the grid that touch the region, reads the input it needs through a callable (region plus halo,
clipped to the image; padding made here), and accumulates weighted outputs and weights only inside the region,
each pixel's windows added in grid order. What follows:

- a pixel's value is the same sequence of float32 operations whichever region it is computed in, so the result
  is **byte-identical** for any chunking, worker count or order whenever the runner gives a window the same
  numbers in any batch (``sw_batch=1`` always; most CPU backends for fixed shapes). Batches are formed per region
  (windows in grid order, ``sw_batch`` at a time), so with a batch-dependent runner two chunkings agree **within
  float tolerance** (about 1e-6 relative), and one chunking run twice, in any order or on any worker, is
  byte-identical.
- memory is bounded by the region (its input box, one float32 accumulator per output channel, one weight map)
  plus one batch of windows, never by the image.
- whole-image sliding window = ``blend_region`` over one region covering the image (``sliding_window``).

Mirroring test-time augmentation (``mirror_axes``) runs each window also flipped over every non-empty subset of
those axes (nnU-Net's ``_internal_maybe_mirror_and_predict``: combinations by size, then order), the flipped
copies in the same runner batches as the windows, outputs flipped back and averaged.

NumPy only: no io and no runner imports; ``run_batch`` is any callable (B, C, *window) -> (B, K, *window_out).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ConfigError, ShapeContractError

BLEND_MODES = ("gaussian", "constant")
PADDING_MODES = ("constant", "reflect")
DEFAULT_OVERLAP = 0.5
DEFAULT_SIGMA_SCALE = 0.125
DEFAULT_SW_BATCH = 4

RunBatch = Callable[[np.ndarray], np.ndarray]
# read(starts, stops) -> (C, *(stops - starts)) input pixels of the box [starts, stops), inside the image.
ReadBox = Callable[[tuple[int, ...], tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class AxisGrid:
    """The windows along one axis.

    Window ``i`` reads image pixels ``[in_starts[i], in_starts[i] + window)`` (outside the image: padding) and
    its output pixel ``k`` lies on image pixel ``in_starts[i] + shift + k``; only output pixels
    ``[keep[i][0], keep[i][1])`` are used (all of them when blending).
    """

    size: int  # image pixels along the axis
    window: int  # window input size
    out_window: int  # window output size (window - border for a valid-convolution net)
    shift: int  # image offset of output pixel 0 relative to the window's input start
    in_starts: tuple[int, ...]
    keep: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.in_starts)

    def out_range(self, i: int) -> tuple[int, int]:
        """The image pixels window ``i`` contributes to, clipped to the image."""
        base = self.in_starts[i] + self.shift
        return max(base + self.keep[i][0], 0), min(base + self.keep[i][1], self.size)

    def touching(self, lo: int, hi: int) -> list[int]:
        """Windows (in grid order) that contribute to image pixels ``[lo, hi)``."""
        hits = []
        for i in range(self.count):
            a, b = self.out_range(i)
            if a < hi and b > lo:
                hits.append(i)
        return hits

    def input_span(self, windows: Sequence[int]) -> tuple[int, int]:
        return min(self.in_starts[i] for i in windows), max(self.in_starts[i] for i in windows) + self.window


@dataclass(frozen=True)
class WindowGrid:
    """The fixed window grid of an image: one ``AxisGrid`` per spatial axis, a blending weight map over the
    window output (``None``: crop mode, each pixel from exactly one window) and how the input is padded."""

    axes: tuple[AxisGrid, ...]
    weights: np.ndarray | None  # float32, shape = window output; None: crop (kept parts partition the image)
    padding: str  # "constant" (zeros, as MONAI's default) or "reflect" (numpy's, the edge not repeated)
    mode: str  # gaussian | constant | crop | valid

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(a.window for a in self.axes)

    @property
    def out_window(self) -> tuple[int, ...]:
        return tuple(a.out_window for a in self.axes)

    @property
    def count(self) -> int:
        return int(np.prod([a.count for a in self.axes]))

    def halo(self, starts: Sequence[int], stops: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The input box (may reach outside the image) that ``blend_region`` reads for region [starts, stops)."""
        lo, hi = [], []
        for axis, a, b in zip(self.axes, starts, stops):
            span = axis.input_span(axis.touching(a, b))
            lo.append(span[0])
            hi.append(span[1])
        return tuple(lo), tuple(hi)

    def windows_for(self, starts: Sequence[int], stops: Sequence[int]) -> int:
        """How many windows a region runs (its share of the grid, halo windows included)."""
        return int(np.prod([len(ax.touching(a, b)) for ax, a, b in zip(self.axes, starts, stops)]))


def _as_tuple(value, n: int, what: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ConfigError(f"{what} {value} has {len(value)} values for {n} spatial dims; give one or {n}")
    return value


def scan_interval(size: int, window: int, overlap: float) -> int:
    """MONAI's ``_get_scan_interval`` for one axis (``size`` already padded to at least the window)."""
    if window == size:
        return int(window)
    interval = int(window * (1 - overlap))
    return interval if interval > 0 else 1


def dense_starts(size: int, window: int, interval: int) -> list[int]:
    """MONAI's ``dense_patch_slices`` starts for one axis: every ``interval``, the last moved back to fit."""
    window = min(window, size)
    num = -(-size // interval)
    count = next((d + 1 for d in range(num) if d * interval + window >= size), 1)
    return [i * interval - max(i * interval + window - size, 0) for i in range(count)]


def importance_map(shape: Sequence[int], mode: str = "gaussian", sigma_scale=DEFAULT_SIGMA_SCALE) -> np.ndarray:
    """MONAI's ``compute_importance_map`` in NumPy float32: the outer product of 1-D Gaussians
    exp(-x^2 / (2 sigma^2)), x centred on the window, sigma = sigma_scale x size; clamped below at
    max(its minimum, 1e-3). ``constant``: ones."""
    shape = tuple(int(s) for s in shape)
    if mode == "constant":
        return np.ones(shape, np.float32)
    if mode != "gaussian":
        raise ConfigError(f"blend mode {mode!r} is not valid; choose one of: {', '.join(BLEND_MODES)}")
    scales = _as_tuple(sigma_scale, len(shape), "sigma_scale")
    result = None
    for i, (n, s) in enumerate(zip(shape, scales)):
        x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
        x = np.exp(x**2 / np.float32(-2 * (n * s) ** 2), dtype=np.float32)
        result = x if i == 0 else result[..., None] * x[(None,) * i]
    result = result.astype(np.float32)
    return np.maximum(result, np.float32(max(float(result.min()), 1e-3))).astype(np.float32)


def blend_grid(
    shape: Sequence[int],
    window: Sequence[int] | int,
    overlap: Sequence[float] | float = DEFAULT_OVERLAP,
    mode: str = "gaussian",
    sigma_scale: Sequence[float] | float = DEFAULT_SIGMA_SCALE,
    out_window: Sequence[int] | None = None,
    padding: str = "constant",
) -> WindowGrid:
    """MONAI's ``sliding_window_inference`` grid over an image of spatial ``shape`` (see the module doc).

    ``out_window``: the window's output size when it is smaller than its input (a valid-convolution net): the
    output is centred on the window and the Gaussian is over the output."""
    n = len(shape)
    window = tuple(int(w) for w in _as_tuple(window, n, "window"))
    overlaps = _as_tuple(overlap, n, "overlap")
    if any(w < 1 for w in window):
        raise ConfigError(f"window {window} must be at least 1 pixel per axis")
    if any(not 0 <= o < 1 for o in overlaps):
        raise ConfigError(f"overlap {overlaps} must be in [0, 1)")
    if mode not in BLEND_MODES:
        raise ConfigError(f"blend mode {mode!r} is not valid; choose one of: {', '.join(BLEND_MODES)}")
    if padding not in PADDING_MODES:
        raise ConfigError(f"padding {padding!r} is not valid; choose one of: {', '.join(PADDING_MODES)}")
    out_window = tuple(int(w) for w in (out_window or window))
    axes = []
    for size, w, ow, o in zip(shape, window, out_window, overlaps):
        if (w - ow) % 2 or ow > w or ow < 1:
            raise ShapeContractError(f"window output {ow} must be the input {w} less an even border")
        padded = max(int(size), w)
        pad_before = (padded - int(size)) // 2
        starts = dense_starts(padded, w, scan_interval(padded, w, float(o)))
        axes.append(AxisGrid(int(size), w, ow, (w - ow) // 2, tuple(s - pad_before for s in starts),
                             ((0, ow),) * len(starts)))
    return WindowGrid(tuple(axes), importance_map(out_window, mode, sigma_scale), padding, mode)


def crop_grid(
    shape: Sequence[int], window: Sequence[int] | int, halo: Sequence[int] | int, divisor: Sequence[int] | int = 1,
    padding: str = "constant",
) -> WindowGrid:
    """Crop-to-centre windows for a net whose output has its input's size and whose receptive radius is <=
    ``halo`` (see the module doc). Steps are ``window - 2 * halo`` rounded down to a multiple of ``divisor``;
    a window never reaches outside an image at least as large as it (the last one is moved back, as MONAI's are),
    so the image's border pixels see the net's own padding."""
    n = len(shape)
    window = tuple(int(w) for w in _as_tuple(window, n, "window"))
    halos = tuple(int(h) for h in _as_tuple(halo, n, "halo"))
    divisors = tuple(int(d) for d in _as_tuple(divisor, n, "divisor"))
    axes = []
    for size, w, h, d in zip(shape, window, halos, divisors):
        step = (w - 2 * h) // d * d
        if h < 0 or step < d:
            raise ConfigError(f"window {w} with a halo of {h} per side leaves no step that is a multiple of {d}; "
                              f"use a window of at least {2 * h + d}")
        padded = max(int(size), w)
        pad_before = (padded - int(size)) // 2
        starts = dense_starts(padded, w, step)
        if w < padded and any(s % d for s in starts):
            raise ShapeContractError(f"image size {size} is not a multiple of the divisor {d}: the last window would "
                                     "pool on another grid; pad the image to a multiple first")
        # Pixel p belongs to window i when cuts[i] <= p < cuts[i + 1]: halfway through each overlap.
        cuts = [0] + [(starts[i + 1] + starts[i] + w) // 2 for i in range(len(starts) - 1)] + [padded]
        keep = tuple((cuts[i] - starts[i], cuts[i + 1] - starts[i]) for i in range(len(starts)))
        axes.append(AxisGrid(int(size), w, w, 0, tuple(s - pad_before for s in starts), keep))
    return WindowGrid(tuple(axes), None, padding, "crop")


def valid_grid(shape: Sequence[int], window: Sequence[int] | int, contract) -> WindowGrid:
    """The exact overlap-tile of a valid-convolution net (``runtime/tiling.tile_axis`` per axis): mirror
    padding, window ``i`` keeps its output pixels ``[skip, skip + step)`` (image ``[i * step, (i + 1) * step)``)."""
    from deploy_unet.runtime.tiling import tile_axis

    n = len(shape)
    window = tuple(int(w) for w in _as_tuple(window, n, "window"))
    axes = []
    for size, w in zip(shape, window):
        t = tile_axis(int(size), w, contract)
        out = contract.output_size(w)
        b = contract.border_per_side
        starts = tuple(o - t.pad_before for o in t.origins)
        axes.append(AxisGrid(int(size), w, out, b, starts, ((t.skip, t.skip + t.step),) * t.count))
    return WindowGrid(tuple(axes), None, "reflect", "valid")


# --- running windows ----------------------------------------------------------------------------------------


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """nnU-Net's flips: every non-empty subset of ``axes`` (spatial axis numbers), by size then order."""
    axes = tuple(int(a) for a in axes)
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def run_windows(run_batch: RunBatch, windows: np.ndarray, mirror_axes: Sequence[int] = (),
                max_batch: int | None = None) -> np.ndarray:
    """Run (B, C, *window) windows, with their mirrored copies in the same runner calls (at most ``max_batch``
    inputs per call); outputs flipped back and averaged as nnU-Net does (sum of all, divided by their count)."""
    flips = mirror_combinations(mirror_axes)
    b = windows.shape[0]
    inputs = [windows] + [np.flip(windows, tuple(a + 2 for a in f)) for f in flips]
    stacked = np.ascontiguousarray(np.concatenate(inputs)) if flips else np.ascontiguousarray(windows)
    step = max_batch or stacked.shape[0]
    outs = [np.asarray(run_batch(stacked[i:i + step])) for i in range(0, stacked.shape[0], step)]
    out = outs[0] if len(outs) == 1 else np.concatenate(outs)
    if out.shape[0] != stacked.shape[0]:
        raise ShapeContractError(f"the runner gave {out.shape[0]} outputs for {stacked.shape[0]} windows")
    if not flips:
        return out.astype(np.float32, copy=False)
    total = out[:b].astype(np.float32)  # a copy: the sum below must not write into the runner's buffer
    for k, f in enumerate(flips, start=1):
        total += np.flip(out[k * b:(k + 1) * b], tuple(a + 2 for a in f))
    total /= np.float32(len(flips) + 1)
    return total


def read_padded(read: ReadBox, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int], padding: str) -> np.ndarray:
    """The input box [lo, hi) (may reach outside the image of spatial ``shape``) as (C, *box): what lies inside
    comes from ``read``, the rest is zeros (``constant``) or numpy's ``reflect`` of the image."""
    from deploy_unet.runtime.tiling import mirror_index

    if padding == "reflect":
        index = [mirror_index(np.arange(a, b), n) for a, b, n in zip(lo, hi, shape)]
        first = tuple(int(i.min()) for i in index)
        last = tuple(int(i.max()) + 1 for i in index)
        data = read(first, last)
        return data[(slice(None), *np.ix_(*[i - f for i, f in zip(index, first)]))]
    inner_lo = tuple(max(a, 0) for a in lo)
    inner_hi = tuple(min(b, n) for b, n in zip(hi, shape))
    data = read(inner_lo, inner_hi)
    pads = [(0, 0)] + [(il - a, b - ih) for a, b, il, ih in zip(lo, hi, inner_lo, inner_hi)]
    if any(p != (0, 0) for p in pads):
        data = np.pad(data, pads)
    return data


def blend_region(
    run_batch: RunBatch,
    read: ReadBox,
    grid: WindowGrid,
    starts: Sequence[int],
    stops: Sequence[int],
    *,
    sw_batch: int = DEFAULT_SW_BATCH,
    mirror_axes: Sequence[int] = (),
    max_batch: int | None = None,
) -> np.ndarray:
    """The blended (K, *region) float32 output of region [starts, stops) of the image (see the module doc).

    ``read(lo, hi)`` gives the input box as (C, *box) (called once, with the region's halo clipped to the image);
    windows run ``sw_batch`` at a time (their mirrored copies with them; ``max_batch`` caps one runner call)."""
    if sw_batch < 1:
        raise ConfigError(f"--sw-batch {sw_batch} must be >= 1")
    starts, stops = tuple(int(s) for s in starts), tuple(int(s) for s in stops)
    if len(starts) != len(grid.axes) or any(not 0 <= a < b <= n for a, b, n in zip(starts, stops, grid.shape)):
        raise ConfigError(f"region {starts}..{stops} is not inside the image {grid.shape}")
    per_axis = [ax.touching(a, b) for ax, a, b in zip(grid.axes, starts, stops)]
    lo, hi = grid.halo(starts, stops)
    data = read_padded(read, grid.shape, lo, hi, grid.padding)
    if data.ndim != len(starts) + 1:
        raise ShapeContractError(f"the reader gave shape {data.shape}; expected (C, *spatial) for {len(starts)}-D")
    data = data.astype(np.float32, copy=False)
    region = tuple(b - a for a, b in zip(starts, stops))
    acc: np.ndarray | None = None
    wsum = np.zeros(region, np.float32) if grid.weights is not None else None
    places = list(itertools.product(*per_axis))  # grid order (C order over axes)
    for first in range(0, len(places), sw_batch):
        group = places[first:first + sw_batch]
        windows = np.stack([
            data[(slice(None), *(slice(ax.in_starts[i] - o, ax.in_starts[i] - o + ax.window)
                                 for ax, i, o in zip(grid.axes, idx, lo)))]
            for idx in group
        ])
        outs = run_windows(run_batch, windows, mirror_axes, max_batch)
        expected = grid.out_window
        if outs.ndim != len(region) + 2 or tuple(outs.shape[2:]) != expected:
            raise ShapeContractError(f"a {'x'.join(map(str, grid.window))} window gave output shape "
                                     f"{tuple(outs.shape[1:])}; expected (K, {', '.join(map(str, expected))})")
        if acc is None:
            acc = np.zeros((outs.shape[1], *region), np.float32)
        for idx, out in zip(group, outs):
            dst, src = [], []
            for ax, i, a, b in zip(grid.axes, idx, starts, stops):
                base = ax.in_starts[i] + ax.shift
                p0 = max(base + ax.keep[i][0], a)
                p1 = min(base + ax.keep[i][1], b)
                dst.append(slice(p0 - a, p1 - a))
                src.append(slice(p0 - base, p1 - base))
            dst_t, src_t = tuple(dst), tuple(src)
            if grid.weights is None:
                acc[(slice(None), *dst_t)] = out[(slice(None), *src_t)]
            else:
                w = grid.weights[src_t]
                acc[(slice(None), *dst_t)] += out[(slice(None), *src_t)] * w
                wsum[dst_t] += w
    if wsum is not None:
        acc /= wsum
    return acc


def array_reader(image: np.ndarray) -> ReadBox:
    """``read`` over an in-memory (C, *spatial) array."""

    def read(lo, hi):
        return image[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))]

    return read


def sliding_window(
    run_batch: RunBatch, image: np.ndarray, grid: WindowGrid, *, sw_batch: int = DEFAULT_SW_BATCH,
    mirror_axes: Sequence[int] = (), max_batch: int | None = None,
) -> np.ndarray:
    """Whole-image sliding window of (N, C, *spatial) ``image`` -> (N, K, *spatial): ``blend_region`` over one
    region covering each image."""
    if image.ndim != len(grid.axes) + 2 or tuple(image.shape[2:]) != grid.shape:
        raise ShapeContractError(f"image shape {image.shape} does not match the grid's (N, C, *{grid.shape})")
    zeros, shape = (0,) * len(grid.axes), grid.shape
    return np.stack([
        blend_region(run_batch, array_reader(item), grid, zeros, shape, sw_batch=sw_batch,
                     mirror_axes=mirror_axes, max_batch=max_batch)
        for item in image
    ])


def chunk_regions(shape: Sequence[int], chunk: Sequence[int] | int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The image cut into chunks of ``chunk`` pixels per axis (the last ones smaller), in C order."""
    chunk = tuple(int(c) for c in _as_tuple(chunk, len(shape), "chunk"))
    if any(c < 1 for c in chunk):
        raise ConfigError(f"chunk {chunk} must be at least 1 pixel per axis")
    ranges = [[(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(shape, chunk)]
    return [(tuple(r[0] for r in combo), tuple(r[1] for r in combo)) for combo in itertools.product(*ranges)]
