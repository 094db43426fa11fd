"""Volumes: NIfTI (nibabel), NRRD and MHA/MHD (SimpleITK), DICOM series (SimpleITK, slices ordered by position
along the slice normal), and masks written back in the input's own format with identical geometry.

The libraries are the ones MONAI and nnU-Net users have (``pip install 'deploy-unet[volumes]'``), imported only
when a volume is read. Conventions, as MONAI's ``NibabelReader``/``ITKReader``:

- the array is indexed (i, j, k) in the file's voxel order (nibabel's; an ITK array, (k, j, i) in NumPy, is
  transposed), a vector pixel's components last (``Image.channels``);
- ``Geometry.affine`` is voxel -> world in RAS+ (nibabel's), for ITK formats ``diag(-1, -1, 1) @ [D S | O]``
  from the LPS direction ``D``, spacing ``S`` and origin ``O``; ``spacing``/``origin``/``direction`` are the
  file's own (NIfTI: from its affine; ITK: as ``GetSpacing``/``GetOrigin``/``GetDirection`` give them).

Writers: NIfTI with a copy of the input's header (qform and sform with their codes, units, pixdim: the same
affine), the data type set to the mask's and the intensity scaling removed; ITK formats with the input's
spacing, origin and direction; a DICOM series as NIfTI (``series.mask.nii.gz``; ITK converts LPS to the
NIfTI's RAS). The data on disk may be any NIfTI datatype in either byte order: arrays come back in native
order (scaled by ``scl_slope``/``scl_inter`` where the header sets them, as nibabel does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, first_line
from deploy_unet.io.base import (
    Geometry,
    Image,
    LazyImage,
    Reader,
    Writer,
    atomic_files,
    missing_module,
    native,
    register_reader,
    register_writer,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = {"nrrd": (".nrrd", ".nhdr"), "mha": (".mha",), "mhd": (".mhd",)}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _read_failed(path: Path, exc: BaseException, what: str) -> ArtifactError:
    return ArtifactError(f"cannot read {path} as {what} ({first_line(exc)}); is the file complete and what its "
                         "name says?")


# --- NIfTI ----------------------------------------------------------------------------------------------------


class NiftiReader(Reader):
    name = "nifti"
    suffixes = NIFTI_SUFFIXES
    kind = "volume"
    extra = "volumes"

    def missing(self):
        return missing_module("nibabel", "volumes")

    def _load(self, path: Path):
        import nibabel as nib

        try:
            return nib.load(str(path))
        except Exception as exc:  # nibabel's ImageFileError, a truncated gzip's OSError/EOFError
            raise _read_failed(path, exc, "NIfTI") from None

    def open(self, path: Path) -> LazyImage:
        img = self._load(path)
        shape = img.shape
        data = img.dataobj
        # Trailing singleton axes beyond the third (x, y, z, 1, 1) are dropped; a 4th axis > 1 is channels.
        if len(shape) > 3 and all(s == 1 for s in shape[3:]):
            data = _Squeezed(data, shape[:3])
        elif len(shape) > 4 and all(s == 1 for s in shape[3:-1]):
            data = _Squeezed(data, (*shape[:3], shape[-1]))
        channels = len(data.shape) == 4
        if len(data.shape) not in (2, 3, 4):
            raise ArtifactError(f"{path} has shape {shape}; a volume is x*y*z (a 4th axis of channels at most)")
        affine = np.asarray(img.affine, dtype=float)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        direction = affine[:3, :3] / np.where(np.asarray(zooms) == 0, 1, zooms)
        geometry = Geometry(spacing=zooms, origin=tuple(float(v) for v in affine[:3, 3]), direction=direction,
                            affine=affine)
        header = img.header
        meta = {"header": header.copy(), "image_class": type(img).__name__,
                "dtype_on_disk": str(header.get_data_dtype()),
                "qform_code": int(header["qform_code"]), "sform_code": int(header["sform_code"])}
        return LazyImage(data, "nifti", Path(path), geometry, channels, meta)

    def read(self, path: Path) -> Image:
        lazy = self.open(path)
        try:
            array = native(np.asanyarray(lazy._data[()]) if isinstance(lazy._data, _Squeezed)
                           else np.asanyarray(lazy._data))
        except Exception as exc:
            raise _read_failed(path, exc, "NIfTI") from None
        return Image(np.asarray(array), "nifti", lazy.path, lazy.geometry, lazy.channels, lazy.meta)


class _Squeezed:
    """nibabel's ArrayProxy seen without its trailing singleton axes (still sliced lazily)."""

    def __init__(self, proxy, shape):
        self._proxy, self.shape, self.dtype = proxy, tuple(shape), proxy.dtype
        self._full = proxy.shape

    def __getitem__(self, slices):
        slices = slices if isinstance(slices, tuple) else (slices,)
        slices = slices + (slice(None),) * (len(self.shape) - len(slices))
        if len(self.shape) == 3:
            full = slices + (0,) * (len(self._full) - 3)
        else:
            full = slices[:3] + (0,) * (len(self._full) - 4) + slices[3:]
        return np.asanyarray(self._proxy[full])


class NiftiWriter(Writer):
    name = "nifti"
    formats = ("nifti",)

    def suffix(self, like) -> str:
        return ".nii" if like.path is not None and str(like.path).lower().endswith(".nii") else ".nii.gz"

    def write(self, path: Path, array: np.ndarray, like) -> None:
        import nibabel as nib

        header = like.meta["header"].copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)  # a mask holds class ids, not scaled intensities
        header["cal_min"], header["cal_max"] = 0, 0
        klass = getattr(nib, like.meta.get("image_class", "Nifti1Image"), nib.Nifti1Image)
        if array.ndim < len(header.get_data_shape()):  # the input had channels or trailing axes: a 3D mask
            header.set_data_shape(array.shape)
        image = klass(np.asarray(array), like.geometry.affine, header=header)
        with atomic_files(path) as tmp:
            nib.save(image, str(tmp))


# --- ITK formats (NRRD, MHA/MHD) --------------------------------------------------------------------------------


def _itk_geometry(image) -> Geometry:
    spacing = tuple(float(s) for s in image.GetSpacing())
    origin = tuple(float(v) for v in image.GetOrigin())
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(n, n)
    affine = np.eye(n + 1)
    affine[:n, :n] = direction * np.asarray(spacing)
    affine[:n, n] = origin
    if n == 3:
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        affine = flip @ affine
    return Geometry(spacing=spacing, origin=origin, direction=direction, affine=affine)


def _itk_array(image) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (k, j, i[, c])
    n = image.GetDimension()
    order = tuple(range(n - 1, -1, -1)) + ((n,) if array.ndim == n + 1 else ())
    return native(np.ascontiguousarray(array.transpose(order)))


class ItkReader(Reader):
    """NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd`` + ``.raw``) through SimpleITK."""

    kind = "volume"
    extra = "volumes"

    def __init__(self, name: str):
        self.name = name
        self.suffixes = ITK_SUFFIXES[name]

    def missing(self):
        return missing_module("SimpleITK", "volumes")

    def read(self, path: Path) -> Image:
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(path))
        except Exception as exc:  # SimpleITK raises RuntimeError with ITK's multi-line message
            raise _read_failed(path, exc, self.name.upper()) from None
        meta = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
        return Image(_itk_array(image), self.name, Path(path), _itk_geometry(image),
                     image.GetNumberOfComponentsPerPixel() > 1,
                     {"itk": meta, "dtype_on_disk": image.GetPixelIDTypeAsString()})


class ItkWriter(Writer):
    """A mask as an ITK image with the input's spacing, origin and direction; NIfTI for a DICOM series."""

    def __init__(self, name: str, formats: tuple[str, ...], suffix: str | None = None):
        self.name, self.formats, self._suffix = name, formats, suffix

    def suffix(self, like) -> str:
        if self._suffix:
            return self._suffix
        return Path(like.path).suffix.lower() if like.path is not None else ".mha"

    def write(self, path: Path, array: np.ndarray, like) -> None:
        import SimpleITK as sitk

        g = like.geometry
        n = array.ndim
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(range(n - 1, -1, -1))))
        image.SetSpacing(tuple(float(s) for s in g.spacing))
        image.SetOrigin(tuple(float(v) for v in g.origin))
        image.SetDirection(tuple(float(v) for v in np.asarray(g.direction).ravel()))
        with atomic_files(path) as tmp:
            sitk.WriteImage(image, str(tmp), True)  # compressed: zlib in MHA/MHD/NRRD, gzip for .nii.gz


# --- DICOM series ------------------------------------------------------------------------------------------------


class DicomSeriesReader(Reader):
    """A folder holding one DICOM series (CT, MR): slices ordered by their position along the slice normal
    (Image Position Patient . (row x column of Image Orientation Patient)), not by file name or Instance
    Number; the rescale slope/intercept applied (CT in HU). A folder with several series is refused, naming
    them; ``.dcm`` files of a series may have any names."""

    name = "dicom"
    suffixes = (".dcm",)
    kind = "volume"
    extra = "volumes"
    directories = True

    def missing(self):
        return missing_module("SimpleITK", "volumes")

    def claims(self, path: Path) -> bool:
        return path.is_dir()

    def stem(self, path) -> str:
        return Path(path).name

    def files(self, path: Path) -> list[str]:
        import SimpleITK as sitk

        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise ArtifactError(f"folder {path} holds no DICOM series; pass a folder of one series' .dcm files")
        if len(ids) > 1:
            raise ArtifactError(f"folder {path} holds {len(ids)} DICOM series ({', '.join(ids)}); put each series "
                                "in a folder of its own and pass that folder")
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))
        return sorted(files, key=_position_along_normal)

    def read(self, path: Path) -> Image:
        import SimpleITK as sitk

        files = self.files(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
        except Exception as exc:
            raise _read_failed(path, exc, "a DICOM series") from None
        if image.GetDimension() != 3:
            raise ArtifactError(f"{path}: the series reads as {image.GetDimension()}D; a volume is 3D")
        return Image(_itk_array(image), "dicom", Path(path), _itk_geometry(image),
                     image.GetNumberOfComponentsPerPixel() > 1,
                     {"series_files": [Path(f).name for f in files], "dtype_on_disk": image.GetPixelIDTypeAsString()})


def _position_along_normal(file: str) -> float:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        o = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except Exception as exc:
        raise ArtifactError(f"{file}: no Image Position/Orientation (Patient) ({first_line(exc)}); a DICOM slice of a "
                            "series needs both to be placed") from None
    return float(position @ np.cross(o[:3], o[3:]))


register_reader(NiftiReader())
for _name in ITK_SUFFIXES:
    register_reader(ItkReader(_name))
register_reader(DicomSeriesReader())
register_writer(NiftiWriter())
register_writer(ItkWriter("itk", ("nrrd", "mha", "mhd")))
register_writer(ItkWriter("dicom-as-nifti", ("dicom",), ".nii.gz"))
