"""SpatialData both ways (the ``spatialdata`` extra): :func:`from_spatialdata`, :func:`to_spatialdata`.

An experimat sample is one AnnData in the scanpy/squidpy layout; a SpatialData object holds
tables that annotate regions (shapes or labels), images and points, each element with
transformations into named coordinate systems. The conversion:

- ``from_spatialdata(sdata, table=...)`` -> AnnData: the table's counts (``layers['counts']`` if
  present, else ``X`` when it holds counts), ``obsm['spatial']`` = the centroids of the annotated
  shapes mapped into ``coordinate_system`` (or the table's own ``obsm['spatial']`` when no
  shapes element is annotated), and one image of that coordinate system (the pyramid level
  whose longest side is at most 4000 px) as ``uns['spatial'][library_id]['images']['hires']``
  with ``tissue_hires_scalef`` = image pixels per coordinate unit.
- ``to_spatialdata(samples)`` -> SpatialData: per sample a coordinate system named after it,
  circles (``<sample>_spots``, radius = ``spot_diameter_fullres`` / 2), the hires/lowres images
  (``<sample>_hires`` ...) scaled into it, and a table ``<sample>`` annotating the circles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..._errors import InvalidInputError, KeyNotFoundError
from ..._keys import Key
from ..._optional import import_optional
from ._common import _set_counts, _to_uint8

if TYPE_CHECKING:
    from anndata import AnnData

MAX_IMAGE_SIDE = 4000


def _sd():
    return import_optional("spatialdata", purpose="SpatialData conversion")


def _affine(element, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transforms = get_transformation(element, get_all=True)
    if cs not in transforms:
        raise InvalidInputError(
            f"the element has no transformation to coordinate system {cs!r}; it has {sorted(transforms)}. Pass "
            "coordinate_system=."
        )
    return np.asarray(transforms[cs].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _centroids(shapes) -> tuple[np.ndarray, np.ndarray | None]:
    geom = shapes.geometry
    if (geom.geom_type == "Point").all():
        xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()])
        radius = shapes["radius"].to_numpy(dtype=float) if "radius" in shapes else None
    else:
        c = geom.centroid
        xy = np.column_stack([c.x.to_numpy(), c.y.to_numpy()])
        radius = np.sqrt(geom.area.to_numpy() / np.pi)
    return xy.astype(np.float64), radius


def _pick_image(sdata, cs: str, name: str | None):
    names = [name] if name else [n for n in sdata.images if cs in _transforms(sdata.images[n])]
    if name and name not in sdata.images:
        raise KeyNotFoundError("image", name, list(sdata.images))
    if not names:
        return None, None
    el = sdata.images[names[0]]
    level = el
    if getattr(el, "children", None):  # a multiscale DataTree: the largest level that fits
        scales = sorted(el.children, key=lambda k: int(str(k).replace("scale", "") or 0))
        level = None
        for s in scales:
            arr = next(iter(el[s].data_vars.values()))
            if max(arr.shape[-2:]) <= MAX_IMAGE_SIDE or s == scales[-1]:
                level = arr
                break
        full = next(iter(el[scales[0]].data_vars.values()))
    else:
        full = el
    data = np.asarray(level.data if hasattr(level, "data") else level)
    step = int(max(1, np.ceil(max(data.shape[-2:]) / MAX_IMAGE_SIDE)))
    data = data[..., ::step, ::step]
    down = full.shape[-1] / data.shape[-1]
    # image pixel (full level) -> cs: the element's affine; we need cs -> this level's pixels
    to_cs = _affine(el, cs)
    px_per_unit = 1.0 / (np.sqrt(abs(np.linalg.det(to_cs[:2, :2]))) * down)
    img = np.moveaxis(data, 0, -1) if data.ndim == 3 else data  # (c, y, x) -> (y, x, c)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] not in (3, 4):
        img = img[..., 0]  # multichannel fluorescence: the first channel (usually DAPI)
    offset = to_cs[:2, 2]
    if np.abs(to_cs[:2, :2] - np.diag(np.diag(to_cs[:2, :2]))).max() > 1e-9 or np.abs(offset).max() > 1e-6:
        return None, f"image {names[0]!r} is rotated or shifted in {cs!r}; only scaled images are carried over"
    return _to_uint8(img), px_per_unit


def _transforms(el) -> dict:
    from spatialdata.transformations import get_transformation

    return get_transformation(el, get_all=True)


def from_spatialdata(
    sdata: Any,
    table: str = "table",
    *,
    coordinate_system: str = "global",
    image: str | None = None,
    library_id: str | None = None,
) -> AnnData:
    """An experimat sample (AnnData, scanpy layout) from a table of a SpatialData object.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` (or the path of a ``.zarr`` store).
    table
        The table to convert (``sdata.tables[table]``).
    coordinate_system
        Where ``obsm['spatial']`` is expressed.
    image
        The image element to carry over; by default the first one in ``coordinate_system``.
    library_id
        Key of ``uns['spatial']`` (default: the table name).

    Examples
    --------
    >>> a = em.io.from_spatialdata(sdata, table="square_008um")  # doctest: +SKIP
    """
    sd = _sd()
    if isinstance(sdata, str | os.PathLike):
        sdata = sd.read_zarr(Path(sdata))
    if table not in sdata.tables:
        raise KeyNotFoundError("table", table, list(sdata.tables))
    adata = sdata.tables[table].copy()
    library_id = library_id or table
    attrs = adata.uns.pop("spatialdata_attrs", {}) or {}
    region, region_key, instance_key = attrs.get("region"), attrs.get("region_key"), attrs.get("instance_key")
    regions = [region] if isinstance(region, str) else list(region or [])
    shapes_regions = [r for r in regions if r in sdata.shapes]
    if shapes_regions:
        xy = np.full((adata.n_obs, 2), np.nan)
        radius = np.full(adata.n_obs, np.nan)
        for r in shapes_regions:
            rows = np.ones(adata.n_obs, dtype=bool) if region_key is None or len(regions) == 1 else \
                (adata.obs[region_key].astype(str).to_numpy() == r)
            shp = sdata.shapes[r]
            cxy, rad = _centroids(shp)
            ids = adata.obs[instance_key].to_numpy()[rows] if instance_key in adata.obs else shp.index.to_numpy()[: rows.sum()]
            where = pd.Series(np.arange(len(shp)), index=shp.index)
            missing = pd.Index(ids).difference(where.index)
            if len(missing):
                raise InvalidInputError(f"{len(missing)} rows of table {table!r} have no shape in {r!r} (e.g. {list(missing[:3])}).")
            pos = where.loc[ids].to_numpy()
            m = _affine(shp, coordinate_system)
            pts = cxy[pos] @ m[:2, :2].T + m[:2, 2]
            xy[rows] = pts
            if rad is not None:
                radius[rows] = rad[pos] * np.sqrt(abs(np.linalg.det(m[:2, :2])))
        if np.isnan(xy).any():
            raise InvalidInputError(f"table {table!r}: some rows annotate no shapes element; cannot place them.")
        adata.obsm[Key.SPATIAL] = xy
    elif Key.SPATIAL not in adata.obsm:
        raise InvalidInputError(
            f"table {table!r} annotates {regions or 'no region'} — no shapes element — and has no obsm['spatial']; "
            "add centroids to obsm['spatial'] or annotate a shapes element."
        )
    else:
        radius = np.array([])
    from ...methods._checks import is_integer_matrix

    if Key.COUNTS in adata.layers:
        adata.X = adata.layers[Key.COUNTS]
    if adata.X is not None and is_integer_matrix(adata.X):
        adata = _set_counts(adata)
    sf: dict[str, Any] = {}
    finite = radius[np.isfinite(radius)] if radius.size else radius
    if finite.size:
        sf["spot_diameter_fullres"] = float(2 * np.median(finite))
    images: dict[str, np.ndarray] = {}
    img, scale = _pick_image(sdata, coordinate_system, image)
    if img is not None:
        images["hires"] = img
        sf["tissue_hires_scalef"] = float(scale)
    elif isinstance(scale, str):
        import warnings

        from ..._errors import ExperimatWarning

        warnings.warn(f"{scale}; reading without it.", ExperimatWarning)
    adata.uns[Key.SPATIAL] = {library_id: {"images": images, "scalefactors": sf,
                                           "metadata": {"source": "SpatialData", "table": table,
                                                        "coordinate_system": coordinate_system}}}
    return adata


def to_spatialdata(samples: Any, *, modality: str | None = None, images: bool = True) -> Any:
    """A :class:`spatialdata.SpatialData` from experimat samples.

    ``samples`` is an :class:`~experimat.Experiment` (all spatial samples, or those of
    ``modality``), a ``{name: AnnData}`` mapping or one AnnData. Each sample gets its own
    coordinate system (named after it, in the units of ``obsm['spatial']``), circles
    ``<sample>_spots`` at ``obsm['spatial']`` with radius ``spot_diameter_fullres / 2``, its images
    (``<sample>_hires``, ``<sample>_lowres``) scaled by ``1 / tissue_<res>_scalef`` into that system,
    and a table ``<sample>`` annotating the circles (``region``, ``instance_id``).

    Examples
    --------
    >>> sdata = em.io.to_spatialdata(expm, modality="spatial-bin")  # doctest: +SKIP
    >>> sdata.write("muscle.zarr")  # doctest: +SKIP
    """
    from anndata import AnnData

    sd = _sd()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    if isinstance(samples, AnnData):
        items = {next(iter(samples.uns.get(Key.SPATIAL, {"sample": None}))): samples}
    elif isinstance(samples, Mapping):
        items = dict(samples)
    elif hasattr(samples, "modalities") and hasattr(samples, "get_sample"):
        from ..._keys import SPATIAL_MODALITIES

        mods = [modality] if modality else [m for m in samples.modalities if m in SPATIAL_MODALITIES]
        items = {s: samples.get_sample(m, s) for m in mods for s in samples.table.samples(m)}
    else:
        raise InvalidInputError(f"to_spatialdata takes an Experiment, a dict of AnnData or an AnnData; got {type(samples).__name__}.")
    if not items:
        raise InvalidInputError("no spatial sample to convert.")
    shapes, imgs, tables = {}, {}, {}
    for name, a in items.items():
        if Key.SPATIAL not in a.obsm:
            raise InvalidInputError(f"sample {name!r} has no obsm['spatial']; nothing to place.")
        uns = a.uns.get(Key.SPATIAL, {})
        lib = uns.get(name) or (next(iter(uns.values())) if uns else {})
        sf = lib.get("scalefactors", {}) if isinstance(lib, Mapping) else {}
        xy = np.asarray(a.obsm[Key.SPATIAL], dtype=float)[:, :2]
        r = float(sf.get("spot_diameter_fullres", 1.0)) / 2.0
        region = f"{name}_spots"
        shapes[region] = ShapesModel.parse(xy, geometry=0, radius=np.full(len(xy), r), index=np.arange(len(xy)),
                                           transformations={name: Identity()})
        t = a.copy()
        t.obs["region"] = pd.Categorical([region] * t.n_obs)
        t.obs["instance_id"] = np.arange(t.n_obs)
        t.uns.pop(Key.SPATIAL, None)
        t.obs_names = t.obs_names.astype(str)
        tables[name] = TableModel.parse(t, region=region, region_key="region", instance_key="instance_id")
        if images and isinstance(lib, Mapping):
            for res, img in (lib.get("images") or {}).items():
                scale = sf.get(f"tissue_{res}_scalef")
                if scale is None:
                    continue
                arr = np.asarray(img)
                if arr.dtype != np.uint8:
                    arr = _to_uint8(arr * 255.0 if arr.dtype.kind == "f" and arr.max() <= 1.0 else arr)
                arr = arr[..., :3] if arr.ndim == 3 else arr[..., None]
                imgs[f"{name}_{res}"] = Image2DModel.parse(
                    np.moveaxis(arr, -1, 0), dims=("c", "y", "x"),
                    transformations={name: Scale([1.0 / float(scale)] * 2, axes=("x", "y"))},
                )
    return sd.SpatialData(images=imgs, shapes=shapes, tables=tables)
