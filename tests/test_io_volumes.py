"""Volume files written by the libraries themselves (nibabel, SimpleITK, a DICOM series), read by deploy_unet.io
and the mask written back: same shape, same geometry, read back by those libraries."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deploy_unet.io import base

nib = pytest.importorskip("nibabel", reason="the volumes extra: pip install 'deploy-unet[volumes]'")
sitk = pytest.importorskip("SimpleITK", reason="the volumes extra: pip install 'deploy-unet[volumes]'")


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rotation(0.3, -0.7) @ np.diag([0.8, 1.25, 3.0])
    a[:3, 3] = [-91.5, 12.25, 40.0]
    return a


def _mask_of(array: np.ndarray) -> np.ndarray:
    return (array > np.median(array)).astype(np.uint8) + (array > np.percentile(array, 90)).astype(np.uint8)


@pytest.mark.parametrize("dtype", [">i2", "<u2", ">f4", "<f8", "u1", ">i4"])
@pytest.mark.parametrize("klass", ["Nifti1Image", "Nifti2Image"])
def test_nifti_any_datatype_and_byte_order_read_and_mask_written_with_its_header_geometry(tmp_path, dtype, klass):
    rng = np.random.default_rng(0)
    data = (rng.random((11, 9, 7)) * 100).astype(dtype)
    header = getattr(nib, klass.replace("Image", "Header"))(endianness=np.dtype(dtype).byteorder.replace("|", "="))
    image = getattr(nib, klass)(data, None, header=header)
    image.header.set_data_dtype(dtype)  # stored in that byte order on disk
    qform = _affine().copy()
    qform[:3, 3] += [1.5, -2.0, 0.25]  # qform and sform differ: the sform (code 2) is the one nibabel uses
    image.set_qform(qform, code=1)  # scanner
    image.set_sform(_affine(), code=2)  # aligned
    path = tmp_path / "scan.nii.gz"
    nib.save(image, str(path))
    assert nib.load(str(path)).get_data_dtype() == np.dtype(dtype)

    read = base.read(path)
    assert base.reader_for(path).name == "nifti" and read.format == "nifti"
    assert read.array.dtype.isnative and read.array.shape == (11, 9, 7) and not read.channels
    np.testing.assert_array_equal(read.array, data.astype(read.array.dtype))
    np.testing.assert_allclose(read.geometry.affine, _affine(), atol=1e-5)
    np.testing.assert_allclose(read.geometry.spacing, [0.8, 1.25, 3.0], atol=1e-5)

    mask = _mask_of(read.array.astype(float))
    out = base.output_path(tmp_path / "out", read)
    assert out.name == "scan.mask.nii.gz"
    base.write_like(out, mask, read)
    back = nib.load(str(out))
    assert type(back).__name__ == klass
    assert back.shape == (11, 9, 7) and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask)
    np.testing.assert_allclose(back.affine, nib.load(str(path)).affine, atol=0)
    for form in ("qform", "sform"):
        (m_in, c_in), (m_out, c_out) = nib.load(str(path)).header.__getattribute__(f"get_{form}")(coded=True), \
            back.header.__getattribute__(f"get_{form}")(coded=True)
        assert c_in == c_out
        np.testing.assert_allclose(m_out, m_in, atol=1e-6)
    assert [p.name for p in out.parent.iterdir()] == ["scan.mask.nii.gz"]  # no temp left


def test_nifti_with_intensity_scaling_and_lazy_regions(tmp_path):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    image = nib.Nifti1Image(data, _affine())
    image.header.set_slope_inter(0.5, -10.0)
    nib.save(image, str(tmp_path / "ct.nii"))
    expected = np.asanyarray(nib.load(str(tmp_path / "ct.nii")).dataobj)
    read = base.read(tmp_path / "ct.nii")
    np.testing.assert_allclose(read.array, expected)
    with base.open_image(tmp_path / "ct.nii") as lazy:
        assert lazy.shape == (6, 5, 4)
        np.testing.assert_allclose(lazy.read_region((slice(2, 4), slice(None), slice(1, 3))), expected[2:4, :, 1:3])
    out = base.output_path(tmp_path, read)
    assert out.name == "ct.mask.nii"
    base.write_like(out, np.ones((6, 5, 4), np.uint8), read)
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), 1)  # the input's scl_slope is not applied to a mask
    assert back.get_data_dtype() == np.uint8


def test_nifti_trailing_singleton_axes_and_channels(tmp_path):
    data = np.random.default_rng(1).random((5, 4, 3, 1, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, _affine()), str(tmp_path / "multi.nii.gz"))
    read = base.read(tmp_path / "multi.nii.gz")
    assert read.channels and read.array.shape == (5, 4, 3, 2) and read.spatial_shape == (5, 4, 3)
    np.testing.assert_array_equal(read.array, data[:, :, :, 0, :])
    base.write_like(tmp_path / "m.nii.gz", np.zeros((5, 4, 3), np.uint8), read)
    back = nib.load(str(tmp_path / "m.nii.gz"))
    assert back.shape == (5, 4, 3)
    np.testing.assert_allclose(back.affine, nib.load(str(tmp_path / "multi.nii.gz")).affine)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_with_direction_cosines(tmp_path, suffix):
    rng = np.random.default_rng(2)
    zyx = (rng.random((6, 8, 10)) * 1000 - 500).astype(np.int16)
    image = sitk.GetImageFromArray(zyx)
    direction = _rotation(0.4, 0.9)
    image.SetDirection(tuple(direction.ravel()))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -20.5, 33.0))
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(image, str(path))

    read = base.read(path)
    assert read.format == suffix[1:] and read.array.shape == (10, 8, 6)
    np.testing.assert_array_equal(read.array, zyx.transpose(2, 1, 0))
    np.testing.assert_allclose(read.geometry.direction, direction, atol=1e-12)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag([0.7, 0.9, 2.5])
    lps[:3, 3] = (10.0, -20.5, 33.0)
    np.testing.assert_allclose(read.geometry.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-12)

    mask = _mask_of(read.array.astype(float))
    out = base.output_path(tmp_path / "out", read)
    assert out.name == f"vol.mask{suffix}"
    base.write_like(out, mask, read)
    if suffix == ".mhd":  # header + data file, both moved into place
        assert sorted(p.suffix for p in out.parent.iterdir()) in ([".mhd", ".raw"], [".mhd", ".zraw"])
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), mask)


def _write_dicom_series(folder, volume_kji: np.ndarray, spacing, origin, row, col, shuffle_seed=3):
    """One CT series, one file per slice, written by SimpleITK in shuffled order under shuffled names and
    instance numbers (a reader that trusted names or numbers would stack them wrongly)."""
    normal = np.cross(row, col)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    order = list(range(volume_kji.shape[0]))
    random.Random(shuffle_seed).shuffle(order)
    for rank, k in enumerate(order):
        s = sitk.GetImageFromArray(volume_kji[k : k + 1])
        position = np.asarray(origin) + k * spacing[2] * normal
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": "1.2.3.4",
            "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(rank + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2]),
            "0028|1052": "-1024", "0028|1053": "1",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        s.SetSpacing((spacing[0], spacing[1], spacing[2]))
        writer.SetFileName(str(folder / f"img{rank:03d}.dcm"))
        writer.Execute(s)


def _pydicom_volume(folder) -> np.ndarray:
    """The reference: pydicom's modality LUT per slice, slices sorted by position along the normal."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_modality_lut

    slices = []
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        o = np.array(ds.ImageOrientationPatient, float)
        slices.append((float(np.array(ds.ImagePositionPatient, float) @ np.cross(o[:3], o[3:])),
                       apply_modality_lut(ds.pixel_array, ds)))
    slices.sort(key=lambda t: t[0])
    return np.stack([s for _, s in slices]).transpose(2, 1, 0)  # (k, row, col) -> (i=col, j=row, k)


def test_dicom_series_in_shuffled_order_stacks_by_position_and_masks_as_nifti(tmp_path):
    rng = np.random.default_rng(4)
    kji = rng.integers(0, 2000, (7, 6, 5)).astype(np.int16)  # 7 slices of 6 rows x 5 columns, stored values
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(0.3), np.sin(0.3)])  # an oblique acquisition
    spacing, origin = (0.8, 0.6, 2.0), (-100.0, 50.0, 20.0)
    folder = tmp_path / "series"
    folder.mkdir()
    _write_dicom_series(folder, kji, spacing, origin, row, col)

    assert base.reader_for(folder).name == "dicom"
    read = base.read(folder)
    assert read.array.shape == (5, 6, 7)
    np.testing.assert_array_equal(read.array, _pydicom_volume(folder))  # HU, slices by position
    np.testing.assert_array_equal(read.array, kji.transpose(2, 1, 0))  # GDCM stored HU + 1024, read back as HU
    np.testing.assert_allclose(read.geometry.spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(read.geometry.origin, origin, atol=1e-4)
    direction = np.stack([row, col, np.cross(row, col)], axis=1)
    np.testing.assert_allclose(read.geometry.direction, direction, atol=1e-5)

    mask = _mask_of(read.array)
    out = base.output_path(tmp_path / "out", read)
    assert out.name == "series.mask.nii.gz"
    base.write_like(out, mask, read)
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask)
    np.testing.assert_allclose(back.affine, read.geometry.affine, atol=1e-4)


def test_a_folder_of_two_series_is_refused_naming_them(tmp_path):
    from deploy_unet.errors import ArtifactError

    folder = tmp_path / "mixed"
    folder.mkdir()
    kji = np.zeros((2, 4, 4), np.int16)
    _write_dicom_series(folder, kji, (1.0, 1.0, 1.0), (0, 0, 0), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    for f in folder.iterdir():
        f.rename(folder / f"a_{f.name}")
    second = tmp_path / "b"
    second.mkdir()
    _write_dicom_series(second, kji, (1.0, 1.0, 1.0), (0, 0, 0), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    for f in second.iterdir():
        s = sitk.ReadImage(str(f))
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.43")
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"b_{f.name}"))
        w.Execute(s)
    with pytest.raises(ArtifactError, match="holds 2 DICOM series"):
        base.read(folder)


def test_unreadable_volume_is_one_error(tmp_path):
    from deploy_unet.errors import ArtifactError

    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "bad.nrrd").write_bytes(b"not a nrrd")
    with pytest.raises(ArtifactError, match=r"cannot read .*bad\.nii\.gz as NIfTI"):
        base.read(tmp_path / "bad.nii.gz")
    with pytest.raises(ArtifactError, match=r"cannot read .*bad\.nrrd as NRRD"):
        base.read(tmp_path / "bad.nrrd")


def test_npy_volume_mask_is_npy(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 5, 6), np.float32))
    read = base.read(tmp_path / "v.npy")
    out = base.output_path(tmp_path, read)
    assert out.name == "v.mask.npy"
    base.write_like(out, np.ones((4, 5, 6), np.uint8), read)
    np.testing.assert_array_equal(np.load(out), 1)
