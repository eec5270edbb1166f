"""Domain markers (spatially variable genes of a domain against its neighbours) and metagenes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experimat._compat import renamed_options
from experimat._errors import InvalidInputError, KeyNotFoundError, MissingSlotError
from experimat._keys import Key
from experimat._logging import logger
from experimat.methods._checks import check_positive_int, get_coordinates, get_obs_column, store_params
from experimat.methods._options import option_ranges

from ._inputs import _expression

if TYPE_CHECKING:
    from anndata import AnnData

MARKER_COLUMNS = ("gene", "gene_id", "pct.in", "pct.out", "fc", "q", "log10.q")
#: keys of ``uns[key_added]`` that are not domains
_RESERVED = ("params", "neighbours", "skipped")
_GENE_CHUNK = 2000


# --------------------------------------------------------------------------- statistics
def _dense(X) -> np.ndarray:
    from scipy import sparse

    return (X.toarray() if sparse.issparse(X) else np.asarray(X)).astype(np.float64, copy=False)


def wilcoxon(X, in_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-sum z-scores (group vs the other rows, tie-corrected) and two-sided p-values per column."""
    from scipy.stats import norm, rankdata

    n1 = int(in_group.sum())
    n = in_group.size
    n2 = n - n1
    z = np.empty(X.shape[1])
    for s in range(0, X.shape[1], _GENE_CHUNK):
        block = _dense(X[:, s : s + _GENE_CHUNK])
        ranks = rankdata(block, axis=0)
        r1 = ranks[in_group].sum(0)
        # permutation variance of the rank sum (exact with ties): n1 n2 / (n (n - 1)) * sum (r - mean r)^2
        var = n1 * n2 / (n * (n - 1.0)) * ((ranks - (n + 1) / 2.0) ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            zz = (r1 - n1 * (n + 1) / 2.0) / np.sqrt(var)
        z[s : s + _GENE_CHUNK] = np.where(var > 0, zz, 0.0)
    return z, 2.0 * norm.sf(np.abs(z))


def _group_stats(X, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import sparse

    sub = X[mask]
    if sparse.issparse(sub):
        mean = np.asarray(sub.mean(0)).ravel()
        frac = np.asarray((sub > 0).mean(0)).ravel()
    else:
        sub = np.asarray(sub)
        mean, frac = sub.mean(0), (sub > 0).mean(0)
    return mean, frac


def _pairwise_quantiles(xy: np.ndarray, qs: tuple[float, float], seed: int = 0) -> tuple[float, float]:
    from scipy.spatial.distance import pdist

    if len(xy) > 4000:
        xy = xy[np.random.default_rng(seed).choice(len(xy), 4000, replace=False)]
    d = pdist(xy)
    d = d[d > 0]
    lo, hi = np.quantile(d, qs)
    return float(lo), float(hi)


def _mean_neighbour_count(tree, xy_target: np.ndarray, radius: float) -> float:
    return float(np.mean(tree.query_ball_point(xy_target, radius, return_length=True)))


def search_radius(
    tree, xy_target: np.ndarray, start: float, end: float, num_min: int, num_max: int, max_run: int
) -> float:
    """SpaGCN's search_radius: bisection until target spots have ``num_min``..``num_max`` neighbours
    on average; when none is found, the radius whose count is closest to the window (with a warning)."""
    tried = []

    def count(r):
        c = _mean_neighbour_count(tree, xy_target, r)
        tried.append((r, c))
        return c

    lo, hi = count(start), count(end)
    if num_min <= lo <= num_max:
        return start
    if num_min <= hi <= num_max:
        return end
    run = 0
    while lo < num_min < hi:
        run += 1
        if run > max_run:
            break
        mid = (start + end) / 2.0
        c = count(mid)
        if num_min <= c <= num_max:
            return mid
        if c < num_min:
            start, lo = mid, c
        else:
            end, hi = mid, c
    best = min(tried, key=lambda rc: min(abs(rc[1] - num_min), abs(rc[1] - num_max)))
    logger.warning(
        f"no radius gives {num_min}-{num_max} neighbours per spot; using radius {best[0]:.4g} ({best[1]:.3g} neighbours)"
    )
    return best[0]


def neighbour_domains(tree, xy: np.ndarray, labels: np.ndarray, target: str, radius: float, ratio: float) -> list[str]:
    """Domains adjacent to ``target``: a domain counts when the target's spots see, within ``radius``,
    more than ``ratio`` x its size of its spots (SpaGCN's find_neighbor_clusters), most-seen first.
    When none passes, the single most-seen domain."""
    sizes = pd.Series(labels).value_counts()
    hits = tree.query_ball_point(xy[labels == target], radius)
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits]) if len(hits) else np.array([], int)
    seen = pd.Series(labels[flat]).value_counts()
    seen = seen.drop(target, errors="ignore")
    if seen.empty:
        return []
    passed = seen[seen > ratio * sizes.reindex(seen.index).to_numpy()]
    order = passed if not passed.empty else seen.iloc[:1]
    return [str(k) for k in order.sort_values(ascending=False, kind="stable").index]


def _domain_labels(adata: AnnData, domain_key: str) -> np.ndarray:
    col = get_obs_column(adata, domain_key)
    labels = np.asarray(col.astype(str))
    return labels


def _domain_order(labels: np.ndarray, col) -> list[str]:
    present = set(labels)
    if hasattr(col, "cat"):
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(present, key=lambda s: (len(s), s))


def gene_symbols(adata: AnnData, gene_symbols: str = "gene") -> tuple[np.ndarray, np.ndarray]:
    """``(symbols, ids)`` of the genes: the symbol in ``var[gene_symbols]`` (e.g. after gene-id harmonisation),
    the id (``var_names``) where a gene has none."""
    ids = np.asarray(adata.var_names.astype(str), dtype=object)
    if gene_symbols not in adata.var.columns:
        return ids.copy(), ids
    sym = adata.var[gene_symbols].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    return np.where(sym == "", ids, sym), ids


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object if c.startswith("gene") else np.float64) for c in MARKER_COLUMNS})


def _marker_table(X, in_t: np.ndarray, ref: np.ndarray, symbols, ids, f: dict[str, float]) -> pd.DataFrame:
    """One domain's test against its reference spots, filtered as SpaGCN does (``f``: the thresholds)."""
    from scipy.stats import false_discovery_control

    keep = in_t | ref
    sub = X[np.flatnonzero(keep)]
    grp = in_t[keep]
    _, pval = wilcoxon(sub, grp)
    q = false_discovery_control(np.clip(pval, 0, 1))
    m_in, f_in = _group_stats(sub, grp)
    m_out, f_out = _group_stats(sub, ~grp)
    fc = np.exp(m_in - m_out)
    with np.errstate(divide="ignore", invalid="ignore"):
        io_ratio = np.where(f_out > 0, f_in / f_out, np.inf)
    ok = (q < f["max_q"]) & (io_ratio > f["min_in_out_group_ratio"]) & (f_in > f["min_in_group_fraction"]) & (
        fc > f["min_fold_change"]
    )
    table = pd.DataFrame(
        {
            "gene": symbols[ok].astype(str),
            "gene_id": ids[ok].astype(str),
            "pct.in": f_in[ok],
            "pct.out": f_out[ok],
            "fc": fc[ok],
            "q": q[ok],
            "log10.q": -np.log10(np.clip(q[ok], 1e-300, None)),
        }
    )
    return table.sort_values(["pct.in", "q"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _store_markers(adata: AnnData, key_added: str, entry: dict, neighbours_of: dict, skipped: dict) -> None:
    """Write the domains' tables into ``uns[key_added]``, keeping other domains' tables from an earlier run."""
    old = adata.uns.get(key_added)
    old = old if isinstance(old, dict) else {}
    merged = {k: v for k, v in old.items() if k not in _RESERVED}
    nbrs = dict(old.get("neighbours", {}))
    skip = {k: v for k, v in dict(old.get("skipped", {})).items() if k not in entry}
    merged.update(entry)
    nbrs.update({k: np.asarray(v, dtype=object).astype(str) for k, v in neighbours_of.items()})
    skip.update(skipped)
    adata.uns[key_added] = {**merged, "neighbours": nbrs, "skipped": skip}


# --------------------------------------------------------------------------- markers
@renamed_options(target="target_domain")
@option_ranges(
    min_in_group_fraction="[0, 1]",
    min_in_out_group_ratio="[0, inf)",
    min_fold_change="[0, inf)",
    max_q="(0, 1]",
    min_domain_size="[2, inf)",
    num_neighbours="[1, inf)",
    ratio="[0, inf)",
    radius_quantiles="[0, 1]",
    num_min="[0, inf)",
    num_max="[1, inf)",
    max_run="[1, inf)",
)
def spatial_markers_spagcn(
    adata: AnnData,
    *,
    domain_key: str,
    target_domain: str | Sequence[str] | None = None,
    min_in_group_fraction: float = 0.8,
    min_in_out_group_ratio: float = 1.0,
    min_fold_change: float = 1.5,
    max_q: float = 0.05,
    min_domain_size: int = 10,
    num_neighbours: int = 3,
    ratio: float = 0.5,
    radius_quantiles: tuple[float, float] = (0.001, 0.1),
    num_min: int = 10,
    num_max: int = 14,
    max_run: int = 100,
    layer: str | None = "lognorm",
    spatial_key: str = Key.SPATIAL,
    key_added: str = "spagcn.markers",
) -> pd.DataFrame:
    """Marker genes of spatial domains against their neighbouring domains (SpaGCN's SVG detection).

    For each target domain, a radius is searched (between the ``radius_quantiles`` of the spot
    distances) so that its spots have ``num_min``..``num_max`` spots within it on average; the domains
    seen there (more than ``ratio`` x their size) are its neighbours (at most ``num_neighbours``).
    Genes are tested (Wilcoxon rank-sum, Benjamini-Hochberg ``q``) in the target against its neighbours
    and kept when ``q < max_q``, in-group fraction > ``min_in_group_fraction``, in/out fraction ratio >
    ``min_in_out_group_ratio`` and fold change (``exp`` of the difference of log means) > ``min_fold_change``.

    Parameters
    ----------
    adata
        Spots x genes with domains in ``obs[domain_key]``.
    domain_key
        ``obs`` column of the domains (e.g. ``"spagcn.refined"``, ``"integrated"``).
    target_domain
        Domain or domains to test (``None``: all). Deprecated alias: ``target=``.
    min_in_group_fraction
        Minimum fraction of target spots expressing the gene.
    min_in_out_group_ratio
        Minimum ratio of expressing fractions, target over neighbours.
    min_fold_change
        Minimum fold change.
    max_q
        Maximum adjusted p-value.
    min_domain_size
        Fewest spots a target domain, and the neighbouring spots it is compared with, must have. Smaller domains
        are skipped with a warning (their table is empty and ``uns[key_added]['skipped']`` says why): the rank-sum
        test's normal approximation is not valid for a handful of spots with many tied zeros (one spot against
        500 gives q ~ 1e-24 for any gene it expresses alone), while at 10 spots its false-positive rate on
        Poisson data with 25 % or more non-zero values is at the nominal level (tests/methods/test_spagcn_markers.py).
    num_neighbours
        Most neighbouring domains used as the reference.
    ratio
        A domain is a neighbour when the target's neighbourhoods hold more than ``ratio`` x its spots.
    radius_quantiles
        Quantiles of the pairwise spot distances bracketing the radius search.
    num_min, num_max
        Wanted mean number of spots within the radius.
    max_run
        Maximum bisection steps of the radius search.
    layer
        Log-normalised expression (``None``: ``adata.X``).
    spatial_key
        ``obsm`` key of the coordinates.
    key_added
        ``uns`` key: ``uns[key_added][domain]`` holds each domain's table as a dict of columns
        (``gene, gene_id, pct.in, pct.out, fc, q, log10.q``), ``uns[key_added]['neighbours'][domain]`` its
        neighbours, ``uns[key_added]['skipped'][domain]`` why a domain was not tested,
        ``uns[key_added]['params']`` the parameters.

    Returns
    -------
    DataFrame of the kept markers of all target domains (column ``domain`` first), each domain's
    genes ordered by in-group fraction (then ``q``). ``gene`` is the gene symbol (``var['gene']``, the id where a
    gene has no symbol), ``gene_id`` the ``var_names`` entry. ``log10.q`` is ``-log10(q)`` (positive; larger is more
    significant), as in the exprmat tables and volcano plots.

    Examples
    --------
    >>> from experimat.methods.domains.spagcn import spatial_markers_spagcn, get_markers
    >>> spatial_markers_spagcn(adata, domain_key="spagcn.refined", layer="lognorm")  # doctest: +SKIP
    >>> get_markers(adata, group_name="0")  # doctest: +SKIP
    """
    from scipy.spatial import cKDTree

    params = dict(locals())
    params.pop("adata")
    col = get_obs_column(adata, domain_key)
    labels = _domain_labels(adata, domain_key)
    domains = _domain_order(labels, col)
    if target_domain is None:
        targets = domains
    else:
        single = isinstance(target_domain, (str, int, np.integer))
        targets = [str(t) for t in ([target_domain] if single else target_domain)]
        for t in targets:
            if t not in domains:
                raise KeyNotFoundError(f"domain of obs[{domain_key!r}]", t, domains)
    check_positive_int("num_neighbours", num_neighbours)
    check_positive_int("min_domain_size", min_domain_size, minimum=2)
    if not (0 <= radius_quantiles[0] < radius_quantiles[1] <= 1):
        raise InvalidInputError(f"radius_quantiles must be increasing quantiles in [0, 1]; got {radius_quantiles}.")
    if num_min > num_max:
        raise InvalidInputError(f"num_min ({num_min}) must be <= num_max ({num_max}).")
    X = _expression(adata, layer)
    xy = get_coordinates(adata, spatial_key)[:, :2]
    tree = cKDTree(xy)
    lo, hi = _pairwise_quantiles(xy, tuple(radius_quantiles))
    symbols, ids = gene_symbols(adata)
    filters = {"max_q": max_q, "min_in_out_group_ratio": min_in_out_group_ratio,
               "min_in_group_fraction": min_in_group_fraction, "min_fold_change": min_fold_change}
    entry: dict[str, Any] = {}
    neighbours_of: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    frames = []
    start = logger.info(f"SpaGCN markers: {len(targets)} domain(s) of obs[{domain_key!r}]")
    for t in targets:
        in_t = labels == t
        radius = search_radius(tree, xy[in_t], lo, hi, num_min, num_max, max_run)
        nbrs = neighbour_domains(tree, xy, labels, t, radius, ratio)[:num_neighbours]
        neighbours_of[t] = nbrs
        ref = np.isin(labels, nbrs) if nbrs else ~in_t
        logger.info(f"    domain {t}: radius {radius:.4g}, neighbours {nbrs or 'none (using all other spots)'}")
        n_in, n_ref = int(in_t.sum()), int(ref.sum())
        if min(n_in, n_ref) < min_domain_size:
            skipped[t] = (f"{n_in} spots in the domain and {n_ref} in its neighbours {nbrs}; "
                          f"min_domain_size={min_domain_size}")
            logger.warning(f"SpaGCN markers: domain {t} skipped ({skipped[t]}); lower min_domain_size to test it")
            table = _empty_table()
        else:
            table = _marker_table(X, in_t, ref, symbols, ids, filters)
        logger.info(f"    domain {t}: {len(table)} marker genes")
        entry[t] = {
            **{c: np.asarray(table[c], dtype=object).astype(str) for c in ("gene", "gene_id")},
            **{c: np.asarray(table[c], dtype=np.float64) for c in MARKER_COLUMNS[2:]},
        }
        frames.append(table.assign(domain=t))
    _store_markers(adata, key_added, entry, neighbours_of, skipped)
    store_params(adata, key_added, params)
    logger.info("SpaGCN markers: done", time=start)
    result = pd.concat(frames, ignore_index=True) if frames else _empty_table().assign(domain=[])
    return result[["domain", *MARKER_COLUMNS]]


@renamed_options(slot="markers_key")
def get_markers(adata: AnnData, *, markers_key: str = "spagcn.markers", group_name: str) -> pd.DataFrame:
    """The marker table of one domain stored by :func:`spatial_markers_spagcn`.

    Parameters
    ----------
    adata
        AnnData with ``uns[markers_key]``.
    markers_key
        ``uns`` key written by the marker method (its ``key_added``). Deprecated alias: ``slot=``.
    group_name
        Domain whose markers to return.

    Returns
    -------
    DataFrame with columns ``gene`` (symbol), ``gene_id``, ``pct.in, pct.out, fc, q, log10.q``; empty, with a
    warning, for a domain skipped as smaller than ``min_domain_size``.

    Examples
    --------
    >>> get_markers(adata, markers_key="spagcn.markers", group_name="3")  # doctest: +SKIP
    """
    entry = adata.uns.get(markers_key)
    if not isinstance(entry, dict):
        raise MissingSlotError(
            f"uns[{markers_key!r}] not found; run spatial_markers_spagcn(adata, domain_key=..., key_added={markers_key!r}) "
            f"first (uns keys: {list(adata.uns.keys())})."
        )
    groups = [k for k in entry if k not in _RESERVED]
    key = str(group_name)
    if key not in groups:
        raise KeyNotFoundError(f"group of uns[{markers_key!r}]", group_name, groups)
    reason = dict(entry.get("skipped", {})).get(key)
    if reason is not None:
        logger.warning(f"domain {key} was not tested ({reason}); its marker table is empty")
    table = dict(entry[key])
    if "gene_id" not in table:  # tables written before gene symbols were added: the ids were in `gene`
        table["gene_id"] = table["gene"]
    return pd.DataFrame({c: np.asarray(table[c]) for c in MARKER_COLUMNS}).astype(
        {"gene": str, "gene_id": str, **{c: float for c in MARKER_COLUMNS[2:]}}
    )


# --------------------------------------------------------------------------- metagene
def _column(X, j: int) -> np.ndarray:
    return _dense(X[:, [j]]).ravel()


def _separation(meta: np.ndarray, in_t: np.ndarray) -> tuple[np.ndarray, int, float]:
    """SpaGCN's two measures of a score: the spots selected (target spots and the others scoring above the
    target's mean), how many of them are outside the target, and the target's mean minus the others' mean."""
    sel = (meta > meta[in_t].mean()) | in_t
    return sel, int((sel & ~in_t).sum()), float(meta[in_t].mean() - meta[~in_t].mean())


def _next_pair(X, sel: np.ndarray, in_t: np.ndarray, used: set[int]) -> tuple[int, int] | None:
    """The gene most up in the target among the selected spots and the gene most up outside it (rank-sum
    z-scores), neither already in the formula; None when no unused gene is up on each side."""
    z, _ = wilcoxon(X[np.flatnonzero(sel)], in_t[sel])
    taken = np.zeros(z.size, dtype=bool)
    taken[list(used)] = True
    up = np.where(taken | ~(z > 0), -np.inf, z)
    down = np.where(taken | ~(z < 0), np.inf, z)
    add, sub = int(np.argmax(up)), int(np.argmin(down))
    if not np.isfinite(up[add]) or not np.isfinite(down[sub]):
        return None
    return add, sub


def _search_metagene(X, in_t: np.ndarray, start: int, max_iter: int, early_stop: bool, symbols) -> dict[str, Any]:
    """The add/subtract search of SpaGCN's find_meta_gene; each gene enters the formula at most once and a
    step is judged on the candidate score itself (fewer or as many non-target spots above the target's mean,
    a larger or equal mean difference)."""
    meta = _column(X, start)
    sel, n_out, diff = _separation(meta, in_t)
    added: list[int] = []
    subtracted: list[int] = []
    stop = f"max_iter={max_iter} steps done"
    for step in range(1, max_iter + 1):
        if n_out < 5 or int(in_t.sum()) < 5:
            stop = f"step {step}: {n_out} non-target spots score above the domain's mean (fewer than 5)"
            break
        pair = _next_pair(X, sel, in_t, {start, *added, *subtracted})
        if pair is None:
            stop = f"step {step}: no unused gene is up in the domain and another up outside it"
            break
        add, sub = pair
        cur = meta + _column(X, add) - _column(X, sub)
        cur = cur - cur.min()
        sel_cur, n_cur, diff_cur = _separation(cur, in_t)
        if early_stop and not (n_cur <= n_out and diff_cur >= diff):
            stop = (f"step {step}: +{symbols[add]} -{symbols[sub]} does not improve (non-target spots {n_cur} vs "
                    f"{n_out}, mean difference {diff_cur:.4g} vs {diff:.4g})")
            break
        meta, sel, n_out, diff = cur, sel_cur, n_cur, diff_cur
        added.append(add)
        subtracted.append(sub)
        logger.info(f"    step {step}: +{symbols[add]} -{symbols[sub]}; non-target spots {n_out}, mean difference {diff:.4g}")
    logger.info(f"    stopped: {stop}")
    return {"score": meta, "added": added, "subtracted": subtracted, "stop": stop, "n_non_target": n_out, "mean_diff": diff}


def _formula(names, start: int, added: list[int], subtracted: list[int]) -> str:
    return str(names[start]) + "".join(f"+{names[a]}-{names[s]}" for a, s in zip(added, subtracted, strict=True))


@renamed_options(target_cluster="target_domain", key_svg="markers_key")
def spatial_metagene(
    adata: AnnData,
    *,
    domain_key: str,
    target_domain: str,
    markers_key: str = "spagcn.markers",
    start_gene: str | None = None,
    max_iter: int = 6,
    early_stop: bool = True,
    layer: str | None = "lognorm",
    key_added: str | None = None,
) -> dict[str, Any]:
    """A metagene that sharpens a domain's signal (SpaGCN's find_meta_gene).

    Starting from a marker gene (the first of ``get_markers(adata, markers_key=markers_key, group_name=target_domain)``
    or ``start_gene``), each step takes the spots of the target domain and the other spots whose
    metagene exceeds the target's mean, adds the gene most up in the target and subtracts the gene most
    up outside it (Wilcoxon z-scores; a gene already in the formula is not taken again), and shifts the
    score to a minimum of 0. With ``early_stop``, a step is kept only when the new score has no more
    non-target spots above the target's mean and a target-minus-rest mean difference at least as large as
    the current score's; the search also stops when fewer than 5 non-target spots remain above that mean.

    Parameters
    ----------
    adata
        Spots x genes with domains in ``obs[domain_key]``.
    domain_key
        ``obs`` column of the domains.
    target_domain
        Domain to sharpen. Deprecated alias: ``target_cluster=``.
    markers_key
        ``uns`` key of the markers from :func:`spatial_markers_spagcn` (for the start gene).
        Deprecated alias: ``key_svg=``.
    start_gene
        Start from this gene (symbol or id) instead of the top marker.
    max_iter
        Maximum add/subtract steps.
    early_stop
        Stop when a step does not improve (see above).
    layer
        Log-normalised expression (``None``: ``adata.X``).
    key_added
        ``obs`` column of the score (default ``"metagene.<target_domain>"``); ``uns[key_added]`` holds
        the formula (symbols and ids), the genes added and subtracted, why the search stopped, and the parameters.

    Returns
    -------
    dict with ``name`` (formula in gene symbols such as ``"Pcp4+Nrgn-Mbp"``), ``name_ids`` (the same in
    ``var_names``), ``start_gene``, ``added``, ``subtracted`` (symbols), ``start_gene_id``, ``added_ids``,
    ``subtracted_ids``, ``stop`` (why the search ended) and ``score`` (Series over spots).

    Examples
    --------
    >>> res = spatial_metagene(adata, domain_key="spagcn.refined", target_domain="2")  # doctest: +SKIP
    >>> adata.obs["metagene.2"]  # doctest: +SKIP
    """
    from experimat.methods._checks import resolve_genes

    params = dict(locals())
    params.pop("adata")
    target = str(target_domain)
    col = get_obs_column(adata, domain_key)
    labels = _domain_labels(adata, domain_key)
    domains = _domain_order(labels, col)
    if target not in domains:
        raise KeyNotFoundError(f"domain of obs[{domain_key!r}]", target_domain, domains)
    check_positive_int("max_iter", max_iter)
    key_added = key_added or f"metagene.{target}"
    X = _expression(adata, layer)
    symbols, ids = gene_symbols(adata)
    if start_gene is None:
        table = get_markers(adata, markers_key=markers_key, group_name=target)
        if table.empty:
            raise InvalidInputError(
                f"domain {target!r} has no marker in uns[{markers_key!r}]; relax the marker filters or pass start_gene=."
            )
        start_gene = str(table["gene_id"].iloc[0])
    start = int(adata.var_names.get_loc(resolve_genes(adata, start_gene)[0]))
    t0 = logger.info(f"SpaGCN metagene for domain {target}, starting from {symbols[start]}")
    found = _search_metagene(X, labels == target, start, max_iter, early_stop, symbols)
    names = {
        "name": _formula(symbols, start, found["added"], found["subtracted"]),
        "name_ids": _formula(ids, start, found["added"], found["subtracted"]),
        "start_gene": str(symbols[start]),
        "start_gene_id": str(ids[start]),
        "added": [str(symbols[g]) for g in found["added"]],
        "added_ids": [str(ids[g]) for g in found["added"]],
        "subtracted": [str(symbols[g]) for g in found["subtracted"]],
        "subtracted_ids": [str(ids[g]) for g in found["subtracted"]],
        "stop": found["stop"],
    }
    adata.obs[key_added] = found["score"]
    stored = {k: (np.asarray(v, dtype=object).astype(str) if isinstance(v, list) else v) for k, v in names.items()}
    store_params(adata, key_added, params, **stored)
    logger.info(f"SpaGCN metagene: {names['name']}", time=t0)
    return {**names, "score": adata.obs[key_added].copy()}
