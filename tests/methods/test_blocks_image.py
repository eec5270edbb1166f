"""The one image / library / channel resolver (experimat.methods._image), shared by plots and methods."""

from __future__ import annotations

import numpy as np
import pytest

import experimat as em
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat.methods._image import parse_channels, resolve_image, resolve_image_key

RGB = ["hires/r", "hires/g", "hires/b"]


@pytest.fixture
def adata():
    return em.datasets.synthetic_domains(120, 3, 20, n_markers_per_domain=3, with_image=True, seed=0, sample="s1")


def _lowres_only(adata):
    entry = adata.uns["spatial"]["s1"]
    hires = entry["images"].pop("hires")
    entry["images"]["lowres"] = hires[::2, ::2].copy()
    entry["scalefactors"]["tissue_lowres_scalef"] = entry["scalefactors"]["tissue_hires_scalef"] / 2
    return hires


def test_channels_resolve_to_indices_and_scale(adata):
    res = resolve_image(adata, RGB)
    assert (res.library_id, res.key, res.channels) == ("s1", "hires", [0, 1, 2])
    assert res.scalefactor == pytest.approx(0.2)
    assert res.spot_diameter_fullres is not None
    np.testing.assert_array_equal(res.pixels(), adata.uns["spatial"]["s1"]["images"]["hires"])
    assert parse_channels(["hires/blue", "hires/0", "hires/G"]) == ("hires", [2, 0, 1])
    whole = resolve_image_key(adata, "hires")  # the whole image
    assert whole.key == "hires" and whole.channels == [0, 1, 2] and whole.image is res.image


def test_missing_hires_falls_back_to_lowres_everywhere(adata):
    hires = _lowres_only(adata)
    res = resolve_image(adata, RGB)
    assert res.key == "lowres" and res.scalefactor == pytest.approx(0.1)
    assert resolve_image_key(adata, "hires").key == "lowres"  # the same rule for whole images
    np.testing.assert_array_equal(res.pixels(), hires[::2, ::2])
    # the plots use the same rule
    np.testing.assert_array_equal(em.pl.get_image(adata, channels=RGB), hires[::2, ::2])


def test_errors_name_what_is_stored(adata):
    with pytest.raises(KeyNotFoundError, match="hires"):
        resolve_image(adata, ["lowres/r"])  # no fallback from lowres
    with pytest.raises(KeyNotFoundError, match="s1"):
        resolve_image(adata, RGB, library_id="other")
    with pytest.raises(InvalidInputError, match="<image key>/<channel>"):
        resolve_image(adata, "hires")  # channels name their channel
    with pytest.raises(InvalidInputError, match="image_key"):
        resolve_image_key(adata, "hires/r")
    with pytest.raises(InvalidInputError, match="one image"):
        resolve_image(adata, ["hires/r", "lowres/g", "hires/b"])
    with pytest.raises(InvalidInputError, match="channel index"):
        resolve_image(adata, ["hires/7"]).pixels()
    adata.uns["spatial"]["s2"] = adata.uns["spatial"]["s1"]
    with pytest.raises(InvalidInputError, match="library_id"):
        resolve_image(adata, RGB)
    assert resolve_image(adata, RGB, sample="s2").library_id == "s2"
    del adata.uns["spatial"]
    with pytest.raises(MissingSlotError, match="uns\\['spatial'\\]"):
        resolve_image(adata, RGB)
