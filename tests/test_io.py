"""deploy_unet.io: the reader registry (suffixes, multi-part suffixes, claims), lazy regions, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.io import base
from deploy_unet.io.base import Geometry, Image, LazyImage, Reader, atomic_files, full_suffix, reader_for


@pytest.fixture
def registry():
    """The registry as it is, restored after a test that registers its own readers."""
    base.readers()
    saved_r, saved_w = list(base._READERS), list(base._WRITERS)
    yield
    base._READERS[:], base._WRITERS[:] = saved_r, saved_w


def test_builtin_readers_by_suffix(tmp_path):
    assert reader_for(tmp_path / "a.PNG").name == "pillow"
    assert reader_for(tmp_path / "a.jpeg").name == "pillow"
    assert reader_for(tmp_path / "a.npy").name == "npy"
    with pytest.raises(ConfigError, match=r"no reader for .*a\.xyz \(reads .*\.png"):
        reader_for(tmp_path / "a.xyz")


def test_multi_part_suffix_wins_then_claims_then_priority(tmp_path, registry):
    class Plain(Reader):
        name, suffixes = "plain", (".tif",)

    class Ome(Reader):
        name, suffixes = "ome", (".ome.tif",)

    class Tiled(Reader):
        name, suffixes, priority = "tiled", (".tif",), 5

        def claims(self, path: Path) -> bool:  # by content: only files whose first byte says "tiled"
            return path.exists() and path.read_bytes()[:1] == b"T"

    base._READERS[:] = []  # these three alone (the real raster reader also takes .ome.tif)
    for r in (Plain(), Ome(), Tiled()):
        base.register_reader(r)
    assert full_suffix("x.OME.tif", (".tif", ".ome.tif")) == ".ome.tif"
    assert reader_for(tmp_path / "slide.ome.tif").name == "ome"
    (tmp_path / "small.tif").write_bytes(b"S")
    (tmp_path / "big.tif").write_bytes(b"T")
    assert reader_for(tmp_path / "small.tif").name == "plain"  # Tiled declines by content, Plain takes it
    assert reader_for(tmp_path / "big.tif").name == "tiled"
    assert Ome().stem(tmp_path / "slide.ome.tif") == "slide"


def test_a_reader_whose_library_is_missing_says_which_extra(tmp_path, registry):
    from deploy_unet.errors import MissingDependencyError

    class Needs(Reader):
        name, suffixes = "needs", (".needs",)

        def missing(self):
            return base.missing_module("no_such_module_here", "volumes")

    base.register_reader(Needs())
    with pytest.raises(MissingDependencyError, match=r"deploy-unet\[volumes\]"):
        reader_for(tmp_path / "a.needs")


def test_no_claiming_reader_is_one_error(tmp_path, registry):
    class Never(Reader):
        name, suffixes = "never", (".nev",)

        def claims(self, path):
            return False

    base.register_reader(Never())
    with pytest.raises(ArtifactError, match="none of the readers"):
        reader_for(tmp_path / "a.nev")


def test_npy_opens_lazily_and_reads_regions_in_native_byte_order(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=">f4").reshape(4, 5, 6)
    np.save(tmp_path / "v.npy", array)
    with base.open_image(tmp_path / "v.npy") as lazy:
        assert isinstance(lazy._data, np.memmap)
        assert lazy.shape == (4, 5, 6) and lazy.dtype == np.dtype(">f4")
        region = lazy.read_region((slice(1, 3), slice(None), slice(2, 4)))
    assert region.dtype == np.float32 and region.dtype.isnative
    np.testing.assert_array_equal(region, array[1:3, :, 2:4])
    image = base.read(tmp_path / "v.npy")
    assert image.format == "npy" and image.geometry.affine is None
    np.testing.assert_array_equal(image.array, array)


def test_pillow_reader_is_read_image(tmp_path):
    from PIL import Image as PILImage

    from deploy_unet.predict import read_image

    rgb = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    image = base.read(tmp_path / "a.png")
    np.testing.assert_array_equal(image.array, read_image(tmp_path / "a.png"))
    assert image.spatial_shape == (7, 9, 3) and not image.channels


def test_atomic_files_moves_every_file_or_none(tmp_path):
    target = tmp_path / "out" / "scan.mhd"
    with atomic_files(target) as tmp:
        assert tmp.name == "scan.mhd" and tmp.parent != target.parent
        (tmp.parent / "scan.raw").write_bytes(b"data")
        tmp.write_text("header")
    assert sorted(p.name for p in target.parent.iterdir()) == ["scan.mhd", "scan.raw"]
    with pytest.raises(RuntimeError), atomic_files(tmp_path / "out" / "b.nii.gz") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert sorted(p.name for p in target.parent.iterdir()) == ["scan.mhd", "scan.raw"]


def test_lazy_of_an_image_keeps_geometry():
    g = Geometry(spacing=(1.0, 2.0), origin=(0.0, 0.0), direction=np.eye(2), affine=np.eye(3))
    image = Image(np.zeros((3, 4)), "x", None, g)
    lazy = LazyImage.of(image)
    assert lazy.shape == (3, 4) and lazy.geometry.same_as(g)
    assert not lazy.geometry.same_as(Geometry(spacing=(1.0, 2.5), origin=(0.0, 0.0), direction=np.eye(2),
                                              affine=np.eye(3)))
