"""2D images: PNG/JPEG/TIFF/BMP via Pillow and NumPy arrays (``.npy``/``.npz``), as predict and the data
sources read them (moved here from ``predict.py`` and ``data.py`` unchanged; both call this module).

``read_image`` (predict's reader: pixels as stored, no EXIF rotation), ``header_size`` (H, W without decoding),
``decode_sample`` (a training/calibration folder's image, one ``DataError`` line when it cannot be decoded),
``read_samples_array`` (an ``.npy``/``.npz`` of samples, NCHW float32 in [0, 1]; ``load_sample_arrays``, its
loading, serves ``data``'s volumes too), ``check_finite``. The ``PillowReader`` and ``NumpyReader`` put them
behind the suffix registry of ``io.base``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, DataError, first_line
from deploy_unet.io.base import (
    Geometry,
    Image,
    LazyImage,
    Reader,
    Writer,
    atomic_files,
    native,
    register_reader,
    register_writer,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as Pillow decodes it: (H, W) or (H, W, C) uint8; uint16 for 16-bit greyscale PNG/TIFF;
    float32 for floating-point TIFF. Pixels as stored: EXIF orientation is not applied, as in the training
    readers (``deploy_unet.data``) and the C++ runtime, so a mask lies on the very pixel grid a net was fed.
    Palette images become RGB (RGBA when they have transparency); CMYK/YCbCr/LAB become RGB; the first frame
    of a multi-frame file. Raises ``ArtifactError`` with the reason when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _pixels(im)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"cannot read {path} ({reason})") from None


def _pixels(im) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode == "P" or mode == "PA":
        return np.asarray(im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB"))
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit integer: how Pillow opens some 16-bit PNGs
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer pixels up to {arr.max()} do not fit 16 bits")
        return arr.astype(np.uint16)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    return np.asarray(im.convert("RGB"))


def header_size(path: Path) -> tuple[int, int]:
    """(H, W) without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)



def decode_sample(file: Path, index: int, folder: Path, convert) -> np.ndarray:
    """One image file as an array; a file Pillow cannot decode is one DataError line naming it."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            return np.asarray(convert(im))
    except Exception as exc:  # UnidentifiedImageError, a truncated file's OSError, a decoder's ValueError
        raise DataError(
            f"{file}: sample {index} of {folder} cannot be decoded as an image ({first_line(exc)}); "
            "replace or remove that file"
        ) from None



def check_finite(images: np.ndarray, source: str, what: str = "sample") -> None:
    """Refuse NaN or Inf in any sample: one line naming the source, the first bad sample and the count."""
    flat = images.reshape(len(images), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        values = flat[i][~np.isfinite(flat[i])]
        kinds = " and ".join(k for k, m in (("NaN", np.isnan(values)), ("Inf", np.isinf(values))) if m.any())
        more = f"; {int(bad.sum()) - 1} more samples too" if bad.sum() > 1 else ""
        raise DataError(
            f"{source}: {what} {i} holds {kinds} ({values.size} of {flat.shape[1]} values){more}; "
            "clean the data or drop that sample"
        )


def _check_dtype(array: np.ndarray, path: Path, what: str) -> None:
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        expected = "uint8 (0..255) or float in [0, 1]" if what == "images" else "integer class indices"
        raise DataError(f"{path}: {what} have dtype {array.dtype}; expected {expected}")


def load_sample_arrays(path: Path, what: str = "image array",
                       single_array: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, masks or None) of a .npy (the images) or .npz (``images`` and optional ``masks``; with
    ``single_array``, a lone array of any name as the images), the images' dtype checked; ``what`` names the
    images in the error. The 2D samples (``read_samples_array``) and the volumes of ``data`` both read so."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable NumPy file ({type(exc).__name__}: {exc})") from None
    masks = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            if "images" in loaded:
                images = loaded["images"]
                masks = loaded["masks"] if "masks" in loaded else None
            elif single_array and len(keys) == 1:
                images = loaded[keys[0]]
            else:
                raise ArtifactError(f"{path} holds {keys}; name the {what} 'images' (and masks 'masks')")
    else:
        images = loaded
    _check_dtype(images, path, "images")
    return images, masks


def read_samples_array(path: Path, n: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    images, masks = load_sample_arrays(path)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise DataError(f"{path}: images have shape {images.shape} (rank {images.ndim}); expected NCHW or NHWC "
                        "(rank 4), or one HWC/CHW image (rank 3)")
    if images.shape[1] not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if images.shape[1] == 4:
        images = images[:, :3]  # drop alpha
    if np.issubdtype(images.dtype, np.integer):
        images = images.astype(np.float32) / 255.0
    if n:
        images = images[:n]
        masks = masks[:n] if masks is not None else None
    check_finite(images, os.fspath(path))  # before the float32 cast: float64 beyond fp32's range shows as Inf too
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, refused just below
        images = images.astype(np.float32)
    check_finite(images, os.fspath(path))
    if masks is not None:
        _check_dtype(masks, path, "masks")
        if masks.ndim == 2:
            masks = masks[None]
        if np.issubdtype(masks.dtype, np.floating):
            check_finite(masks, f"{path} masks", "mask")
            if not np.array_equal(masks, np.round(masks)):
                raise DataError(f"{path}: masks hold non-integer values; masks are class indices (0, 1, ...)")
        masks = masks.astype(np.int64)
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ArtifactError(f"{path}: masks {masks.shape} do not match images {images.shape} (want N,H,W)")
    return images, masks


# --- the registry's readers -------------------------------------------------------------------------------


class PillowReader(Reader):
    """PNG/JPEG/BMP/TIFF as ``read_image`` decodes them (a large tiled TIFF is claimed by the raster reader
    where it is installed: its ``priority`` and ``claims`` decide, this one takes what is left)."""

    name = "pillow"
    suffixes = IMAGE_SUFFIXES
    kind = "image"

    def read(self, path: Path) -> Image:
        return Image(read_image(path), "pillow", Path(path), Geometry(), meta={"suffix": Path(path).suffix.lower()})


class NumpyReader(Reader):
    """A ``.npy`` array as stored (memory-mapped by ``open``); no geometry. Whether it is one image, a stack
    of images or a volume is the caller's decision (predict: ``--volume`` or the net's spatial dims)."""

    name = "npy"
    suffixes = ARRAY_SUFFIXES
    kind = "array"

    def read(self, path: Path) -> Image:
        return self.open(path).read()

    def open(self, path: Path) -> LazyImage:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read {path} as a NumPy array ({first_line(exc)})") from None
        return LazyImage(array, "npy", Path(path), Geometry(), meta={"dtype_on_disk": str(array.dtype)})


register_reader(PillowReader())
register_reader(NumpyReader())

__all__ = ["ARRAY_SUFFIXES", "IMAGE_SUFFIXES", "NumpyReader", "PillowReader", "check_finite", "decode_sample",
           "header_size", "native", "read_image", "read_samples_array"]


class NumpyWriter(Writer):
    """A mask for an ``.npy`` input: an ``.npy`` of the same spatial shape."""

    name = "npy"
    formats = ("npy",)

    def suffix(self, like) -> str:
        return ".npy"

    def write(self, path: Path, array: np.ndarray, like) -> None:
        with atomic_files(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)


register_writer(NumpyWriter())
