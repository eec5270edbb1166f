"""Tissue images stored the scanpy/squidpy way: ``adata.uns['spatial'][library_id]``, resolved once for
plots and methods alike.

``['images'][key]`` is an ``H x W x C`` array (float in [0, 1] or integers), ``['scalefactors']`` holds
``tissue_<key>_scalef`` (image pixels per full-resolution pixel) and ``spot_diameter_fullres``.

One fallback rule: an image key that is not stored falls back along ``hires -> lowres`` (logged);
anything else missing is an error naming the stored keys. :func:`resolve_image` applies it to
``channels=['hires/r', 'hires/g', 'hires/b']`` the same way for ``pl.spatial`` and for methods that
read histology (SpaGCN, DeepST).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key
from experimat._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData

_CHANNEL_NAMES = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2, "a": 3, "alpha": 3}
_FALLBACK = {"hires": "lowres"}


def spatial_library(adata: AnnData, library_id: str | None = None, *, sample: str | None = None) -> tuple[str, dict]:
    """``(library_id, uns['spatial'][library_id])``; ``sample`` is tried when ``library_id`` is None."""
    spatial = adata.uns.get(Key.SPATIAL)
    if not isinstance(spatial, Mapping) or not spatial:
        raise MissingSlotError(
            "adata.uns['spatial'] is missing or empty, so there is no image or scale factor; read the sample with "
            "em.io (or scanpy.read_visium), which stores uns['spatial'][library_id]['images'/'scalefactors']."
        )
    if library_id is None:
        if sample is not None and sample in spatial:
            library_id = sample
        elif len(spatial) == 1:
            library_id = next(iter(spatial))
        else:
            raise InvalidInputError(
                f"uns['spatial'] holds several libraries {list(spatial)}; pass library_id= one of them."
            )
    if library_id not in spatial:
        raise KeyNotFoundError("library_id in uns['spatial']", library_id, spatial.keys())
    entry = spatial[library_id]
    if not isinstance(entry, Mapping):
        raise InvalidInputError(f"uns['spatial'][{library_id!r}] must be a dict with 'images' and 'scalefactors'.")
    return str(library_id), entry


def parse_channels(channels: str | Sequence[str]) -> tuple[str, list[int]]:
    """``["hires/r", "hires/g", "hires/b"]`` -> ``("hires", [0, 1, 2])``."""
    if isinstance(channels, str):
        channels = [channels]
    if not isinstance(channels, Sequence) or not channels:
        raise InvalidInputError(f"channels must be '<image key>/<channel>' or a list of them; got {channels!r}.")
    keys, idx = [], []
    for ch in channels:
        if not isinstance(ch, str) or ch.count("/") < 1:
            raise InvalidInputError(
                f"channel {ch!r} is not '<image key>/<channel>' (e.g. 'hires/r', 'lowres/0'); "
                "channel is r, g, b, a or an index."
            )
        key, name = ch.rsplit("/", 1)
        name_l = name.strip().lower()
        if name_l in _CHANNEL_NAMES:
            idx.append(_CHANNEL_NAMES[name_l])
        else:
            try:
                idx.append(int(name_l))
            except ValueError:
                raise InvalidInputError(f"channel {name!r} of {ch!r} is not r, g, b, a or an integer index.") from None
        keys.append(key)
    if len(set(keys)) > 1:
        raise InvalidInputError(f"all channels must come from one image; got image keys {sorted(set(keys))}.")
    if len(idx) not in (1, 3):
        raise InvalidInputError(
            f"give one channel (drawn grey or colormapped) or three (drawn as RGB); got {len(idx)}: {list(channels)}."
        )
    return keys[0], idx


def find_image(entry: Mapping, key: str, library_id: str) -> tuple[str, np.ndarray]:
    """``(key actually used, image)``; a missing ``hires`` falls back to ``lowres`` with a notice."""
    images = entry.get("images") or {}
    if key not in images:
        alt = _FALLBACK.get(key)
        if alt is not None and alt in images:
            logger.info(f"image {key!r} of library {library_id!r} is not stored; using {alt!r} instead.")
            key = alt
        else:
            raise KeyNotFoundError(
                "image",
                key,
                images.keys(),
                hint=f"(the images of uns['spatial'][{library_id!r}]; channels are given as "
                "'<image key>/<channel>', e.g. 'hires/r')",
            )
    img = np.asarray(images[key])
    if img.ndim not in (2, 3):
        raise InvalidInputError(f"image {key!r} of library {library_id!r} has shape {img.shape}; expected H x W (x C).")
    return key, img


def image_scalefactor(entry: Mapping, key: str, library_id: str) -> float:
    """Image pixels per full-resolution pixel for image ``key``."""
    sf = entry.get("scalefactors") or {}
    name = f"tissue_{key}_scalef"
    if name in sf:
        value = float(sf[name])
    elif key in ("fullres", "full"):
        value = 1.0
    else:
        raise MissingSlotError(
            f"scale factor {name!r} for image {key!r} is missing in uns['spatial'][{library_id!r}]['scalefactors'] "
            f"(present: {list(sf)}); add it (image pixels per full-resolution pixel)."
        )
    if not (np.isfinite(value) and value > 0):
        raise InvalidInputError(f"scale factor {name!r} of library {library_id!r} must be positive; got {value!r}.")
    return value


def _to_unit_float(img: np.ndarray) -> np.ndarray:
    if np.issubdtype(img.dtype, np.integer):
        top = 255.0 if img.max(initial=0) <= 255 else float(np.iinfo(img.dtype).max)
        return img.astype(np.float32) / top
    if np.issubdtype(img.dtype, np.bool_):
        return img.astype(np.float32)
    out = img.astype(np.float32, copy=False)
    if out.size and np.nanmax(out) > 1.0:  # floats stored in 0..255
        out = out / 255.0
    return out


def select_channels(img: np.ndarray, idx: list[int], key: str) -> np.ndarray:
    n = 1 if img.ndim == 2 else img.shape[2]
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise InvalidInputError(f"image {key!r} has {n} channel(s); channel index {bad[0]} does not exist.")
    img = _to_unit_float(img)
    if img.ndim == 2:
        out = np.repeat(img[:, :, None], len(idx), axis=2)
    else:
        out = img[:, :, idx]
    return out[:, :, 0] if len(idx) == 1 else np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class ResolvedImage:
    """An image found by :func:`resolve_image`: the library, the key actually used (after the fallback),
    the stored array (not copied), the channel indices asked for, and the scale factor."""

    library_id: str
    key: str
    image: np.ndarray
    channels: list[int]
    scalefactor: float
    entry: Mapping

    @property
    def spot_diameter_fullres(self) -> float | None:
        d = (self.entry.get("scalefactors") or {}).get("spot_diameter_fullres")
        return None if d is None else float(d)

    def pixels(self) -> np.ndarray:
        """The selected channels as float in [0, 1]: ``H x W`` for one channel, ``H x W x 3`` for three."""
        return select_channels(self.image, self.channels, self.key)


def resolve_image(
    adata: AnnData,
    channels: str | Sequence[str] = ("hires/r", "hires/g", "hires/b"),
    *,
    library_id: str | None = None,
    sample: str | None = None,
) -> ResolvedImage:
    """Find the image that ``channels`` (``'<image key>/<channel>'``, one or three) address.

    The library is ``library_id``, else ``sample`` when stored under that name, else the only one; the
    image key falls back ``hires -> lowres`` when ``hires`` is not stored (logged). Errors name the
    stored libraries / image keys / scale factors.
    """
    key, idx = parse_channels(channels)
    return _resolve(adata, key, idx, library_id, sample)


def resolve_image_key(
    adata: AnnData, image_key: str = "hires", *, library_id: str | None = None, sample: str | None = None
) -> ResolvedImage:
    """The whole image stored under ``image_key`` (every channel), by the same rule as
    :func:`resolve_image` (``hires`` falls back to ``lowres``)."""
    if not isinstance(image_key, str) or not image_key or "/" in image_key:
        raise InvalidInputError(f"image_key must be an image key such as 'hires' or 'lowres'; got {image_key!r}.")
    return _resolve(adata, image_key, None, library_id, sample)


def _resolve(adata, key: str, idx: list[int] | None, library_id: str | None, sample: str | None) -> ResolvedImage:
    lib, entry = spatial_library(adata, library_id, sample=sample)
    used, img = find_image(entry, key, lib)
    if idx is None:
        idx = list(range(1 if img.ndim == 2 else img.shape[2]))
    return ResolvedImage(lib, used, img, idx, image_scalefactor(entry, used, lib), entry)
