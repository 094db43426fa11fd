"""Readers and writers chosen by suffix, in the manner of MONAI's ``ImageReader`` classes.

One reader per format (``io/images.py``: PNG/JPEG/TIFF/BMP via Pillow and ``.npy``; ``io/volumes.py``: NIfTI,
NRRD, MHA/MHD, DICOM series; the large-raster readers: tiled TIFF, Zarr). Each states the suffixes it takes
(multi-part ones such as ``.nii.gz``, ``.ome.tif``, ``.ome.zarr`` included) and offers two forms:

- ``read(path)`` -> an :class:`Image`: the whole array with its geometry (spacing, origin, direction and the
  affine they make) and format-specific tags;
- ``open(path)`` -> a :class:`LazyImage`: ``shape``, ``dtype``, the geometry, and ``read_region(slices)``
  for files too large to hold (the default reads the whole file once and slices it).

``reader_for(path)`` picks among the readers whose suffix matches, the longest suffix first, then each
reader's ``claims(path)`` (its content or size; a small striped ``.tif`` goes to Pillow, a tiled one to the
large-raster reader), then ``priority``. Writers (``writer_for``) write a mask with the geometry of the image
it came from, atomically: every file of the output (an ``.mhd`` header and its ``.raw``) is written into a
temporary folder beside the target under its final name, then renamed into place, data before header.

This package imports NumPy, the standard library and (lazily) the format libraries: never a runner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError

# --- the image and its geometry ---------------------------------------------------------------------------


@dataclass
class Geometry:
    """Where an array's voxels lie in the world, per spatial axis in the array's own axis order.

    ``affine``: 4x4 (3D) or 3x3 (2D) voxel index -> world, in nibabel's RAS+ convention (for ITK formats
    converted from LPS as MONAI does). ``spacing``/``origin``/``direction`` are in the file's own convention
    (ITK: LPS; NIfTI: RAS, derived from the affine) so a writer of the same format reproduces them exactly.
    ``None`` where a format has none (PNG, ``.npy``)."""

    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None  # (ndim, ndim), columns = the array axes' unit vectors
    affine: np.ndarray | None = None

    def same_as(self, other: Geometry, atol: float = 1e-5) -> bool:
        def close(a, b) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return np.allclose(np.asarray(a, float), np.asarray(b, float), atol=atol)

        return all(close(getattr(self, k), getattr(other, k)) for k in ("spacing", "origin", "direction", "affine"))


@dataclass
class Image:
    """A whole image or volume: pixels and where they lie.

    ``array``: 2D images (H, W) or (H, W, C) as Pillow gives them; volumes (I, J, K) in the file's index order
    (nibabel's; ITK arrays are transposed to it, as MONAI's ``ITKReader`` does), a channel axis last where the
    file has one (``channels`` says so). ``format``: the reader's name (``nifti``, ``nrrd``, ``mha``, ``mhd``,
    ``dicom``, ``npy``, ``pillow``, ...), which picks the writer. ``meta``: tags the writer needs (a NIfTI
    header, ITK metadata keys) and facts for reports (``series_files``, ``dtype_on_disk``)."""

    array: np.ndarray
    format: str
    path: Path | None = None
    geometry: Geometry = field(default_factory=Geometry)
    channels: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[:-1] if self.channels else self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...] | None:
        return self.geometry.spacing

    @property
    def affine(self) -> np.ndarray | None:
        return self.geometry.affine


class LazyImage:
    """An image opened, not read: ``shape``, ``dtype``, geometry and ``read_region(slices)``.

    The base holds any array-like that slices (a NumPy memmap, nibabel's ``ArrayProxy``, a Zarr array); a
    reader with no lazy access gives ``LazyImage.of(image)``, the whole array read once. A context manager:
    ``close()`` releases what the reader opened."""

    def __init__(self, data, format: str, path: Path | None = None, geometry: Geometry | None = None,
                 channels: bool = False, meta: dict[str, Any] | None = None, close=None):
        self._data = data
        self.format = format
        self.path = path
        self.geometry = geometry or Geometry()
        self.channels = channels
        self.meta = meta or {}
        self._close = close

    @classmethod
    def of(cls, image: Image) -> LazyImage:
        return cls(image.array, image.format, image.path, image.geometry, image.channels, image.meta)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read_region(self, slices: Sequence[slice] | tuple) -> np.ndarray:
        """The region ``slices`` (one per leading axis; missing ones are whole) as an in-memory array, in
        native byte order."""
        region = np.asarray(self._data[tuple(slices)])
        return native(region)

    def read(self) -> Image:
        return Image(self.read_region(()), self.format, self.path, self.geometry, self.channels, self.meta)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def native(array: np.ndarray) -> np.ndarray:
    """The same values in the machine's byte order (a big-endian NIfTI's array is not a valid torch/ORT
    input); arrays already native are returned as they are."""
    if array.dtype.byteorder not in ("=", "|") and array.dtype.byteorder != _NATIVE:
        return array.astype(array.dtype.newbyteorder("="))
    return array


_NATIVE = "<" if np.little_endian else ">"


# --- readers ------------------------------------------------------------------------------------------------


def full_suffix(path: str | os.PathLike, candidates: Sequence[str]) -> str | None:
    """The longest of ``candidates`` the file name ends with (case-insensitive), or None."""
    name = Path(path).name.lower()
    hits = [s for s in candidates if name.endswith(s.lower()) and len(name) > len(s)]
    return max(hits, key=len) if hits else None


def stem(path: str | os.PathLike, suffixes: Sequence[str] = ()) -> str:
    """The name without its (multi-part) suffix: ``scan.nii.gz`` -> ``scan``; a folder keeps its name."""
    p = Path(path)
    hit = full_suffix(p, suffixes) if suffixes else None
    if hit:
        return p.name[: -len(hit)]
    return p.name if p.is_dir() else p.stem


class Reader:
    """One format's reader. Subclasses set ``name``, ``suffixes``, ``kind`` (``image``: 2D pictures,
    ``volume``: 3D scans, ``raster``: large 2D read by region), optionally ``extra`` (the pip extra its
    library comes with) and ``priority``, and implement ``read``; ``open`` defaults to the whole read."""

    name: str = "reader"
    suffixes: tuple[str, ...] = ()
    kind: str = "image"
    extra: str | None = None
    priority: int = 0
    directories: bool = False  # True: the reader takes a folder (a DICOM series)

    def verify_suffix(self, path: str | os.PathLike) -> bool:
        if self.directories and Path(path).is_dir():
            return True
        return full_suffix(path, self.suffixes) is not None

    def claims(self, path: Path) -> bool:
        """Whether this reader takes ``path`` among readers of the same suffix (content or size)."""
        return True

    def missing(self) -> str | None:
        """Why this reader cannot run here (its library is not installed), or None."""
        return None

    def read(self, path: Path) -> Image:
        raise NotImplementedError

    def open(self, path: Path) -> LazyImage:
        return LazyImage.of(self.read(path))

    def stem(self, path: str | os.PathLike) -> str:
        return stem(path, self.suffixes)


_READERS: list[Reader] = []
_BUILTINS_LOADED = False


def register_reader(reader: Reader) -> Reader:
    """Add a reader (an instance); a reader of the same name is replaced."""
    _READERS[:] = [r for r in _READERS if r.name != reader.name]
    _READERS.append(reader)
    return reader


def readers() -> list[Reader]:
    _load_builtins()
    return list(_READERS)


def _load_builtins() -> None:
    """The package's own readers register on import; importing them here keeps ``io.base`` importable alone.
    A module another part of the project adds (the large-raster readers) registers itself the same way and
    is listed in ``_BUILTIN_MODULES``."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for module in _BUILTIN_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(module)


_BUILTIN_MODULES = ["deploy_unet.io.images", "deploy_unet.io.volumes", "deploy_unet.io.rasters"]


def all_suffixes(kind: str | None = None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for r in readers() if kind in (None, r.kind) for s in r.suffixes))


def reader_for(path: str | os.PathLike, kind: str | Sequence[str] | None = None) -> Reader:
    """The reader for ``path``: the longest matching suffix first, then ``claims``, then ``priority``.

    ``kind`` limits the choice (``"volume"``). A file no reader takes, or a reader whose library is missing,
    is one error naming the suffixes that are read and the extra to install."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind) if kind else None
    candidates = [r for r in readers() if (kinds is None or r.kind in kinds) and r.verify_suffix(path)]
    if not candidates:
        known = ", ".join(all_suffixes() if kinds is None else
                          tuple(dict.fromkeys(s for k in kinds for s in all_suffixes(k))))
        raise ConfigError(f"no reader for {path} (reads {known}); convert it to one of these or pass a folder "
                          "holding a DICOM series")

    def rank(r: Reader) -> tuple[int, int]:
        hit = full_suffix(path, r.suffixes) if not path.is_dir() else ""
        return (len(hit or ""), r.priority)

    candidates.sort(key=rank, reverse=True)
    for reader in candidates:
        if reader.claims(path):
            why = reader.missing()
            if why:
                raise MissingDependencyError(f"{path} needs {reader.name} support: {why}")
            return reader
    raise ArtifactError(f"{path}: none of the readers for its suffix ({', '.join(r.name for r in candidates)}) "
                        "takes this file; is it what its name says?")


def read(path: str | os.PathLike, kind: str | Sequence[str] | None = None) -> Image:
    """The whole file (or DICOM folder) as an :class:`Image`."""
    path = Path(path)
    return reader_for(path, kind).read(path)


def open_image(path: str | os.PathLike, kind: str | Sequence[str] | None = None) -> LazyImage:
    """The file opened lazily (``shape``, ``dtype``, ``read_region``)."""
    path = Path(path)
    return reader_for(path, kind).open(path)


# --- writers ------------------------------------------------------------------------------------------------


class Writer:
    """One format's writer: ``write(path, array, like)`` writes ``array`` with the geometry and tags of the
    image ``like`` (the one it was predicted from). ``formats`` lists the reader names whose images it writes
    back in their own format; ``suffix`` is the output suffix it writes for an input of that format."""

    name: str = "writer"
    formats: tuple[str, ...] = ()

    def suffix(self, like: Image | LazyImage) -> str:
        raise NotImplementedError

    def write(self, path: Path, array: np.ndarray, like: Image | LazyImage) -> None:
        raise NotImplementedError


_WRITERS: list[Writer] = []


def register_writer(writer: Writer) -> Writer:
    _WRITERS[:] = [w for w in _WRITERS if w.name != writer.name]
    _WRITERS.append(writer)
    return writer


def writer_for(like: Image | LazyImage) -> Writer:
    _load_builtins()
    for writer in _WRITERS:
        if like.format in writer.formats:
            return writer
    raise ConfigError(f"no writer for {like.format} images; masks are written for "
                      f"{', '.join(f for w in _WRITERS for f in w.formats)}")


def output_path(out_dir: str | os.PathLike, like: Image | LazyImage, tag: str = "mask", name: str | None = None) -> Path:
    """``out/scan.mask.nii.gz`` for ``scan.nii.gz`` (a DICOM folder ``series/`` -> ``series.mask.nii.gz``)."""
    writer = writer_for(like)
    if name is None:
        name = reader_for(like.path).stem(like.path) if like.path is not None else "image"
    return Path(out_dir) / f"{name}.{tag}{writer.suffix(like)}"


def write_like(path: str | os.PathLike, array: np.ndarray, like: Image | LazyImage) -> Path:
    """Write ``array`` (a mask) at ``path`` in ``like``'s format and geometry, atomically."""
    path = Path(path)
    writer_for(like).write(path, array, like)
    return path


@contextlib.contextmanager
def atomic_files(target: str | os.PathLike) -> Iterator[Path]:
    """Yield ``tmpdir/<target name>`` in a fresh folder beside ``target``; when the block succeeds every file
    the block wrote in that folder is renamed beside ``target`` (the target itself last), so a format library
    that picks the format from the suffix, or writes a header and a data file (``.mhd`` + ``.raw``), still
    never leaves a half-written output. On failure nothing is left."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp / target.name
        files = sorted((p for p in tmp.iterdir() if p.is_file()), key=lambda p: p.name == target.name)
        for f in files:
            os.chmod(f, 0o666 & ~_umask())
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def missing_module(module: str, extra: str) -> str | None:
    """None when ``module`` imports; else the sentence saying which extra brings it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"the Python package {module!r} is not installed (pip install 'deploy-unet[{extra}]')"
    return None
