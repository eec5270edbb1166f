"""``plot_spatial``: spots over the tissue image, one panel per sample and colour key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._render import embedding_options, grid_layout, is_spatial_basis, render
from ._utils import as_adata_dict, as_key_list

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure


def plot_spatial(
    adatas: AnnData | Mapping[str, AnnData],
    *,
    channels: str | Sequence[str] | None = None,
    plot_embeddings: Mapping[str, Any] | None = None,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    share_scale: bool = False,
    ncols: int | None = None,
    library_id: str | None = None,
    img_cmap: str = "gray",
    img_alpha: float = 1.0,
) -> Figure:
    """Spots coloured by a gene, an obs column or an abundance, over the tissue image.

    One panel per sample (and per colour key when ``color`` is a list); integrated data
    (``run_on_samples=None``) are split into one panel per section, side by side. Coordinates are the
    full-resolution pixels of ``obsm[basis]`` whatever image is drawn, so ``xrange``/``yrange``
    mean the same for ``hires`` and ``lowres``.

    Parameters
    ----------
    adatas
        One AnnData or ``{sample: AnnData}`` (one panel per sample, in the dict's order). Not modified.
    channels
        The image layer: ``"<image key>/<channel>"`` or a list of them (``["hires/r", "hires/g",
        "hires/b"]``), channel ``r``/``g``/``b``/``a`` or an index. One channel is drawn with
        ``img_cmap``, three as RGB; None draws no image. Images come from
        ``uns['spatial'][library_id]['images']``; a missing ``hires`` falls back to ``lowres`` (logged).
    plot_embeddings
        The spot layer, a dict with keys ``visible`` (default True), ``basis`` (obsm key, default
        ``"spatial"``), ``color`` (None, or a key or list of keys: an obs column, a gene symbol or
        id, or ``"<obsm key>:<column>"`` such as ``"cell2location.q05:astrocytes"``; a list gives one
        panel per key), ``ptsize`` (marker area in points², as matplotlib's ``scatter(s=)``; default:
        circles of the true spot diameter ``spot_diameter_fullres``), ``cmap`` (``"viridis"``),
        ``vmin``/``vmax`` (number, None for the data range, or a quantile such as ``"p99"``),
        ``palette`` (categorical colours: a colormap name, a list, or ``{category: colour}``; one
        palette over the union of all samples' categories, so a category has the same colour in
        every sample), ``alpha``, ``legend`` (True), ``layer`` (expression layer for genes; None is
        ``X``) and ``na_color``. None draws plain spots when no image is drawn, and no spots over
        an image.
    xrange, yrange
        ``(min, max)`` in full-resolution pixels; None shows all spots (or the whole image).
    figsize
        Figure size in inches; None gives about 4 x 3.6 per panel.
    share_scale
        Continuous colours: one colour scale (and one colour bar) over all samples per key.
    ncols
        Panels per row when only one sample or one colour key is shown (default up to 4).
    library_id
        Key of ``uns['spatial']``; None uses the sample name when stored, else the only library.
    img_cmap, img_alpha
        Colormap of a one-channel image, and the image's opacity.

    Returns
    -------
    matplotlib.figure.Figure
        Not shown through pyplot; display it in a notebook or ``fig.savefig("x.pdf")`` (TrueType fonts).

    Examples
    --------
    >>> import experimat as em
    >>> adata = em.datasets.synthetic_domains(300, 3, 50, n_markers_per_domain=5, with_image=True)
    >>> fig = em.pl.plot_spatial({"s1": adata}, channels=["hires/r", "hires/g", "hires/b"],
    ...                          plot_embeddings={"color": "domain", "ptsize": 15})
    >>> fig.savefig("domains.png")  # doctest: +SKIP
    """
    if plot_embeddings is None:
        opts = embedding_options(None, visible=channels is None)
    else:
        opts = embedding_options(plot_embeddings)
    basis = opts["basis"]
    samples = as_adata_dict(adatas, split_samples=isinstance(basis, str) and is_spatial_basis(basis) and basis != "spatial.tiled")
    colors = as_key_list(opts["color"], "plot_embeddings['color']")
    rows = grid_layout(list(samples), colors, ncols)
    return render(
        samples,
        rows,
        opts=opts,
        channels=channels,
        library_id=library_id,
        xrange=xrange,
        yrange=yrange,
        figsize=figsize,
        share_scale=share_scale,
        img_cmap=img_cmap,
        img_alpha=img_alpha,
    )
