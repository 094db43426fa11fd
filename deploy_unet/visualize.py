"""Pictures of masks a person can look at: palettes, indexed mask PNGs, overlays with a legend, and the
validation gallery (image | reference mask | candidate mask | where they disagree).

Pillow only (no matplotlib): these are drawn per image, often thousands of times by ``predict``.
Colours: the PASCAL VOC colour map (class 0 black, 1 dark red, 2 dark green, 3 olive, ...), the palette of
VOC's own indexed mask PNGs and of most tools that read them, distinguishable for the first few dozen ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy_unet.fileio import atomic_path

OVERLAY_ALPHA = 0.5
BACKGROUND_NAMES = ("background", "bg", "void", "unlabeled", "unlabelled", "other")
MAX_LEGEND_ROWS = 24


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours: the VOC colour map (bits of the id spread over R, G, B from the top bit down)."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


PALETTE = voc_palette()


def colour_of(class_id: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[int(class_id) % 256]
    return int(r), int(g), int(b)


def colourize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB in the palette's colours."""
    return PALETTE[np.asarray(mask, dtype=np.int64) % 256]


def class_label(class_id: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 <= class_id < len(class_names):
        return f"{class_id} {class_names[class_id]}"
    return str(class_id)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image as the user sees it, 8-bit RGB: (H, W) / (H, W, C) uint8, uint16 or float in [0, 1], or
    (C, H, W) float in [0, 1] (the model side); grey is repeated, alpha dropped."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 2, 3, 4) and image.shape[2] not in (1, 2, 3, 4):
        image = image.transpose(1, 2, 0)  # CHW -> HWC
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    c = image.shape[2]
    if c == 2:
        image = image[:, :, :1]
    elif c >= 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def transparent_classes(class_names: Sequence[str] | None) -> set[int]:
    """Classes an overlay leaves uncoloured: class 0 when it is unnamed or named like a background."""
    if not class_names or class_names[0].strip().lower() in BACKGROUND_NAMES:
        return {0}
    return set()


def blend(image_rgb: np.ndarray, mask: np.ndarray, class_names: Sequence[str] | None = None,
          alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with each class's colour blended in at ``alpha`` (background classes left as they are)."""
    colours = colourize(mask).astype(np.float32)
    out = image_rgb.astype(np.float32)
    painted = ~np.isin(mask, list(transparent_classes(class_names)))
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[painted]
    return (out + 0.5).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def legend_entries(mask: np.ndarray, num_classes: int, class_names: Sequence[str] | None) -> list[tuple[int, str]]:
    """(class id, text) rows: every class with its pixel share; only the present ones when there are many."""
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=num_classes)
    total = max(int(counts.sum()), 1)
    ids = range(len(counts)) if len(counts) <= MAX_LEGEND_ROWS else [i for i in range(len(counts)) if counts[i]]
    return [(i, f"{class_label(i, class_names)}  {100.0 * counts[i] / total:.1f}%") for i in ids]


def overlay_image(image: np.ndarray, mask: np.ndarray, num_classes: int,
                  class_names: Sequence[str] | None = None, alpha: float = OVERLAY_ALPHA):
    """A PIL image: the blended overlay on top, a legend (colour, id, name, pixel share) below it."""
    from PIL import Image, ImageDraw

    rgb = blend(display_rgb(image), mask, class_names, alpha)
    h, w = rgb.shape[:2]
    font_size = int(np.clip(w / 40, 11, 22))
    font = _font(font_size)
    entries = legend_entries(mask, num_classes, class_names)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = max(font_size + 6, max(_text_size(probe, t, font)[1] for _, t in entries) + 6)
    swatch = line - 6
    text_w = max(_text_size(probe, t, font)[0] for _, t in entries)
    pad = 6
    columns = max(1, (max(w, 1) - pad) // (swatch + text_w + 3 * pad))
    rows = -(-len(entries) // columns)
    width = max(w, swatch + text_w + 3 * pad + pad)
    canvas = Image.new("RGB", (width, h + rows * line + 2 * pad), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    col_w = swatch + text_w + 3 * pad
    for k, (class_id, text) in enumerate(entries):
        x = pad + (k // rows) * col_w
        y = h + pad + (k % rows) * line
        draw.rectangle((x, y, x + swatch, y + swatch), fill=colour_of(class_id), outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + (swatch - font_size) // 2 - 1), text, fill=(0, 0, 0), font=font)
    return canvas


def mask_image(mask: np.ndarray):
    """An indexed ("P") PIL image whose pixel values are the class ids, with the palette attached; above 256
    classes a 16-bit greyscale one (ids kept, no palette)."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.size and int(mask.max()) > 255:
        if int(mask.max()) > 65535:
            raise ValueError("class ids above 65535 do not fit a PNG")
        return Image.fromarray(mask.astype(np.uint16))
    ids = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())  # raw ids, no colour remapping
    image.putpalette(PALETTE.ravel().tolist())
    return image


def save_png(image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


# --- the validation gallery ----------------------------------------------------------------------------


@dataclass
class GallerySample:
    """One sample the gallery shows: what was fed, what both sides said (kept only for the worst few)."""

    name: str
    mask_agreement: float  # percent of pixels where candidate and reference agree
    image: np.ndarray  # (C, H, W) float in [0, 1] (or normalized values when the raw image is unknown)
    reference_mask: np.ndarray  # (H, W)
    candidate_mask: np.ndarray


@dataclass
class CheckerboardMap:
    """The logit map (one image, one class) whose checkerboard score exceeds the reference's the most."""

    name: str
    class_id: int
    candidate_score: float
    reference_score: float
    candidate: np.ndarray  # (H, W) float32 logits
    reference: np.ndarray


def _scale_for(h: int, w: int, target: int = 160) -> int:
    """Integer zoom so a small sample is big enough to see (nearest, so pixels stay pixels)."""
    return max(1, min(8, target // max(min(h, w), 1)))


def _zoom(rgb: np.ndarray, k: int) -> np.ndarray:
    return rgb if k == 1 else np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


HALO = 3  # pixels of orange ring around each differing pixel, so a lone one is visible in a 256 px tile


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square, with shifted ORs (no SciPy)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            out[yd, xd] |= mask[ys, xs]
    return out


def disagreement_rgb(image_rgb: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The image faded to grey; the pixels where the masks differ in bright red, ringed in orange."""
    grey = image_rgb.astype(np.float32).mean(axis=2, keepdims=True)
    faded = np.repeat(0.35 * grey + 0.65 * 255.0, 3, axis=2)
    differ = reference != candidate
    faded[_dilate(differ, HALO) & ~differ] = (255.0, 170.0, 60.0)
    faded[differ] = (230.0, 0.0, 0.0)
    return (faded + 0.5).astype(np.uint8)


def _grid(rows: list[list[np.ndarray]], titles: Sequence[str], captions: Sequence[str], heading: str):
    """Tiles (same size per column) under column titles, a caption above each row, a heading on top."""
    from PIL import Image, ImageDraw

    font = _font(13)
    pad, line = 6, 18
    col_w = [max(r[c].shape[1] for r in rows) for c in range(len(titles))]
    row_h = [max(t.shape[0] for t in r) for r in rows]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(_text_size(probe, t, font)[0] for t in [heading, *captions])
    width = max(sum(col_w) + pad * (len(titles) + 1), text_w + 2 * pad)
    height = 2 * line + pad + sum(h + line + pad for h in row_h)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), heading, fill=(0, 0, 0), font=font)
    x = pad
    for c, title in enumerate(titles):
        draw.text((x, line + 2), title, fill=(60, 60, 60), font=font)
        x += col_w[c] + pad
    y = 2 * line + pad
    for r, tiles in enumerate(rows):
        draw.text((pad, y), captions[r], fill=(0, 0, 0), font=font)
        y += line
        x = pad
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (x, y))
            x += col_w[c] + pad
        y += row_h[r] + pad
    return canvas


def gallery_image(samples: Sequence[GallerySample], heading: str):
    """One PIL image: a row per sample (worst first): image | reference mask | candidate mask | disagreement."""
    rows, captions = [], []
    for s in samples:
        rgb = display_rgb(s.image)
        k = _scale_for(*rgb.shape[:2])
        tiles = [rgb, colourize(s.reference_mask), colourize(s.candidate_mask),
                 disagreement_rgb(rgb, s.reference_mask, s.candidate_mask)]
        rows.append([_zoom(t, k) for t in tiles])
        differ = int(np.count_nonzero(s.reference_mask != s.candidate_mask))
        captions.append(f"{s.name}: mask agreement {s.mask_agreement:.3f}% ({differ} pixel(s) differ)")
    return _grid(rows, ("image", "reference mask", "candidate mask", "disagreement (red, ringed)"), captions, heading)


def _grey(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.repeat((np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)


def _diverging(values: np.ndarray) -> np.ndarray:
    """Blue (negative) - white - red (positive), symmetric around 0."""
    limit = float(np.abs(values).max()) or 1.0
    t = np.clip(values / limit, -1, 1)[:, :, None]
    white = np.ones(values.shape + (3,), np.float32) * 255
    red, blue = np.array([200.0, 20.0, 20.0]), np.array([20.0, 60.0, 200.0])
    out = np.where(t > 0, white + t * (red - white), white + (-t) * (blue - white))
    return (out + 0.5).astype(np.uint8)


def checkerboard_image(entry: CheckerboardMap, heading: str):
    """The worst map: candidate logits | reference logits (one grey scale) | candidate - reference."""
    low = float(min(entry.candidate.min(), entry.reference.min()))
    high = float(max(entry.candidate.max(), entry.reference.max()))
    k = _scale_for(*entry.candidate.shape)
    tiles = [_grey(entry.candidate, low, high), _grey(entry.reference, low, high),
             _diverging(entry.candidate.astype(np.float32) - entry.reference.astype(np.float32))]
    caption = (f"{entry.name}, class {entry.class_id}: checkerboard score candidate {entry.candidate_score:.4f}, "
               f"reference {entry.reference_score:.4f}")
    return _grid([[_zoom(t, k) for t in tiles]], ("candidate logits", "reference logits",
                                                   "candidate - reference"), [caption], heading)


def largest_structure_slices(mask: np.ndarray, class_names: Sequence[str] | None = None) -> tuple[int, ...]:
    """Per axis of a (i, j, k) mask, the slice holding the most voxels of the largest foreground class (the
    class with most voxels, background classes left out); the centre slices when there is no foreground."""
    mask = np.asarray(mask)
    counts = np.bincount(mask.astype(np.int64).ravel())
    for c in transparent_classes(class_names):
        if c < len(counts):
            counts[c] = 0
    if not counts.size or counts.max() == 0:
        return tuple(n // 2 for n in mask.shape)
    structure = mask == int(counts.argmax())
    return tuple(int(structure.sum(axis=tuple(a for a in range(mask.ndim) if a != axis)).argmax())
                 for axis in range(mask.ndim))


def volume_slices_image(volume: np.ndarray, mask: np.ndarray, num_classes: int,
                        class_names: Sequence[str] | None = None, spacing: Sequence[float] | None = None,
                        title: str = "", alpha: float = OVERLAY_ALPHA, target: int = 256):
    """A PIL image: three orthogonal slices of a (i, j, k) volume through the largest structure of its mask,
    the mask blended in, each panel drawn at the voxels' physical aspect (``spacing``), titled with its axis
    and index; the legend (class shares over the whole volume) below. Intensities are shown between the
    volume's 1st and 99th percentiles."""
    from PIL import Image, ImageDraw

    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(mask)
    if volume.shape != mask.shape or volume.ndim != 3:
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} must be the same 3D shape")
    low, high = (float(v) for v in np.percentile(volume, [1, 99]))
    scale = 1.0 / (high - low) if high > low else 1.0
    spacing = tuple(float(s) for s in spacing) if spacing else (1.0, 1.0, 1.0)
    at = largest_structure_slices(mask, class_names)
    panels, titles = [], []
    for axis, index in enumerate(at):
        rest = [a for a in range(3) if a != axis]
        grey = (np.take(volume, index, axis=axis) - low) * scale
        rgb = blend(display_rgb(np.clip(grey, 0, 1)), np.take(mask, index, axis=axis), class_names, alpha)
        rows, cols = rgb.shape[:2]
        h_mm, w_mm = rows * spacing[rest[0]], cols * spacing[rest[1]]
        k = target / max(h_mm, w_mm)
        size = (max(1, round(w_mm * k)), max(1, round(h_mm * k)))
        panels.append(Image.fromarray(rgb).resize(size, Image.NEAREST))
        titles.append(f"axis {axis} = {index}  ({'ijk'[rest[0]]} down, {'ijk'[rest[1]]} across)")
    font = _font(13)
    pad, line = 6, 18
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = legend_entries(mask, num_classes, class_names)
    swatch = line - 6
    legend_w = max(_text_size(probe, t, font)[0] for _, t in entries) + swatch + 3 * pad
    cols = max(1, (sum(p.width for p in panels) + pad * 4) // legend_w)
    legend_rows = -(-len(entries) // cols)
    width = max(sum(max(p.width, _text_size(probe, t, font)[0]) for p, t in zip(panels, titles)) + pad * 4,
                _text_size(probe, title, font)[0] + 2 * pad)
    height = 2 * line + pad + max(p.height for p in panels) + pad + legend_rows * line + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill=(0, 0, 0), font=font)
    x = pad
    for panel, text in zip(panels, titles):
        draw.text((x, line + 2), text, fill=(60, 60, 60), font=font)
        canvas.paste(panel, (x, 2 * line + pad))
        x += max(panel.width, _text_size(probe, text, font)[0]) + pad
    y0 = 2 * line + pad + max(p.height for p in panels) + pad
    for n, (class_id, text) in enumerate(entries):
        x, y = pad + (n // legend_rows) * legend_w, y0 + (n % legend_rows) * line
        draw.rectangle((x, y, x + swatch, y + swatch), fill=colour_of(class_id), outline=(0, 0, 0))
        draw.text((x + swatch + pad, y - 1), text, fill=(0, 0, 0), font=font)
    return canvas


def volume_gallery_image(samples: Sequence[GallerySample], heading: str):
    """``gallery_image`` for volumes: per sample (worst first) three rows, one orthogonal slice each through the
    largest structure of the reference mask (or through the most differing voxels when the masks differ):
    image | reference mask | candidate mask | disagreement."""
    rows, captions = [], []
    for s in samples:
        image = np.asarray(s.image, np.float32)
        volume = image[0] if image.ndim == 4 else image  # (C, D, H, W): the first channel is shown
        differ = s.reference_mask != s.candidate_mask
        at = largest_structure_slices(differ.astype(np.uint8)) if differ.any() else \
            largest_structure_slices(s.reference_mask)
        total = int(np.count_nonzero(differ))
        for axis, index in enumerate(at):
            grey = np.clip(np.take(volume, index, axis=axis), 0.0, 1.0)
            ref, cand = np.take(s.reference_mask, index, axis=axis), np.take(s.candidate_mask, index, axis=axis)
            rgb = display_rgb(grey)
            k = _scale_for(*rgb.shape[:2])
            tiles = [rgb, colourize(ref), colourize(cand), disagreement_rgb(rgb, ref, cand)]
            rows.append([_zoom(t, k) for t in tiles])
            captions.append(f"{s.name}, axis {axis} slice {index}: mask agreement {s.mask_agreement:.3f}% over the "
                            f"volume ({total} voxel(s) differ)")
    return _grid(rows, ("image", "reference mask", "candidate mask", "disagreement (red, ringed)"), captions, heading)
