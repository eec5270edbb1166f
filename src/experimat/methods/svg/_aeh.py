"""Automatic expression histology (AEH): SpatialDE's grouping of spatially variable genes into
a few smooth spatial patterns (Svensson et al., Nature Methods 2018).

Model: z-scored gene profiles ``y_g ~ N(μ_{z_g}, σ² I)`` with patterns ``μ_c ~ GP(0, K_l)`` (SE
kernel of lengthscale ``l``) and memberships ``z_g ~ Cat(π)``, ``π ~ Dir(α0)``. Mean-field
variational Bayes: ``q(z_g)`` categorical, ``q(μ_c)`` Gaussian (diagonal in the kernel's
eigenbasis), ``σ²`` by maximum likelihood. Iterated in JAX until the memberships settle.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from experimat._errors import InvalidInputError, MissingSlotError
from experimat._keys import Key
from experimat.methods._checks import counts_input

_DEFAULT_KEYS = ("spatialde", "spatialde_gp", "moran")


#: variational iterations per compiled call; the progress bar advances between calls
_CHUNK = 25


@cache
def _vb(C: int):
    """Jitted ``(step_until, finish)``: ``step_until(state, stop, Yt, S, alpha0)`` iterates the
    updates from ``state = (R, s2e, change, it)`` until ``it == stop`` or the memberships settle;
    ``finish`` returns the final memberships, pattern means and noise variance. Iterating in
    chunks gives exactly the updates of one loop to ``n_iter`` (the bar is shown between chunks)."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import digamma

    def stats(R, s2e, Yt, S, alpha0):
        G = Yt.shape[0]
        Sinv = 1.0 / jnp.maximum(S, 1e-8)
        Nc = R.sum(0)  # (C,)
        d = 1.0 / (Sinv[None, :] + Nc[:, None] / s2e)  # (C, n) posterior variances
        m = d * (R.T @ Yt) / s2e  # (C, n) posterior means
        sq = (Yt**2).sum(1)[:, None] - 2.0 * Yt @ m.T + (m**2).sum(1)[None, :] + d.sum(1)[None, :]
        elog_pi = digamma(alpha0 + Nc) - digamma(C * alpha0 + G)
        logits = elog_pi[None, :] - 0.5 * sq / s2e
        return jax.nn.softmax(logits, axis=1), m, sq

    def step_until(state, stop, Yt, S, alpha0):
        # Yt: (G, n) gene profiles in the kernel's eigenbasis; S: (n,) eigenvalues
        G, n = Yt.shape

        def step(state):
            R, s2e, _, it = state
            Rn, _, sq = stats(R, s2e, Yt, S, alpha0)
            s2e_n = jnp.maximum((Rn * sq).sum() / (G * n), 1e-6)
            change = jnp.abs(Rn - R).max()
            return Rn, s2e_n, change, it + 1

        def cond(state):
            return (state[3] < stop) & (state[2] > 1e-6)

        return jax.lax.while_loop(cond, step, state)

    def finish(R, s2e, Yt, S, alpha0):
        Rn, m, _ = stats(R, s2e, Yt, S, alpha0)
        return Rn, m

    return jax.jit(step_until), jax.jit(finish)


def _select_genes(adata, genes) -> tuple[list[str], str | None]:
    from experimat.methods._checks import resolve_genes

    if genes is None:
        for key in _DEFAULT_KEYS:
            if f"{key}.svg" in adata.var.columns:
                genes = key
                break
        else:
            raise MissingSlotError(
                "no SVG result found in adata.var (looked for "
                f"{[k + '.svg' for k in _DEFAULT_KEYS]}); run spatial_svg first or pass genes=[...]."
            )
    if isinstance(genes, str) and f"{genes}.svg" in adata.var.columns:
        sel = adata.var_names[adata.var[f"{genes}.svg"].fillna(False).to_numpy(dtype=bool)]
        return list(sel), genes
    if isinstance(genes, str):
        keys = sorted({c.rsplit(".", 1)[0] for c in adata.var.columns if c.endswith(".svg")})
        if genes in adata.var_names or genes.lower() in {str(g).lower() for g in adata.var_names}:
            return resolve_genes(adata, [genes]), None
        raise MissingSlotError(
            f"genes={genes!r} is neither an SVG result key nor a gene; SVG result keys in adata.var: {keys}."
        )
    return resolve_genes(adata, list(genes)), None


@counts_input("layer", when=lambda o: o.get("normalize") != "none")
def spatial_patterns(
    adata,
    *,
    genes: str | Sequence[str] | None = None,
    n_patterns: int = 5,
    lengthscale: float | None = None,
    layer: str | None = "counts",
    spatial_key: str = Key.SPATIAL,
    normalize: str = "anscombe",
    n_iter: int = 500,
    alpha0: float = 1.0,
    seed: int | None = None,
    use_gpu: bool = True,
    progress: bool = True,
    key_added: str = "aeh",
):
    """Group spatially variable genes into ``n_patterns`` spatial patterns (SpatialDE's AEH).

    Parameters
    ----------
    adata
        AnnData with spots in ``obs``.
    genes
        Genes to group: the key of a previous SVG run (its ``{key}.svg`` genes, e.g.
        ``"spatialde"``), a list of gene names, or ``None`` (the first of ``"spatialde"``,
        ``"spatialde_gp"``, ``"moran"`` found in ``var``).
    n_patterns
        Number of patterns ``C``.
    lengthscale
        SE lengthscale ``l`` of the patterns, in coordinate units (default: 3× the spot spacing).
    layer
        Raw counts (``normalize="anscombe"``) or already normalised values (``normalize="none"``).
    spatial_key
        ``obsm`` key of the spot coordinates.
    normalize
        ``"anscombe"`` (variance-stabilise and regress out log total counts, as for the GP test)
        or ``"none"``. Profiles are z-scored per gene in both cases.
    n_iter
        Maximum variational iterations.
    alpha0
        Dirichlet concentration of the pattern proportions.
    seed
        Seed of the initial assignment (``None``: ``em.settings.seed``).
    use_gpu
        Use a GPU through JAX when present.
    progress
        Show a progress bar over the variational iterations (also off with ``em.settings.progress = False``).
    key_added
        Output key.

    Returns
    -------
    dict with ``patterns`` (spots × patterns DataFrame), ``membership`` (genes × patterns posterior
    probabilities) and ``noise_variance``. Writes ``obsm[key_added]`` (DataFrame, columns
    ``"0"..."C-1"``, index ``obs_names``), ``var[f"{key_added}.pattern"]`` (int; -1 for genes not
    modelled), ``var[f"{key_added}.membership"]`` (posterior probability of that pattern) and
    ``uns[key_added]['params']``.

    Examples
    --------
    >>> import experimat as em
    >>> from experimat.methods.svg import spatial_svg_score, spatial_patterns
    >>> adata = em.datasets.synthetic_svg(1000, 300, n_spatial=40)
    >>> _ = spatial_svg_score(adata, progress=False)
    >>> out = spatial_patterns(adata, genes="spatialde", n_patterns=3)
    >>> adata.var["aeh.pattern"].value_counts()
    """
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from experimat._logging import ProgressBar, logger
    from experimat._settings import settings
    from experimat.methods._checks import check_choice, check_positive_int, get_matrix, store_params
    from experimat.methods._graph import nn_distance

    from ._common import as_csc_or_dense, coordinates, pick_device
    from ._gp import _prepare_expression
    from ._kernels import factor, se_kernel

    check_positive_int("n_patterns", n_patterns)
    check_choice("normalize", normalize, ("anscombe", "none"))
    xy = coordinates(adata, spatial_key)
    names, source = _select_genes(adata, genes)
    if len(names) < n_patterns:
        raise InvalidInputError(
            f"{len(names)} genes selected but n_patterns={n_patterns}; select more genes or ask for fewer patterns."
        )
    ls = float(lengthscale) if lengthscale is not None else 3.0 * nn_distance(xy)
    if not np.isfinite(ls) or ls <= 0:
        raise InvalidInputError(f"lengthscale must be positive; got {lengthscale!r}.")
    device = pick_device(use_gpu)
    start = logger.info(f"AEH: {len(names)} genes into {n_patterns} patterns (l={ls:.4g})")
    cols = adata.var_names.get_indexer(names)
    X = as_csc_or_dense(get_matrix(adata, layer))
    # same preprocessing as the GP test (size and overdispersion from all genes)
    _, transform, _ = _prepare_expression(X, normalize=normalize, min_counts=3, layer=layer)
    Y = transform(cols)  # (n, G)
    sd = Y.std(0)
    keep = sd > 1e-12
    if keep.sum() < n_patterns:
        raise InvalidInputError("too few non-constant genes for the requested number of patterns.")
    Y = ((Y[:, keep] - Y[:, keep].mean(0)) / sd[keep]).T  # (G, n)
    kept_names = [names[i] for i in np.flatnonzero(keep)]
    U, S = factor(se_kernel(xy, ls), device=device)
    Yt = Y @ U
    # k-means++ style initial hard assignment (seeded)
    rng = np.random.default_rng(settings.seed if seed is None else seed)
    G = Y.shape[0]
    centres = [Y[rng.integers(G)]]
    for _ in range(1, n_patterns):
        d2 = np.min([((Y - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(Y[rng.choice(G, p=d2 / d2.sum())] if d2.sum() > 0 else Y[rng.integers(G)])
    lab = np.argmin(np.stack([((Y - c) ** 2).sum(1) for c in centres], 1), 1)
    R0 = np.full((G, n_patterns), 0.05 / max(n_patterns - 1, 1))
    R0[np.arange(G), lab] = 0.95
    with jax.enable_x64(True):
        dev = jax.devices(device)[0]
        put = lambda a: jax.device_put(jnp.asarray(a, dtype=jnp.float64), dev)  # noqa: E731
        step_until, finish = _vb(int(n_patterns))
        Yt_d, S_d, a0 = put(Yt), put(S), put(alpha0)
        state = (put(R0), jnp.asarray(1.0, dtype=jnp.float64), jnp.asarray(1.0, dtype=jnp.float64), jnp.asarray(0))
        with ProgressBar(int(n_iter), "AEH iterations", disable=not (progress and settings.progress)) as bar:
            done = 0
            while done < n_iter and float(state[2]) > 1e-6:
                state = step_until(state, jnp.asarray(min(done + _CHUNK, int(n_iter))), Yt_d, S_d, a0)
                now = int(state[3])
                bar.update(now - done)
                done = now
        R, m = finish(state[0], state[1], Yt_d, S_d, a0)
        R, m, s2e, it = np.asarray(R), np.asarray(m), float(state[1]), int(state[3])
    patterns = U @ m.T  # (n, C)
    pat_df = pd.DataFrame(patterns, index=adata.obs_names.copy(), columns=[str(c) for c in range(n_patterns)])
    memb = pd.DataFrame(R, index=kept_names, columns=[str(c) for c in range(n_patterns)])
    adata.obsm[key_added] = pat_df
    pat = np.full(adata.n_vars, -1, dtype=np.int64)
    prob = np.full(adata.n_vars, np.nan)
    vi = adata.var_names.get_indexer(kept_names)
    pat[vi] = R.argmax(1)
    prob[vi] = R.max(1)
    adata.var[f"{key_added}.pattern"] = pat
    adata.var[f"{key_added}.membership"] = prob
    store_params(
        adata,
        key_added,
        dict(
            genes=source if source is not None else "<list>",
            n_patterns=n_patterns,
            lengthscale=ls,
            layer=layer,
            spatial_key=spatial_key,
            normalize=normalize,
            n_iter=n_iter,
            alpha0=alpha0,
            seed=seed,
        ),
        noise_variance=s2e,
        n_genes=len(kept_names),
        iterations=it,
    )
    logger.info(
        f"AEH: {it} iterations, pattern sizes {np.bincount(R.argmax(1), minlength=n_patterns).tolist()}", time=start
    )
    return {"patterns": pat_df, "membership": memb, "noise_variance": s2e}
