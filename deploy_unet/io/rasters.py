"""Large 2D rasters read by region, and masks written chunk by chunk (issue 26).

Readers (``kind="raster"``, registered with ``io.base``; ``open(path)`` gives a ``LazyImage`` whose
``read_region`` decodes only the tiles or strips the region touches):

- **TIFF** (``tifffile``): tiled or striped, classic or BigTIFF, any compression tifffile decodes; OME-TIFF (level
  0 of a pyramid; the planes of a ``CYX`` series stacked as channels; physical pixel sizes from the OME-XML);
  GeoTIFF (its georeferencing tags carried in ``meta["geotiff"]`` and written back onto the mask). It claims a
  ``.tif`` that is tiled, BigTIFF, OME, GeoTIFF or over ``RASTER_PIXELS`` pixels; smaller plain TIFFs stay with
  Pillow (``io.images``).
- **Zarr / OME-Zarr** (``zarr``, 2.18 or 3: ``ZarrAdapter``): a ``.zarr`` array, or a group with OME-NGFF
  ``multiscales`` (0.4 in ``.zattrs``, 0.5 under ``ome``): level 0, axes read from the metadata (``c`` becomes the
  channel axis, other non-spatial axes must be 1), physical sizes from its scale transform.

Writers (``MaskStore``): the mask as an **OME-Zarr label image** (``NAME.mask.ome.zarr``: NGFF 0.4, Zarr format 2
so every reader of either library opens it, ``image-label`` colours, the input's physical sizes and GeoTIFF
tags in the attributes), one storage chunk per output chunk: each chunk written once and whole (the Zarr
libraries write a chunk to a temporary file and rename it), so a chunk file exists only when complete and
``--resume`` finds what is missing; probabilities optionally as a float16 Zarr array (``NAME.probs.zarr``,
K x H x W). ``to_tiff`` then writes a tiled BigTIFF (``NAME.mask.tif``) from the chunks, strip of chunks by
strip, with the GeoTIFF tags and OME physical sizes, atomically.

Imports NumPy and the standard library; tifffile and zarr lazily (the ``large`` extra). Never a runner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.io.base import (
    Geometry,
    LazyImage,
    Reader,
    atomic_files,
    missing_module,
    native,
    register_reader,
)

RASTER_PIXELS = 64 * 1024 * 1024  # a plain .tif above this many pixels is read by region (Pillow refuses ~89M)
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8")
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
GEOTIFF_TAGS = {33550: "ModelPixelScaleTag", 33922: "ModelTiepointTag", 34264: "ModelTransformationTag",
                34735: "GeoKeyDirectoryTag", 34736: "GeoDoubleParamsTag", 34737: "GeoAsciiParamsTag"}
MASK_TILE = 512  # tile of the BigTIFF mask


# --- TIFF -------------------------------------------------------------------------------------------------


class _TiffRegions:
    """(H, W[, C]) array-like over a TIFF series' level 0: slicing decodes only the segments it touches."""

    def __init__(self, path: Path):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        try:
            series = self._tif.series[0]
            level = series.levels[0] if getattr(series, "levels", None) else series
            pages = [p for p in level.pages if p is not None]
            page = pages[0]
            axes = level.axes
            if page.planarconfig != 1 and page.samplesperpixel > 1:
                raise ArtifactError(f"{path} stores its samples in separate planes (planar configuration 2); "
                                    "rewrite it interleaved (tifffile.imwrite(..., planarconfig='contig'))")
            self.height, self.width = int(page.imagelength), int(page.imagewidth)
            planes = len(pages)
            per_page = int(page.samplesperpixel)
            if page.imagedepth != 1 or planes * per_page > 4 or (planes > 1 and per_page > 1):
                raise ArtifactError(f"{path} is a {axes} series of shape {tuple(level.shape)}: predict reads 2D "
                                    "images of up to 4 channels (grey, RGB, RGBA or a CYX stack)")
            self._pages = pages
            self.channels = planes * per_page
            self.dtype = np.dtype(page.dtype)
            self.axes = axes
            self.page = page
        except Exception:
            self._tif.close()
            raise

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) + ((self.channels,) if self.channels > 1 else ())

    def close(self) -> None:
        self._tif.close()

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = _slice_range(key[0] if len(key) > 0 else slice(None), self.height)
        cols = _slice_range(key[1] if len(key) > 1 else slice(None), self.width)
        planes = [self._read_page(p, rows, cols) for p in self._pages]
        out = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=-1)
        out = out if self.channels > 1 else out[..., 0]
        rest = key[2:]
        return out[(slice(None), slice(None), *rest)] if rest else out

    def _read_page(self, frame, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        page = frame.keyframe  # a TiffFrame (OME planes after the first) decodes through its key page
        y0, y1 = rows
        x0, x1 = cols
        out = np.zeros((y1 - y0, x1 - x0, int(page.samplesperpixel)), self.dtype)
        if y1 <= y0 or x1 <= x0:
            return out
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
            nx = -(-self.width // tw)
            index = [ty * nx + tx for ty in range(y0 // th, (y1 - 1) // th + 1)
                     for tx in range(x0 // tw, (x1 - 1) // tw + 1)]
        else:
            rps = min(int(page.rowsperstrip or self.height), self.height)
            index = list(range(y0 // rps, (y1 - 1) // rps + 1))
        fh = self._tif.filehandle
        for i in index:
            offset, count = frame.dataoffsets[i], frame.databytecounts[i]
            data = None
            if offset and count:
                fh.seek(offset)
                data = fh.read(count)
            segment, (_s, _d, sy, sx, _c), shape = page.decode(data, i, jpegtables=page.jpegtables)
            if segment is None:  # an empty tile: zeros
                continue
            segment = segment.reshape(shape)[0]  # (h, w, samples)
            h, w = min(shape[1], self.height - sy), min(shape[2], self.width - sx)
            a, b = max(y0, sy), min(y1, sy + h)
            c, d = max(x0, sx), min(x1, sx + w)
            if a < b and c < d:
                out[a - y0:b - y0, c - x0:d - x0] = segment[a - sy:b - sy, c - sx:d - sx]
        return out


def _slice_range(s, n: int) -> tuple[int, int]:
    if isinstance(s, (int, np.integer)):
        return int(s), int(s) + 1
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError("region reads take contiguous slices")
    return start, max(stop, start)


def _ome_physical(ome_xml: str | None) -> dict[str, Any]:
    """PhysicalSizeY/X (and units) of the first image of an OME-XML document."""
    if not ome_xml:
        return {}
    found = {}
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome_xml)
    if pixels:
        for key in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeXUnit", "PhysicalSizeYUnit"):
            m = re.search(rf'\b{key}="([^"]*)"', pixels.group(0))
            if m:
                found[key] = float(m.group(1)) if not key.endswith("Unit") else m.group(1)
    return found


def _geotiff_tags(page) -> dict[int, tuple[int, int, Any]]:
    """The page's GeoTIFF tags as tifffile ``extratags`` entries: code -> (TIFF type, count, value)."""
    tags = {}
    for code in GEOTIFF_TAGS:
        tag = page.tags.get(code)
        if tag is not None:
            value = tag.value
            if isinstance(value, np.ndarray):
                value = tuple(value.tolist())
            tags[code] = (int(tag.dtype), int(tag.count), value)
    return tags


class TiffRasterReader(Reader):
    """Tiled/striped TIFF, BigTIFF, OME-TIFF (level 0) and GeoTIFF, read by region with tifffile."""

    name = "tiff-raster"
    suffixes = TIFF_SUFFIXES
    kind = "raster"
    extra = "large"
    priority = 10  # ahead of Pillow for the files it claims

    def missing(self) -> str | None:
        return missing_module("tifffile", "large")

    def claims(self, path: Path) -> bool:
        if self.missing():
            return full_name_is_ome(path)  # an OME-TIFF is named as one: say what to install
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return bool(tif.is_bigtiff or tif.is_ome or page.is_tiled or tif.is_geotiff
                            or int(page.imagelength) * int(page.imagewidth) > RASTER_PIXELS)
        except Exception:
            return False

    def open(self, path: Path) -> LazyImage:
        try:
            regions = _TiffRegions(Path(path))
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"cannot read {path} as a TIFF ({str(exc).splitlines()[0] or type(exc).__name__})"
                                ) from None
        tif = regions._tif
        physical = _ome_physical(tif.ome_metadata) if tif.is_ome else {}
        meta = {"suffix": _suffix(path, TIFF_SUFFIXES), "axes": regions.axes, "bigtiff": bool(tif.is_bigtiff),
                "tiled": bool(regions.page.is_tiled), "ome": physical, "geotiff": _geotiff_tags(regions.page)}
        spacing = (physical.get("PhysicalSizeY"), physical.get("PhysicalSizeX"))
        geometry = Geometry(spacing=tuple(spacing)) if None not in spacing else Geometry()
        return LazyImage(regions, "tiff-raster", Path(path), geometry, channels=regions.channels > 1, meta=meta,
                         close=regions.close)

    def read(self, path: Path):
        with self.open(path) as lazy:
            return lazy.read()


def full_name_is_ome(path: Path) -> bool:
    return Path(path).name.lower().endswith((".ome.tif", ".ome.tiff"))


def _suffix(path, suffixes) -> str:
    name = Path(path).name.lower()
    return max((s for s in suffixes if name.endswith(s)), key=len, default=Path(path).suffix.lower())


# --- Zarr (2.18 and 3 behind one adapter) ----------------------------------------------------------------


class ZarrAdapter:
    """The few Zarr calls this module makes, for zarr-python 2.18 and 3.x alike. Arrays are written in Zarr
    format 2 with '/' chunk keys (both libraries read and write it; chunk ``(i, j)`` is the file ``i/j``)."""

    def __init__(self):
        try:
            import zarr
        except ImportError:
            # A streamed image keeps its job (and an ome-zarr mask) in a Zarr store, even when the mask ends as TIFF.
            raise MissingDependencyError("streaming a large image needs zarr (its chunk store, whatever "
                                         "--mask-format): pip install 'deploy-unet[large]'") from None
        self.zarr = zarr
        self.v3 = int(zarr.__version__.split(".")[0]) >= 3
        if self.v3 and zarr.config.get("threading.max_workers") is None:
            # zarr 3 decodes on a pool of threads, each with its own malloc arena that keeps what it freed: over
            # hundreds of chunks the process grows with the image (measured: +15% from 3000^2 to 6000^2). One
            # decoding thread keeps peak memory flat; set ZARR_THREADING__MAX_WORKERS to choose otherwise.
            zarr.config.set({"threading.max_workers": 1})

    def open_group(self, path: Path, mode: str = "r"):
        if self.v3:
            return self.zarr.open_group(str(path), mode=mode, **({"zarr_format": 2} if mode == "w" else {}))
        return self.zarr.open_group(str(path), mode=mode)

    def open(self, path: Path):
        return self.zarr.open(str(path), mode="r")

    def create_array(self, group, name: str, shape, chunks, dtype, fill_value=0):
        if self.v3:
            return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                      chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True,
                                      config={"write_empty_chunks": True})
        return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                    dimension_separator="/", write_empty_chunks=True, overwrite=True)

    def open_array(self, path: Path, mode: str = "r+"):
        return self.zarr.open_array(str(path), mode=mode)

    @staticmethod
    def is_array(node) -> bool:
        return hasattr(node, "shape") and hasattr(node, "dtype") and not hasattr(node, "group_keys")


def _ngff(attrs: dict) -> dict:
    """OME-NGFF metadata: 0.5 keeps it under ``ome``, 0.4 at the top."""
    return dict(attrs.get("ome") or attrs)


class ZarrRasterReader(Reader):
    """A Zarr array or OME-Zarr image (level 0), read by region."""

    name = "zarr"
    suffixes = ZARR_SUFFIXES
    kind = "raster"
    extra = "large"
    priority = 10

    def missing(self) -> str | None:
        return missing_module("zarr", "large")

    def open(self, path: Path) -> LazyImage:
        z = ZarrAdapter()
        try:
            node = z.open(path)
        except Exception as exc:
            raise ArtifactError(f"cannot open {path} as Zarr ({str(exc).splitlines()[0] or type(exc).__name__})"
                                ) from None
        attrs = dict(node.attrs)
        spacing = None
        axes_names: list[str] | None = None
        if not z.is_array(node):
            multiscales = _ngff(attrs).get("multiscales")
            if not multiscales:
                arrays = list(node.array_keys())
                if len(arrays) != 1:
                    raise ArtifactError(f"{path} is a Zarr group without OME-NGFF multiscales and with "
                                        f"{len(arrays)} arrays; point at one array (path/to/array.zarr)")
                node = node[arrays[0]]
            else:
                first = multiscales[0]
                dataset = first["datasets"][0]
                axes_names = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])] or None
                for t in dataset.get("coordinateTransformations", []):
                    if t.get("type") == "scale":
                        spacing = tuple(float(v) for v in t["scale"])
                node = node[dataset["path"]]
        data, channels, spacing = _zarr_view(node, axes_names, spacing, path)
        meta = {"suffix": _suffix(path, ZARR_SUFFIXES), "axes": axes_names, "attrs": _json_only(attrs),
                "geotiff": _geotiff_from_attrs(attrs)}
        return LazyImage(data, "zarr", Path(path), Geometry(spacing=spacing), channels=channels, meta=meta)

    def read(self, path: Path):
        return self.open(path).read()

    def stem(self, path) -> str:
        name = Path(path).name
        return name[: -len(_suffix(path, ZARR_SUFFIXES))] or name


class _Transposed:
    """A (..., C, Y, X) or (Y, X[, C]) Zarr array seen as (H, W[, C]), singleton axes dropped."""

    def __init__(self, array, order: tuple[int, ...], squeeze: tuple[int, ...]):
        self.array, self.order, self.squeeze = array, order, squeeze
        shape = [int(s) for i, s in enumerate(array.shape) if i not in squeeze]
        self.shape = tuple(shape[i] for i in order)
        self.dtype = array.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.shape) - len(key))
        inverse = [0] * len(self.order)
        for k, o in enumerate(self.order):
            inverse[o] = k
        kept = [key[inverse[i]] for i in range(len(self.order))]
        full, it = [], iter(kept)
        for i in range(self.array.ndim):
            full.append(0 if i in self.squeeze else next(it))
        return native(np.asarray(self.array[tuple(full)])).transpose(self.order)


def _zarr_view(array, axes_names, spacing, path):
    shape = tuple(int(s) for s in array.shape)
    names = axes_names or (["y", "x"] if len(shape) == 2 else ["y", "x", "c"] if len(shape) == 3 and shape[2] <= 4
                           else ["c", "y", "x"] if len(shape) == 3 else [f"a{i}" for i in range(len(shape))])
    if len(names) != len(shape) or "y" not in names or "x" not in names:
        raise ArtifactError(f"{path}: array of shape {shape} with axes {names}; predict reads y, x and an optional "
                            "c axis (OME-NGFF axes names)")
    squeeze = tuple(i for i, n in enumerate(names) if n not in ("y", "x", "c"))
    if any(shape[i] != 1 for i in squeeze):
        raise ArtifactError(f"{path} has axes {names} of shape {shape}: only one 2D plane is read; the "
                            f"{', '.join(names[i] for i in squeeze)} axes must have size 1")
    kept = [n for i, n in enumerate(names) if i not in squeeze]
    order = tuple(kept.index(n) for n in ("y", "x", "c") if n in kept)
    if "c" in kept and shape[names.index("c")] > 4:
        raise ArtifactError(f"{path} has {shape[names.index('c')]} channels; predict reads 1 to 4")
    if spacing is not None:
        spacing = (spacing[names.index("y")], spacing[names.index("x")])
    channels = "c" in kept
    view = array if order == tuple(range(len(kept))) and not squeeze else _Transposed(array, order, squeeze)
    return view, channels, spacing


def _json_only(attrs: dict) -> dict:
    try:
        return json.loads(json.dumps(attrs))
    except (TypeError, ValueError):
        return {}


def _geotiff_from_attrs(attrs: dict) -> dict:
    carried = (attrs.get("deploy_unet") or {}).get("geotiff") or {}
    return {int(k): tuple(v) for k, v in carried.items()}


def is_raster_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read by region: a ``.zarr`` store, or a TIFF the raster reader claims."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(ZARR_SUFFIXES) and p.exists():
        return True
    if name.endswith(TIFF_SUFFIXES) and p.is_file():
        reader = TiffRasterReader()
        return reader.claims(p) and reader.missing() is None
    return False


# --- the mask store ---------------------------------------------------------------------------------------


def _label_colours(num_classes: int) -> list[dict]:
    """The VOC colour map (the palette of the project's mask PNGs), as NGFF ``image-label`` colours."""
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append({"label-value": i, "rgba": [r, g, b, 255]})
    return colours


class MaskStore:
    """The mask (and optional probabilities) of one image, written chunk by chunk into an OME-Zarr label image.

    ``create`` lays out the store (``NAME.mask.ome.zarr``: group metadata, array ``0`` with one storage chunk per
    output chunk); ``write_chunk`` stores one chunk, whole; ``has_chunk`` says whether it is on disk (what
    ``--resume`` and a recomputed task check); ``finish`` marks the store complete. ``settings`` (the artifact and
    the window grid) are kept in the attributes: a store made with other settings is not resumed."""

    def __init__(self, path: Path, probs_path: Path | None = None):
        self.path = Path(path)
        self.probs_path = Path(probs_path) if probs_path else None
        self._array = None
        self._probs = None

    # -- layout ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, shape: tuple[int, int], chunk: tuple[int, int], num_classes: int,
               like: LazyImage | None = None, settings: dict | None = None, probs: bool = False,
               probs_path: Path | None = None) -> MaskStore:
        z = ZarrAdapter()
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        group = z.open_group(path, mode="w")
        dtype = "uint8" if num_classes <= 256 else "int32"
        z.create_array(group, "0", shape, chunk, dtype)
        spacing = like.geometry.spacing if like is not None and like.geometry.spacing else None
        unit = (like.meta.get("ome") or {}).get("PhysicalSizeXUnit") if like is not None else None
        axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        if spacing and unit:
            for a in axes:
                a["unit"] = _ngff_unit(unit)
        source = os.fspath(like.path) if like is not None and like.path is not None else None
        geotiff = like.meta.get("geotiff") if like is not None else None
        group.attrs.update({
            "multiscales": [{"version": "0.4", "name": "mask", "axes": axes, "datasets": [{
                "path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [float(s) for s in (spacing or (1.0, 1.0))]}]}]}],
            "image-label": {"version": "0.4", "colors": _label_colours(min(num_classes, 256)),
                            **({"source": {"image": source}} if source else {})},
            "deploy_unet": {"complete": False, "settings": _json_only(settings or {}),
                            "geotiff": {str(k): list(v) for k, v in (geotiff or {}).items()},
                            "ome": (like.meta.get("ome") or {}) if like is not None else {},
                            "num_classes": int(num_classes)},
        })
        if probs:
            probs_path = Path(probs_path)
            if probs_path.exists():
                shutil.rmtree(probs_path)
            pgroup = z.open_group(probs_path, mode="w")
            k = max(int(num_classes), 1)
            z.create_array(pgroup, "probs", (k, *shape), (k, *chunk), "float16")
            pgroup.attrs.update({"deploy_unet": {"axes": ["c", "y", "x"], "mask": path.name}})
        return cls(path, probs_path if probs else None)

    @classmethod
    def open_existing(cls, path: Path, probs_path: Path | None = None) -> MaskStore | None:
        """The store at ``path`` when it is one of ours (else None)."""
        try:
            attrs = dict(ZarrAdapter().open_group(path, mode="r").attrs)
        except Exception:
            return None
        return cls(path, probs_path) if "deploy_unet" in attrs else None

    @property
    def attrs(self) -> dict:
        return dict(ZarrAdapter().open_group(self.path, mode="r").attrs)

    @property
    def array(self):
        if self._array is None:
            self._array = ZarrAdapter().open_array(self.path / "0", mode="r+")
        return self._array

    @property
    def probs(self):
        if self._probs is None and self.probs_path is not None:
            self._probs = ZarrAdapter().open_array(self.probs_path / "probs", mode="r+")
        return self._probs

    # -- chunks ------------------------------------------------------------------------------------------
    def chunk_file(self, lo: Sequence[int]) -> Path:
        chunks = self.array.chunks
        return self.path / "0" / "/".join(str(int(a) // int(c)) for a, c in zip(lo, chunks))

    def has_chunk(self, lo: Sequence[int]) -> bool:
        probs_ok = True
        if self.probs_path is not None:
            chunks = self.probs.chunks
            probs_ok = (self.probs_path / "probs" / "/".join(
                ["0"] + [str(int(a) // int(c)) for a, c in zip(lo, chunks[1:])])).exists()
        return self.chunk_file(lo).exists() and probs_ok

    def write_chunk(self, lo: Sequence[int], mask: np.ndarray, probs: np.ndarray | None = None) -> None:
        """Store the mask chunk at ``lo`` (a chunk-grid corner; the chunk whole). The probabilities first, the mask
        last: a mask chunk on disk means the chunk is complete."""
        region = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(lo, mask.shape))
        if probs is not None and self.probs is not None:
            self.probs[(slice(None), *region)] = probs.astype(np.float16)
        self.array[region] = mask

    def read_chunk(self, lo: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        return np.asarray(self.array[tuple(slice(int(a), int(a) + int(n)) for a, n in zip(lo, shape))])

    def finish(self, summary: dict | None = None) -> None:
        group = ZarrAdapter().open_group(self.path, mode="r+")
        info = dict(group.attrs["deploy_unet"])
        info["complete"] = True
        if summary:
            info["summary"] = _json_only(summary)
        group.attrs["deploy_unet"] = info

    # -- the BigTIFF form --------------------------------------------------------------------------------
    def to_tiff(self, path: Path, tile: int = MASK_TILE) -> Path:
        """The finished mask as a tiled BigTIFF at ``path``, written strip of chunks by strip (memory: one row of
        chunks), with the GeoTIFF tags and the OME physical sizes of the input, atomically."""
        import tifffile

        array = self.array
        h, w = (int(s) for s in array.shape)
        info = self.attrs["deploy_unet"]
        geotiff = {int(k): v for k, v in (info.get("geotiff") or {}).items()}
        extratags = [(code, dtype, count, tuple(value) if isinstance(value, list) else value, True)
                     for code, (dtype, count, value) in geotiff.items()]
        ome = info.get("ome") or {}
        step = int(array.chunks[0])
        step = max(step // tile, 1) * tile  # rows read at a time: whole tiles

        def tiles():
            for y in range(0, h, step):
                rows = np.asarray(array[y:min(y + step, h)])
                for ty in range(0, rows.shape[0], tile):
                    for tx in range(0, w, tile):
                        block = np.zeros((tile, tile), array.dtype)
                        part = rows[ty:ty + tile, tx:tx + tile]
                        block[:part.shape[0], :part.shape[1]] = part
                        yield block

        metadata = {k: v for k, v in ome.items() if k.startswith("PhysicalSize")} or None
        with atomic_files(path) as tmp:
            tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=array.dtype, tile=(tile, tile), bigtiff=True,
                             compression="zlib", extratags=extratags, photometric="minisblack",
                             metadata={"axes": "YX", **metadata} if metadata else None, ome=bool(metadata))
        return Path(path)


def _ngff_unit(unit: str) -> str:
    return {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter", "m": "meter",
            "cm": "centimeter"}.get(unit, unit)


def chunk_grid(shape: Sequence[int], chunk: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The storage chunks of a ``shape`` array, C order: (lo, hi) corners."""
    import itertools

    ranges = [[(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(shape, chunk)]
    return [(tuple(r[0] for r in combo), tuple(r[1] for r in combo)) for combo in itertools.product(*ranges)]


def check_chunk(chunk: Sequence[int] | int) -> tuple[int, int]:
    chunk = (int(chunk),) * 2 if isinstance(chunk, (int, np.integer)) else tuple(int(c) for c in chunk)
    if len(chunk) != 2 or min(chunk) < 16:
        raise ConfigError(f"--chunk {chunk} must be one or two sizes of at least 16 pixels")
    return chunk  # type: ignore[return-value]


register_reader(TiffRasterReader())
register_reader(ZarrRasterReader())

__all__ = ["GEOTIFF_TAGS", "MaskStore", "RASTER_PIXELS", "TiffRasterReader", "ZarrAdapter", "ZarrRasterReader",
           "check_chunk", "chunk_grid", "is_raster_path"]
