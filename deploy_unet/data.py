"""Sample data for training, calibration, validation and benchmarks: one entry, ``load_samples``.

Sources (strings, as the CLI takes them):

- ``synthetic`` / ``synthetic:seed=7,size=256x256`` -- a deterministic generator of segmentation scenes:
  textured noisy backgrounds with ellipses, convex polygons and thin curvilinear structures. Sample ``i``
  of seed ``s`` depends only on ``(s, i)``, so any subset is reproducible. Classes: 0 background,
  1 ellipse, 2 polygon, 3 thin structure (fewer shape kinds when a net has fewer classes). The class is
  recoverable from the image twice over: by the shape and by a per-class colour/texture cue (ellipses
  warm with a radial shading, polygons green with stripes, thin structures blue and flat). Object sizes
  are in pixels, not fractions of the image, so a net trained on 96 px crops sees the same objects at
  256 px.
- ``synthetic:size=DxHxW`` (or any ``synthetic`` source for a net with 3 spatial dims) -- synthetic
  **volumes** (NCDHW, one channel as CT/MRI): a smooth noisy background with bright ellipsoids (class 1,
  "blob") and dark tubes of radius 1.5-3 voxels (class 2, "tube"); seeded the same way (sample ``i`` of seed
  ``s`` depends only on ``(s, i)``), object sizes in voxels.
- a folder of images (PNG/JPEG/BMP/TIFF via Pillow), optionally with masks: ``DIR`` holding ``images/`` and
  ``masks/`` subfolders (masks matched by file stem, single-channel PNG of class indices), or the
  ``masks=`` argument.
- a ``.npy`` file (images only) or ``.npz`` with ``images`` (and optionally ``masks``); images NCHW or
  NHWC, uint8 (scaled by 1/255) or float in [0, 1].

Every source is checked where it is read, so each data-reading command (quantize ``--calib``/``--eval``,
validate ``--data``, pipeline) refuses bad data in one line naming the source and the sample index:
NaN or Inf values, an image file that cannot be decoded, an array of the wrong rank or dtype. The
synthetic generator cannot produce any of these.

Preprocessing comes from the model's metadata (``ModelInfo``): channel count, ``mean``/``std``
normalization, and the divisor the spatial size must respect (resize to a valid size, or pad).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, DataError
from deploy_unet.io.images import IMAGE_SUFFIXES, _check_dtype, check_finite, load_sample_arrays  # noqa: F401 (moved to io, re-exported)
from deploy_unet.io.images import decode_sample as _decode
from deploy_unet.io.images import read_samples_array as _read_array
from deploy_unet.shapes import Padding, is_valid, nearest_valid, nearest_valid_shape, pad_to_multiple

CLASS_NAMES = ("background", "ellipse", "polygon", "thin")
CLASS_NAMES_3D = ("background", "blob", "tube")
DEFAULT_VOLUME_SIZE = (32, 64, 64)
DEFAULT_SIZE = (256, 256)

# Base colour per foreground class (RGB); each object jitters around it.
_CLASS_COLOURS = {1: (0.85, 0.35, 0.15), 2: (0.20, 0.75, 0.30), 3: (0.20, 0.35, 0.90)}


# --- the synthetic generator -------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """Settings of the generator; ``synthetic:seed=S,size=HxW,noise=N`` parses into one."""

    seed: int = 0
    height: int = DEFAULT_SIZE[0]
    width: int = DEFAULT_SIZE[1]
    noise: float = 0.06
    objects_per_64px: float = 1.2  # objects per 64x64 area (density, so any image size looks alike)
    depth: int = 0  # > 0: volumes of depth x height x width (synthetic_volume); 0: 2D scenes

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return (self.depth, self.height, self.width) if self.depth else (self.height, self.width)


def synthetic_sample(
    spec: SyntheticSpec, index: int, num_classes: int = 4, in_channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image float32 (C, H, W) in [0, 1] and mask int64 (H, W) of class indices."""
    rng = np.random.default_rng([spec.seed, index])
    h, w = spec.height, spec.width
    kinds = [k for k in (1, 2, 3) if k < num_classes]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    image = _background(rng, h, w)
    mask = np.zeros((h, w), dtype=np.int64)
    if kinds:
        n_objects = max(1, int(rng.poisson(spec.objects_per_64px * h * w / 4096)))
        for _ in range(n_objects):
            kind = int(rng.choice(kinds))
            region = _SHAPES[kind](rng, yy, xx, h, w)
            if not region.any():
                continue
            image = np.where(region[None], _fill(rng, kind, yy, xx), image)
            mask[region] = kind
    image = image + rng.normal(0.0, spec.noise, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return _to_channels(image, in_channels), mask


def synthetic_batch(
    spec: SyntheticSpec, start: int, n: int, num_classes: int = 4, in_channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``start .. start+n-1``: images (N, C, H, W) float32, masks (N, H, W) int64."""
    pairs = [synthetic_sample(spec, start + i, num_classes, in_channels) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --- synthetic volumes (NCDHW) -----------------------------------------------------------------------


def synthetic_volume(
    spec: SyntheticSpec, index: int, num_classes: int = 3, in_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One volume: image float32 (C, D, H, W) in [0, 1] and mask int64 (D, H, W). Classes: 0 background,
    1 blob (bright ellipsoid, radially shaded), 2 tube (dark cylinder segment, radius 1.5-3 voxels); fewer
    kinds when the net has fewer classes. Density: 4 x ``objects_per_64px`` objects per 32x64x64 voxels."""
    rng = np.random.default_rng([spec.seed, index, 3])
    d, h, w = spec.depth or DEFAULT_VOLUME_SIZE[0], spec.height, spec.width
    kinds = [k for k in (1, 2) if k < num_classes]
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    coarse = rng.uniform(-0.12, 0.12, size=(max(2, d // 12), max(2, h // 16), max(2, w // 16))).astype(np.float32)
    image = rng.uniform(0.35, 0.5) + _resize_trilinear(coarse, d, h, w)
    mask = np.zeros((d, h, w), dtype=np.int64)
    if kinds:
        n_objects = max(1, int(rng.poisson(4 * spec.objects_per_64px * d * h * w / (32 * 64 * 64))))
        for _ in range(n_objects):
            kind = int(rng.choice(kinds))
            centre = rng.uniform(0, 1, 3) * (d, h, w)
            if kind == 1:
                radii = rng.uniform(3, 9, 3)
                dist = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                               + ((xx - centre[2]) / radii[2]) ** 2)
                region = dist <= 1.0
                fill = rng.uniform(0.3, 0.4) * (1.0 - 0.3 * dist)
            else:
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction) + 1e-9
                length, radius = rng.uniform(12, 40), rng.uniform(1.5, 3.0)
                rel = np.stack([zz - centre[0], yy - centre[1], xx - centre[2]])
                t = np.clip(np.tensordot(direction, rel, axes=1), -length / 2, length / 2)
                dist = np.linalg.norm(rel - t[None] * direction[:, None, None, None], axis=0)
                region = dist <= radius
                fill = -rng.uniform(0.25, 0.32) * np.ones_like(dist)
            if not region.any():
                continue
            image = np.where(region, image + fill, image)
            mask[region] = kind
    image = image + rng.normal(0.0, spec.noise, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)[None]
    return (np.repeat(image, in_channels, axis=0) if in_channels != 1 else image), mask


def synthetic_volume_batch(
    spec: SyntheticSpec, start: int, n: int, num_classes: int = 3, in_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Volumes ``start .. start+n-1``: images (N, C, D, H, W) float32, masks (N, D, H, W) int64."""
    pairs = [synthetic_volume(spec, start + i, num_classes, in_channels) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _resize_trilinear(array: np.ndarray, d: int, h: int, w: int) -> np.ndarray:
    """(d0, h0, w0) -> (d, h, w), linear along each axis with half-pixel centres."""
    planes = _resize_bilinear(array, h, w)  # (d0, h, w)
    d0 = array.shape[0]
    zs = np.clip((np.arange(d) + 0.5) * d0 / d - 0.5, 0, d0 - 1)
    z0 = np.floor(zs).astype(int)
    z1 = np.minimum(z0 + 1, d0 - 1)
    fz = (zs - z0)[:, None, None]
    return (planes[z0] * (1 - fz) + planes[z1] * fz).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency coloured clutter plus a fine grey texture: not flat, so nets must look at shape."""
    base = rng.uniform(0.3, 0.6)
    coarse = rng.uniform(-0.15, 0.15, size=(3, max(2, h // 24), max(2, w // 24))).astype(np.float32)
    smooth = _resize_bilinear(coarse, h, w)
    fine = rng.uniform(-0.06, 0.06, size=(1, max(2, h // 4), max(2, w // 4))).astype(np.float32)
    return (base + smooth + _resize_bilinear(fine, h, w)).astype(np.float32)


def _fill(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    colour = np.array(_CLASS_COLOURS[kind], dtype=np.float32) + rng.uniform(-0.1, 0.1, 3).astype(np.float32)
    if kind == 1:  # ellipse: radial-ish shading
        cy, cx = rng.uniform(0, yy.shape[0]), rng.uniform(0, yy.shape[1])
        shade = 1.0 - 0.25 * np.tanh(np.hypot(yy - cy, xx - cx) / 40.0)
    elif kind == 2:  # polygon: stripes at a random angle
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 8.0)
        shade = 0.85 + 0.15 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)
    else:  # thin structure: flat
        shade = np.ones_like(yy)
    return (colour[:, None, None] * shade[None]).astype(np.float32)


def _ellipse(rng, yy, xx, h, w) -> np.ndarray:
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(5, 22), rng.uniform(5, 22)
    t = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _polygon(rng, yy, xx, h, w) -> np.ndarray:
    """Convex polygon with 3-6 vertices: inside = on the same side of every edge."""
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    n = int(rng.integers(3, 7))
    # evenly spread angles (jittered) so the polygon is never a sliver
    angles = rng.uniform(0, 2 * np.pi) + (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
    radius = rng.uniform(10, 24, n)
    py, px = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
    inside = np.ones(yy.shape, dtype=bool)
    for i in range(n):
        j = (i + 1) % n
        cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
        inside &= cross >= 0
    return inside


def _thin(rng, yy, xx, h, w) -> np.ndarray:
    """A polyline of 2-3 segments, 1-3 px thick (vessels, cracks, wires)."""
    half = rng.uniform(0.7, 1.6)
    points = [(rng.uniform(0, h), rng.uniform(0, w))]
    for _ in range(int(rng.integers(2, 4))):
        length, angle = rng.uniform(15, 45), rng.uniform(0, 2 * np.pi)
        points.append((points[-1][0] + length * np.sin(angle), points[-1][1] + length * np.cos(angle)))
    region = np.zeros(yy.shape, dtype=bool)
    for (ay, ax), (by, bx) in zip(points[:-1], points[1:], strict=True):
        vy, vx = by - ay, bx - ax
        t = np.clip(((yy - ay) * vy + (xx - ax) * vx) / max(vy * vy + vx * vx, 1e-6), 0.0, 1.0)
        region |= np.hypot(yy - (ay + t * vy), xx - (ax + t * vx)) <= half
    return region


_SHAPES = {1: _ellipse, 2: _polygon, 3: _thin}


def _resize_bilinear(array: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of (C, h0, w0) to (C, h, w), half-pixel centres (as Resize/align_corners=False)."""
    c, h0, w0 = array.shape
    ys = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = array[:, y0][:, :, x0] * (1 - fx) + array[:, y0][:, :, x1] * fx
    bottom = array[:, y1][:, :, x0] * (1 - fx) + array[:, y1][:, :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _resize_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    h0, w0 = mask.shape[-2:]
    ys = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(int), h0 - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(int), w0 - 1)
    return mask[..., ys[:, None], xs[None, :]]


def _to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt (C, H, W) to the net's channel count: RGB->grey by luma, grey->RGB by repeating."""
    c = image.shape[0]
    if c == in_channels:
        return image
    if in_channels == 1 and c == 3:
        return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None].astype(np.float32)
    if c == 1:
        return np.repeat(image, in_channels, axis=0)
    raise ConfigError(f"images have {c} channels but the model takes {in_channels}; convert them first")


# --- sources -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A parsed source string. ``key`` identifies the data, for the calibration != evaluation rule."""

    kind: str  # "synthetic" | "folder" | "array"
    text: str
    synthetic: SyntheticSpec | None = None
    path: Path | None = None

    @property
    def key(self) -> str:
        if self.synthetic is not None:
            return f"synthetic:seed={self.synthetic.seed}"
        return f"{self.kind}:{self.path.resolve() if self.path else self.text}"


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ConfigError(f"size {text!r} is not valid; write HxW (e.g. 256x256) or one number for a square")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h < 1 or w < 1:
        raise ConfigError(f"size {text!r} must be positive")
    return h, w


def parse_spatial_size(text: str) -> tuple[int, ...]:
    """``HxW`` (or one number for a square) -> (H, W); ``DxHxW`` -> (D, H, W), for volumes."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        return parse_size(text)
    dims = tuple(int(g) for g in m.groups())
    if min(dims) < 1:
        raise ConfigError(f"size {text!r} must be positive")
    return dims


def parse_source(text: str, default_size: tuple[int, ...] | None = None) -> Source:
    """Parse ``synthetic[:k=v,...]``, a folder, or a .npy/.npz path."""
    text = str(text).strip()
    if text == "synthetic" or text.startswith("synthetic:"):
        size = default_size or DEFAULT_SIZE
        params: dict = {"height": size[-2], "width": size[-1]}
        if len(size) == 3:
            params["depth"] = size[0]
        body = text[len("synthetic:"):] if ":" in text else ""
        for item in filter(None, (p.strip() for p in body.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            try:
                if not sep:
                    raise ValueError
                if key == "seed":
                    params["seed"] = int(value)
                elif key == "size":
                    dims = parse_spatial_size(value)
                    params["height"], params["width"] = dims[-2:]
                    params["depth"] = dims[0] if len(dims) == 3 else 0
                elif key == "noise":
                    params["noise"] = float(value)
                elif key == "density":
                    params["objects_per_64px"] = float(value)
                else:
                    raise KeyError(key)
            except KeyError:
                raise ConfigError(
                    f"synthetic option {key!r} is unknown; use seed=INT, size=HxW (or DxHxW), noise=FLOAT, density=FLOAT"
                ) from None
            except ValueError:
                raise ConfigError(
                    f"synthetic option {item!r} is not valid; write key=value, e.g. synthetic:seed=7,size=256x256"
                ) from None
        return Source("synthetic", text, synthetic=SyntheticSpec(**params))
    path = Path(text).expanduser()
    if path.is_dir():
        return Source("folder", text, path=path)
    if path.suffix.lower() in (".npy", ".npz"):
        if not path.is_file():
            raise ArtifactError(f"data file {path} does not exist")
        return Source("array", text, path=path)
    if not path.exists():
        raise ArtifactError(
            f"data source {text!r} is neither 'synthetic[:seed=S,size=HxW]' nor an existing folder or .npy/.npz file"
        )
    raise ConfigError(f"data source {text!r}: a single file must be .npy or .npz; for images pass their folder")


def check_distinct_sources(calib: str | Source, evaluation: str | Source) -> None:
    """Calibrating and evaluating on the same data hides overfitting of the ranges: refuse it."""
    a = calib if isinstance(calib, Source) else parse_source(calib)
    b = evaluation if isinstance(evaluation, Source) else parse_source(evaluation)
    if a.key == b.key:
        hint = (
            "use another seed for one of them (e.g. --calib synthetic:seed=1 --eval synthetic:seed=2)"
            if a.kind == "synthetic"
            else "pass a different folder or file for one of them"
        )
        raise ConfigError(f"calibration and evaluation data are the same ({a.key}); they must differ: {hint}")


def _read_folder(path: Path, masks: Path | None, n: int | None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    image_dir = path / "images" if (path / "images").is_dir() else path
    if masks is None and (path / "masks").is_dir() and image_dir != path:
        masks = path / "masks"
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ArtifactError(f"folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:n] if n else files
    images, labels = [], [] if masks is not None else None
    for index, file in enumerate(files):
        arr = _decode(file, index, image_dir, lambda im: im.convert("L" if im.mode in ("L", "I", "I;16", "1") else "RGB"))
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        images.append(arr.astype(np.float32) / 255.0)
        if masks is not None:
            candidates = [masks / f"{file.stem}{s}" for s in (".png", ".bmp", ".tif", ".tiff")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise ArtifactError(f"no mask for {file.name} in {masks} (expected {file.stem}.png)")
            label = _decode(found, index, masks, lambda im: im)
            if label.ndim != 2:
                raise ArtifactError(f"mask {found} has {label.ndim} dims; masks are single-channel class indices")
            if label.shape != arr.shape[1:]:
                raise ArtifactError(f"mask {found} is {label.shape}, its image is {arr.shape[1:]}; they must match")
            labels.append(label.astype(np.int64))
    return images, labels


# --- the shared entry --------------------------------------------------------------------------------


@dataclass
class Samples:
    """Model-ready inputs: ``images`` (N, C, H, W) float32, normalized; ``masks`` (N, H, W) int64 or None."""

    images: np.ndarray
    masks: np.ndarray | None
    source: str
    raw: np.ndarray  # the same images before normalization, in [0, 1] (for overlays)
    padding: Padding | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def normalize(images: np.ndarray, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    if not mean and not std:
        return images.astype(np.float32, copy=False)
    c = images.shape[1]
    ones = (1,) * (images.ndim - 2)  # NCHW or NCDHW
    m = np.asarray(mean or [0.0] * c, dtype=np.float32).reshape(1, -1, *ones)
    s = np.asarray(std or [1.0] * c, dtype=np.float32).reshape(1, -1, *ones)
    if m.shape[1] not in (1, c) or s.shape[1] not in (1, c):
        raise ConfigError(f"normalization has {m.shape[1]} mean / {s.shape[1]} std values for {c} channels")
    return ((images - m) / s).astype(np.float32)


def _target_size(info, size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size:
        return size
    shape = list(getattr(info, "export_shape", None) or [])
    if len(shape) in (4, 5) and all(isinstance(v, int) and v > 0 for v in shape[2:]):
        return tuple(int(v) for v in shape[2:])
    return None


def load_samples(
    source: str | Source,
    info=None,
    n: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    fit: str = "resize",
    masks: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    divisor: int | None = None,
) -> Samples:
    """Load ``n`` samples from a source and prepare them for a model described by ``info`` (ModelInfo).

    Size: ``size`` if given, else the model's export shape when static, else the synthetic size / the
    first image's size; then ``fit="resize"`` snaps to the nearest valid multiple of the divisor at or
    above, ``fit="pad"`` pads bottom/right (the runners crop back). Explicit keyword values override
    ``info``.
    """
    if fit not in ("resize", "pad"):
        raise ConfigError(f"fit={fit!r} is not valid; choose resize or pad")
    if n is not None and n < 1:
        raise ConfigError(f"sample count {n} must be >= 1")
    num_classes = num_classes or (info.num_classes if info else 4)
    in_channels = in_channels or (info.in_channels if info else 3)
    mean = mean if mean is not None else (list(info.mean) if info and info.mean else None)
    std = std if std is not None else (list(info.std) if info and info.std else None)
    divisor = divisor or (info.divisor if info else 1)
    target = _target_size(info, size)
    if getattr(info, "spatial_dims", 2) == 3 and target is not None and len(target) == 2:
        raise ConfigError(f"size {'x'.join(map(str, target))} has 2 axes; this model takes volumes: give DxHxW")
    if (target is None or len(target) == 2) and getattr(info, "spatial_dims", 2) == 3:
        target = DEFAULT_VOLUME_SIZE
    src = source if isinstance(source, Source) else parse_source(source, default_size=target)
    if getattr(info, "spatial_dims", 2) == 3 or (target is not None and len(target) == 3) or (
            src.synthetic is not None and src.synthetic.depth):
        return _load_volumes(src, info, n, size, num_classes if info else 3, in_channels if info else 1,
                             mean, std)
    notes: list[str] = []

    if src.kind == "synthetic":
        spec = src.synthetic
        if size:
            spec = SyntheticSpec(**{**spec.__dict__, "height": size[0], "width": size[1]})
        images, labels = synthetic_batch(spec, 0, n or 16, num_classes, in_channels)
    elif src.kind == "folder":
        image_list, label_list = _read_folder(src.path, Path(masks) if masks else None, n)
        hw = target or image_list[0].shape[1:]
        if fit == "pad" and any(im.shape[1:] != image_list[0].shape[1:] for im in image_list):
            raise ConfigError(f"images in {src.path} differ in size; use fit=resize (or --size) to batch them")
        images = np.stack([_to_channels(_resize_image(im, hw, fit), in_channels) for im in image_list])
        labels = None
        if label_list is not None:
            labels = np.stack([_resize_mask(lb, hw, fit) for lb in label_list])
    else:
        images, labels = _read_array(src.path, n)
        if target and fit == "resize":
            images = np.stack([_resize_image(im, target, fit) for im in images])
            labels = None if labels is None else np.stack([_resize_mask(lb, target, fit) for lb in labels])
        images = np.stack([_to_channels(im, in_channels) for im in images])

    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ArtifactError(
            f"masks from {src.text} hold labels up to {labels.max()}, but the model has {num_classes} classes"
        )

    padding = None
    h, w = images.shape[2:]
    contract = info.shape_contract if info is not None else None
    if contract is not None and not contract.is_divisor_only and fit == "resize":
        # A valid-convolution net: sizes divisor*k + remainder (its metadata says), not multiples.
        if not (contract.is_valid_input(h) and contract.is_valid_input(w)):
            nh, nw = contract.nearest_valid_inputs(h)[1], contract.nearest_valid_inputs(w)[1]
            images = np.stack([_resize_image(im, (nh, nw), "resize") for im in images])
            labels = None if labels is None else np.stack([_resize_mask(lb, (nh, nw), "resize") for lb in labels])
            notes.append(f"resized {h}x{w} -> {nh}x{nw} ({contract.rule()})")
    elif not is_valid((h, w), divisor):
        if fit == "resize":
            nh, nw = nearest_valid(h, divisor)[1], nearest_valid(w, divisor)[1]
            images = np.stack([_resize_image(im, (nh, nw), "resize") for im in images])
            labels = None if labels is None else np.stack([_resize_mask(lb, (nh, nw), "resize") for lb in labels])
            notes.append(f"resized {h}x{w} -> {nh}x{nw} (divisor {divisor})")
        else:
            images, padding = pad_to_multiple(images, divisor)
            notes.append(f"padded {h}x{w} -> {images.shape[2]}x{images.shape[3]} (divisor {divisor})")
    raw = images.astype(np.float32, copy=False)
    check_finite(raw, src.text)  # every source, whatever its reader checked
    scale = float(getattr(info, "value_scale", 1.0) or 1.0)  # a net trained on 0..255 (describe --scale 255)
    return Samples(
        images=normalize(raw * np.float32(scale) if scale != 1.0 else raw, mean, std), masks=labels, source=src.text, raw=raw, padding=padding, notes=notes
    )


def _resize_image(image: np.ndarray, hw: tuple[int, int], fit: str) -> np.ndarray:
    if tuple(image.shape[1:]) == tuple(hw) or fit == "pad":
        return image
    return _resize_bilinear(image.astype(np.float32), int(hw[0]), int(hw[1]))


def _resize_mask(mask: np.ndarray, hw: tuple[int, int], fit: str) -> np.ndarray:
    if tuple(mask.shape) == tuple(hw) or fit == "pad":
        return mask
    return _resize_nearest(mask, int(hw[0]), int(hw[1]))


def _load_volumes(src: Source, info, n: int | None, size: tuple[int, ...] | None, num_classes: int,
                  in_channels: int, mean, std) -> Samples:
    """Volumes (N, C, D, H, W) for a net with 3 spatial dims: synthetic volumes at a valid size, or a
    .npy/.npz of NCDHW (or NDHW) arrays padded per axis to the net's divisors (the runners crop back).
    Reading volume files (NIfTI, NRRD, DICOM) is ``deploy_unet.io``'s."""
    from deploy_unet.shapes import ShapeContract

    contract = info.shape_contract if info is not None else ShapeContract(1, spatial_dims=3)
    if contract.spatial_dims != 3:
        raise ConfigError(f"{src.text} holds volumes, but the model takes 2D images (NCHW); pass 2D data")
    notes: list[str] = []
    padding = None
    if src.kind == "synthetic":
        spec = src.synthetic
        shape = tuple(size) if size and len(size) == 3 else (spec.depth or DEFAULT_VOLUME_SIZE[0], spec.height,
                                                             spec.width)
        if contract.is_divisor_only:
            valid = nearest_valid_shape(shape, contract.axis_divisors)
        else:
            valid = tuple(contract.nearest_valid_inputs(v)[1] for v in shape)
        if valid != shape:
            notes.append(f"synthetic size {'x'.join(map(str, shape))} -> {'x'.join(map(str, valid))} "
                         f"({contract.rule_text()})")
        spec = SyntheticSpec(**{**spec.__dict__, "depth": valid[0], "height": valid[1], "width": valid[2]})
        images, labels = synthetic_volume_batch(spec, 0, n or 4, num_classes, in_channels)
    elif src.kind == "array":
        images, labels = _read_volume_array(src.path, n)
        if images.shape[1] != in_channels:
            raise DataError(f"{src.path}: volumes have {images.shape[1]} channels, the model takes {in_channels}")
        if not contract.is_valid_shape(images.shape[2:]):
            before = "x".join(map(str, images.shape[2:]))
            images, padding = pad_to_multiple(images, contract.axis_divisors)
            if labels is not None:
                labels, _ = pad_to_multiple(labels[:, None], contract.axis_divisors, "constant")
                labels = labels[:, 0]
            notes.append(f"padded {before} -> {'x'.join(map(str, images.shape[2:]))} ({contract.rule_text()})")
    else:
        raise ConfigError(
            f"data source {src.text!r}: a folder of images is 2D; for volumes pass synthetic[:size=DxHxW] or an "
            ".npy/.npz of NCDHW arrays (volume files: deploy-unet predict)"
        )
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ArtifactError(
            f"masks from {src.text} hold labels up to {labels.max()}, but the model has {num_classes} classes"
        )
    raw = images.astype(np.float32, copy=False)
    check_finite(raw, src.text)
    return Samples(images=normalize(raw, mean, std), masks=labels, source=src.text, raw=raw, padding=padding,
                   notes=notes)


def _read_volume_array(path: Path, n: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy (volumes) or .npz (``images`` and optional ``masks``) of NCDHW or NDHW volumes."""
    images, masks = load_sample_arrays(path, "volumes", single_array=False)
    if images.ndim == 4:
        images = images[:, None]
    if images.ndim != 5:
        raise DataError(f"{path}: volumes have shape {images.shape} (rank {images.ndim}); expected NCDHW or NDHW")
    if n:
        images = images[:n]
        masks = masks[:n] if masks is not None else None
    if np.issubdtype(images.dtype, np.integer):
        images = images.astype(np.float32) / 255.0
    check_finite(images, os.fspath(path))
    images = images.astype(np.float32)
    if masks is not None:
        _check_dtype(masks, path, "masks")
        masks = masks.astype(np.int64)
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ArtifactError(f"{path}: masks {masks.shape} do not match volumes {images.shape} (want N,D,H,W)")
    return images, masks
