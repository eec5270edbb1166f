"""Images of the imaging platforms in the scanpy/squidpy layout: MERSCOPE mosaics and CosMx FOV images.

The platforms store large images in their own pixel frames — a MERSCOPE mosaic with an affine
from micrometres to mosaic pixels (``images/micron_to_mosaic_pixel_transform.csv``), CosMx one
image per field of view placed on the slide by its offset. experimat keeps the cells'
coordinates in the platform's global frame (``obsm['spatial']``: µm for MERSCOPE, global pixels
for CosMx), so each image is resampled onto a canvas in that frame: canvas pixel ``(i, j)`` is
centred on the global point ``(j / s, i / s)`` with ``s = scalefactors['tissue_hires_scalef']``,
exactly the scanpy layout every plot and image-using method of experimat reads. The canvas
starts at the frame's origin (0, 0) and its longest side is at most ``MAX_IMAGE_SIDE`` pixels;
the source images are read downsampled (tiled TIFFs tile by tile, never whole), so a mosaic of
tens of GB is read in bounded memory. A slide far from the origin leaves the canvas partly empty
(and its tissue at a lower resolution): the price of the single-scale-factor layout.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..._errors import ExperimatWarning
from ..._optional import has_package
from ._common import _to_uint8

#: longest side of a canvas (pixels)
MAX_IMAGE_SIDE = 4000


@dataclass
class Piece:
    """A downsampled source image and where it lies: pixel (0, 0)'s outer corner at global ``(x0, y0)``,
    ``ux``/``uy`` global units per pixel; ``flip_y``: the image's rows run against the global y axis."""

    image: np.ndarray
    x0: float
    y0: float
    ux: float
    uy: float
    flip_y: bool = False


def read_plane(path: Path, max_side: int) -> tuple[np.ndarray, int]:
    """The first plane of an image file, read with a stride so its longest side is about ``max_side``.

    TIFFs (tifffile, the ``platforms`` extra) are read through their tiles or strips (a lower
    pyramid level when one is small enough); JPEG/PNG through Pillow. Returns the plane (2-D, or
    H x W x 3 for colour images) and the stride."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            levels = list(getattr(series, "levels", None) or [series])
            full = levels[0].shape
            level = next((lv for lv in levels if max(lv.shape[-2:]) <= max_side), levels[0])
            down = full[-1] // level.shape[-1] if level is not levels[0] else 1
            z = zarr.open(level.aszarr(), mode="r")
            step = max(1, math.ceil(max(z.shape[-2:]) / max_side))
            rgb = z.ndim == 3 and z.shape[-1] in (3, 4) and series.axes.endswith("S")
            index = (slice(None, None, step), slice(None, None, step), slice(0, 3)) if rgb else \
                (0,) * (z.ndim - 2) + (slice(None, None, step), slice(None, None, step))
            plane = np.asarray(z[index])
        return plane, step * down
    from PIL import Image

    with Image.open(path) as im:
        step = max(1, math.ceil(max(im.size) / max_side))
        im = im.convert("RGB") if im.mode not in ("L", "I;16", "I") else im
        plane = np.asarray(im.reduce(step) if step > 1 else im)
    return plane, step


def compose(pieces: list[Piece], max_side: int = MAX_IMAGE_SIDE) -> tuple[np.ndarray, float]:
    """Resample ``pieces`` (nearest pixel) onto one uint8 canvas from the global origin; returns
    ``(canvas, canvas pixels per global unit)``. Parts at negative coordinates are cut off."""
    ext_x = max(p.x0 + p.image.shape[1] * p.ux for p in pieces)
    ext_y = max(p.y0 + p.image.shape[0] * p.uy for p in pieces)
    finest = min(min(p.ux, p.uy) for p in pieces)
    s = min(max_side / max(ext_x, ext_y), 1.0 / finest)  # never finer than the sources
    h, w = max(1, math.ceil(ext_y * s)), max(1, math.ceil(ext_x * s))
    colour = any(p.image.ndim == 3 for p in pieces)
    canvas = np.zeros((h, w, 3) if colour else (h, w), dtype=np.uint8)
    for p in pieces:
        img = _to_uint8(p.image)
        if colour and img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if p.flip_y:
            img = img[::-1]
        ph, pw = img.shape[:2]
        r0, r1 = max(0, math.floor(p.y0 * s)), min(h, math.ceil((p.y0 + ph * p.uy) * s))
        c0, c1 = max(0, math.floor(p.x0 * s)), min(w, math.ceil((p.x0 + pw * p.ux) * s))
        if r0 >= r1 or c0 >= c1:
            continue
        rows = np.floor(((np.arange(r0, r1) + 0.5) / s - p.y0) / p.uy).astype(np.int64)
        cols = np.floor(((np.arange(c0, c1) + 0.5) / s - p.x0) / p.ux).astype(np.int64)
        keep_r, keep_c = (rows >= 0) & (rows < ph), (cols >= 0) & (cols < pw)
        block = img[np.ix_(rows[keep_r], cols[keep_c])]
        canvas[np.ix_(np.arange(r0, r1)[keep_r], np.arange(c0, c1)[keep_c])] = block
    return canvas, s


def _tifffile_or_warn(library_id: str, what: str) -> bool:
    if has_package("tifffile"):
        return True
    warnings.warn(f"{library_id}: {what} needs tifffile (pip install 'experimat[platforms]'); reading without the image.",
                  ExperimatWarning)
    return False


# -- MERSCOPE -------------------------------------------------------------------------------------
MOSAIC = re.compile(r"^mosaic_(?P<stain>.+)_z(?P<z>\d+)\.tiff?$")


def merscope_mosaic(images_dir: Path, transform: np.ndarray | None, library_id: str, *, stain: str = "DAPI",
                    z_layer: int | None = None) -> tuple[np.ndarray, float, str] | None:
    """The mosaic ``images/mosaic_<stain>_z<z>.tif`` on a canvas in µm, or None (with a warning) when
    there is none or it cannot be placed. ``z_layer`` None: z 3 when present (the middle of the 7
    MERSCOPE layers), else the middle one found; a missing ``stain`` falls back to the first one found."""
    found = {}
    if images_dir.is_dir():
        for p in images_dir.iterdir():
            m = MOSAIC.match(p.name)
            if m:
                found.setdefault(m["stain"], {})[int(m["z"])] = p
    if not found:
        return None
    if transform is None:
        warnings.warn(f"{library_id}: mosaic images but no micron_to_mosaic_pixel_transform.csv; reading without the image.",
                      ExperimatWarning)
        return None
    if abs(transform[0, 1]) > 1e-9 or abs(transform[1, 0]) > 1e-9 or transform[0, 0] <= 0 or transform[1, 1] <= 0:
        warnings.warn(f"{library_id}: the micron-to-mosaic transform rotates or flips the image; reading without it.",
                      ExperimatWarning)
        return None
    if not _tifffile_or_warn(library_id, "the MERSCOPE mosaic"):
        return None
    stain_used = stain if stain in found else sorted(found)[0]
    layers = found[stain_used]
    z = z_layer if z_layer in layers else (3 if z_layer is None and 3 in layers else sorted(layers)[len(layers) // 2])
    if z_layer is not None and z_layer not in layers:
        warnings.warn(f"{library_id}: no z layer {z_layer} of {stain_used}; using z{z} (found {sorted(layers)}).", ExperimatWarning)
    path = layers[z]
    try:
        plane, step = read_plane(path, MAX_IMAGE_SIDE)
    except (OSError, ValueError, RuntimeError) as e:  # damaged file or a missing codec
        warnings.warn(f"{library_id}: could not read {path.name} ({e}); reading without the image.", ExperimatWarning)
        return None
    sx, sy, tx, ty = transform[0, 0], transform[1, 1], transform[0, 2], transform[1, 2]
    piece = Piece(plane, x0=-tx / sx, y0=-ty / sy, ux=step / sx, uy=step / sy)
    canvas, s = compose([piece])
    return canvas, s, path.name


# -- CosMx ----------------------------------------------------------------------------------------
FOV_IMAGE = re.compile(r"_F0*(?P<fov>\d+)\.(jpe?g|png|tiff?)$", re.IGNORECASE)


def _fov_files(path: Path) -> tuple[str, dict[str, Path]]:
    for folder in ("CellComposite", "Morphology2D"):
        d = path / folder
        if d.is_dir():
            files = {m["fov"]: p for p in sorted(d.iterdir()) if (m := FOV_IMAGE.search(p.name))}
            if files:
                return folder, files
    return "", {}


def _fov_placement(fov: str, obs_fov: np.ndarray, local: np.ndarray | None, glob: np.ndarray,
                   offsets: pd.DataFrame | None) -> tuple[float, float, bool] | None:
    """(x offset, y offset, y flipped) of a FOV: global = offset + local in x, and offset ± local in y.

    Fitted on the FOV's cells when they carry local and global coordinates (which also tells
    whether y runs the other way), else the offsets of the fov_positions file."""
    sel = obs_fov == fov
    if local is not None and sel.sum() >= 1:
        dx = glob[sel, 0] - local[sel, 0]
        same, flipped = glob[sel, 1] - local[sel, 1], glob[sel, 1] + local[sel, 1]
        flip = sel.sum() >= 2 and np.ptp(flipped) < np.ptp(same)
        return float(np.median(dx)), float(np.median(flipped if flip else same)), bool(flip)
    if offsets is not None and fov in offsets.index:
        return float(offsets.loc[fov, "x_global_px"]), float(offsets.loc[fov, "y_global_px"]), False
    return None


def cosmx_fov_images(path: Path, obs_fov: np.ndarray, local: np.ndarray | None, glob: np.ndarray,
                     offsets: pd.DataFrame | None, library_id: str) -> tuple[np.ndarray, float, str] | None:
    """The per-FOV images (``CellComposite/*_F<fov>.jpg``, else ``Morphology2D/*_F<fov>.TIF``) on one
    canvas in global pixels, or None when there are none.

    A FOV image's pixel (row, column) is taken as local pixel (y, x) of that FOV — the frame of
    ``CenterX/Y_local_px`` — and placed by :func:`_fov_placement`; FOVs that cannot be placed are
    skipped with a warning."""
    folder, files = _fov_files(path)
    if not files:
        return None
    if any(p.suffix.lower() in (".tif", ".tiff") for p in files.values()) and not _tifffile_or_warn(library_id, folder):
        return None
    per_fov = max(256, MAX_IMAGE_SIDE // max(1, math.isqrt(len(files))))  # enough pixels for the canvas, no more
    pieces, skipped = [], []
    for fov, p in files.items():
        where = _fov_placement(fov, obs_fov, local, glob, offsets)
        if where is None:
            skipped.append(fov)
            continue
        try:
            plane, step = read_plane(p, per_fov)
        except (OSError, ValueError, RuntimeError) as e:
            warnings.warn(f"{library_id}: could not read {p.name} ({e}); skipped.", ExperimatWarning)
            continue
        x0, y0, flip = where
        h = plane.shape[0] * step
        pieces.append(Piece(plane, x0=x0, y0=y0 - h if flip else y0, ux=step, uy=step, flip_y=flip))
    if skipped:
        warnings.warn(f"{library_id}: no cells and no fov_positions entry place the images of FOV(s) {skipped[:5]}; "
                      "they are left out of the image.", ExperimatWarning)
    if not pieces:
        return None
    canvas, s = compose(pieces)
    return canvas, s, folder
