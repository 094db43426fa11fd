"""Reading and writing pixels with their geometry: 2D images, volumes, large rasters; masks written back.

``read(path)`` / ``open_image(path)`` pick a reader by suffix (``io.base.reader_for``); ``write_like(path, mask,
image)`` writes a mask in its image's format and geometry; ``output_path(out_dir, image)`` names it
(``scan.nii.gz`` -> ``scan.mask.nii.gz``). Readers: ``io.images`` (Pillow, ``.npy``), ``io.volumes`` (NIfTI,
NRRD, MHA/MHD, DICOM series; the ``volumes`` extra), the large-raster readers (tiled TIFF, Zarr). Never imports
a runner.
"""

from deploy_unet.io.base import (
    Geometry,
    Image,
    LazyImage,
    Reader,
    Writer,
    all_suffixes,
    atomic_files,
    open_image,
    output_path,
    read,
    reader_for,
    readers,
    register_reader,
    register_writer,
    write_like,
    writer_for,
)

__all__ = ["Geometry", "Image", "LazyImage", "Reader", "Writer", "all_suffixes", "atomic_files", "open_image",
           "output_path", "read", "reader_for", "readers", "register_reader", "register_writer", "write_like",
           "writer_for"]
