"""The streamed large-image check of the GPU session (benchmarks/gpu_session.sh cuda): make a tiled TIFF scene, and
compare two streamed masks of it (fp16 against fp32 on the GPU torch runner).

    python benchmarks/gpu_stream_check.py make big.tif --size 8192
    python benchmarks/gpu_stream_check.py compare fp32/big.mask.tif fp16/big.mask.tif

The scene is smooth shading with round blobs, made one band of tiles at a time (bounded memory), so the net has edges
to segment and zlib tiles stay small. Needs numpy and tifffile (both in the GPU image).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def scene_band(y0: int, rows: int, width: int) -> np.ndarray:
    """Rows ``y0 .. y0 + rows`` of the scene, (rows, width, 3) uint8."""
    yy, xx = np.mgrid[y0 : y0 + rows, 0:width].astype(np.float32)
    shade = 0.5 + 0.25 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    blobs = ((xx % 700 - 350) ** 2 + (yy % 500 - 250) ** 2) < 120.0**2
    image = np.clip(np.stack([shade, shade * 0.8, 1 - shade], -1) + 0.3 * blobs[..., None], 0, 1)
    return (image * 255).astype(np.uint8)


def make(path: str, size: int, tile: int = 512) -> None:
    import tifffile

    def tiles():  # tifffile takes a tiled image as an iterator of tiles, row by row
        for y in range(0, size, tile):
            band = scene_band(y, min(tile, size - y), size)
            for x in range(0, size, tile):
                yield band[:, x : x + tile]

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                     bigtiff=True, photometric="rgb")
    print(f"wrote {path}: {size}x{size} RGB, {tile}x{tile} zlib tiles")


def compare(reference: str, candidate: str) -> float:
    import tifffile

    a, b = tifffile.imread(reference), tifffile.imread(candidate)
    if a.shape != b.shape:
        raise SystemExit(f"error: mask shapes differ: {reference} {a.shape}, {candidate} {b.shape}")
    equal = float(np.mean(a == b))
    print(f"{candidate} vs {reference}: {100 * equal:.4f}% of {a.size} pixels equal; "
          f"class counts {np.bincount(a.ravel()).tolist()} vs {np.bincount(b.ravel()).tolist()}")
    return equal


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the tiled TIFF scene")
    m.add_argument("path")
    m.add_argument("--size", type=int, default=8192)
    c = sub.add_parser("compare", help="share of equal pixels of two masks")
    c.add_argument("reference")
    c.add_argument("candidate")
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.path, args.size)
    else:
        compare(args.reference, args.candidate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
