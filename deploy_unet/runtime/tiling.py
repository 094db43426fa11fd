"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): a full-size mask from a net whose output is
smaller than its input, for an image of any size.

A valid-convolution UNet loses ``border`` pixels (``border // 2`` per side): a tile of a valid input size
``T`` gives the ``T - border`` pixels at its centre. So the image is mirror-padded (about the border per
side, plus enough at the bottom/right to fill whole tiles), tiles start every ``step`` pixels, their
outputs are placed side by side and the result is cropped to the image size. ``step`` and the padding are
multiples of the net's divisor (2**depth), so every tile pools on the same grid as a whole-image run.

Why stitching is exact: output pixel ``p`` of a tile sees exactly the padded-image window that pixel
``p`` of a single whole-image run sees, on the same pooling grid (valid convs, aligned pools, centred skip
crops), so both compute the same numbers from the same inputs. Only the kernels' summation order can
differ (a backend may pick another algorithm for another size), hence "bit-for-bit on ONNX Runtime fp32
CPU (measured), within tolerance elsewhere". For a padded net (border 0) tiling works too, but its tiles see zero padding at their edges,
so it only approximates the whole-image run.

This is the one implementation: ``Runner.infer`` (``tile=True``), ``run_onnx(tile=True)``, validate and
bench all come here; ``cpp/src/preprocess.cpp`` mirrors the geometry (``tile_axis``) for ``unet_infer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.shapes import ShapeContract

DEFAULT_TILE_BATCH = 8  # tiles per runner call when the backend states no maximum
FALLBACK_TILE_OUTPUT = 64  # output pixels per tile when nothing states a tile size


@dataclass(frozen=True)
class TileAxis:
    """The tiling of one spatial axis: ``count`` tiles of ``tile`` input pixels every ``step`` pixels.

    Tile ``i`` reads the padded image from ``i * step`` and writes its output pixels ``[skip, skip + step)``
    to image pixels ``[i * step, (i + 1) * step)``.
    """

    size: int  # image pixels along the axis
    tile: int  # tile input size (a valid input size)
    step: int  # tile stride: a multiple of the contract's divisor, <= tile output - skip
    skip: int  # tile output pixels dropped before the ``step`` kept ones (pooling-phase alignment)
    count: int
    pad_before: int  # mirror padding at the top/left: border/2 rounded up to a multiple of the divisor
    pad_after: int  # at the bottom/right: what the last tile reads beyond the image

    @property
    def origins(self) -> list[int]:
        """Tile starts in the padded image; the same numbers are where their kept outputs start in the image."""
        return [i * self.step for i in range(self.count)]


def tile_axis(size: int, tile: int, contract: ShapeContract) -> TileAxis:
    """Plan one axis (``size`` >= 1 image pixels, ``tile`` a valid input size of ``contract``).

    Pooling makes a net equivariant only to shifts by its divisor D (2**depth): every tile must start at
    an image position that is a multiple of D, as a whole-image run does, or tiles compute with other
    pooling phases and disagree with each other and with it. So the top/left padding is the per-side
    border b rounded up to a multiple of D (P), each tile skips its first P - b output pixels, and the
    stride is the largest multiple of D that the rest of the tile output covers.
    """
    if size < 1:
        raise ShapeContractError(f"image size {size} must be at least 1 pixel to tile")
    out = contract.output_size(tile)
    d, b = contract.divisor, contract.border_per_side
    pad_before = -(-b // d) * d
    skip = pad_before - b
    step = (out - skip) // d * d
    if step < d:
        raise ShapeContractError(
            f"tile {tile} gives {out} output pixels, too few to advance by a multiple of {d} after aligning "
            f"the pooling grid; choose a --tile-size of at least {contract.smallest_input_for_output(skip + d)}"
        )
    count = -(-size // step)
    pad_after = (count - 1) * step + tile - pad_before - size
    return TileAxis(size, tile, step, skip, count, pad_before, pad_after)


def mirror_index(i: np.ndarray | int, n: int):
    """The source index numpy's ``reflect`` padding reads for position ``i`` (any integer) of an axis of
    ``n`` pixels: period 2n - 2, the edge pixel not repeated; pads wider than the image keep reflecting."""
    if n == 1:
        return np.zeros_like(i) if isinstance(i, np.ndarray) else 0
    period = 2 * n - 2
    j = np.mod(i, period)
    return np.where(j < n, j, period - j) if isinstance(j, np.ndarray) else (j if j < n else period - j)


def mirror_pad(array: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Reflect-pad the last two dims (numpy ``reflect``, any width, even wider than the image)."""
    h, w = array.shape[-2:]
    r = mirror_index(np.arange(-rows[0], h + rows[1]), h)
    c = mirror_index(np.arange(-cols[0], w + cols[1]), w)
    return array[..., r[:, None], c[None, :]]


def resolve_tile_size(
    contract: ShapeContract, tile_size: Sequence[int] | int | None, export_shape: Sequence[int] | None = None
) -> tuple[int, int]:
    """``tile_size`` (int or (H, W)); else the export size from the metadata; else a small valid size."""
    if tile_size is None and export_shape and len(export_shape) == 4:
        tile_size = (int(export_shape[2]), int(export_shape[3]))
    if tile_size is None:
        size = contract.smallest_input_for_output(max(contract.border, FALLBACK_TILE_OUTPUT))
        tile_size = (size, size)
    if isinstance(tile_size, int):
        tile_size = (tile_size, tile_size)
    th, tw = (int(v) for v in tile_size)
    contract.validate((th, tw), pad_hint="choose a valid --tile-size")
    return th, tw


def tile_infer(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    image: np.ndarray,
    contract: ShapeContract,
    tile_size: tuple[int, int],
    max_batch: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``run`` (N, C, th, tw) -> {name: (N, K, th - border, tw - border)} over tiles of ``image``
    (N, C, H, W), at most ``max_batch`` tiles per call, and stitch full-size (N, K, H, W) outputs."""
    if image.ndim != 4:
        raise ShapeContractError(f"tiling needs NCHW input, got shape {image.shape}")
    batch = max_batch or DEFAULT_TILE_BATCH
    if batch < 1:
        raise ConfigError(f"tile batch {batch} must be >= 1")
    n, c, h, w = image.shape
    rows, cols = tile_axis(h, tile_size[0], contract), tile_axis(w, tile_size[1], contract)
    padded = mirror_pad(image, (rows.pad_before, rows.pad_after), (cols.pad_before, cols.pad_after))
    # Tile k is (image i, row origin y, column origin x); they are run in chunks of ``batch``.
    places = [(i, y, x) for i in range(n) for y in rows.origins for x in cols.origins]
    stitched: dict[str, np.ndarray] = {}
    for start in range(0, len(places), batch):
        chunk = places[start:start + batch]
        tiles = np.stack([padded[i, :, y:y + rows.tile, x:x + cols.tile] for i, y, x in chunk])
        outputs = run(np.ascontiguousarray(tiles))
        expected = (contract.output_size(rows.tile), contract.output_size(cols.tile))
        for name, out in outputs.items():
            if out.ndim != 4 or out.shape[-2:] != expected:
                raise ShapeContractError(
                    f"output {name!r} of a {rows.tile}x{cols.tile} tile has shape {out.shape}; the contract says "
                    f"{expected[0]}x{expected[1]}: the model's metadata does not describe this net"
                )
            if name not in stitched:
                stitched[name] = np.empty((n, out.shape[1], rows.count * rows.step, cols.count * cols.step), out.dtype)
            kept = out[..., rows.skip:rows.skip + rows.step, cols.skip:cols.skip + cols.step]
            for (i, y, x), tile_out in zip(chunk, kept):
                stitched[name][i, :, y:y + rows.step, x:x + cols.step] = tile_out
    return {name: np.ascontiguousarray(out[..., :h, :w]) for name, out in stitched.items()}
