"""Merging the samples of a modality into one AnnData (a mod of the integrated MuData)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._errors import InvalidInputError
from .._keys import SAMPLE_OBS_COLUMNS, Key
from .._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def _result_columns(adata: AnnData) -> set[str]:
    """var columns written by methods (``<key_added>`` or ``<key_added>.*`` of a ``uns`` entry with params)."""
    keys = [str(k) for k, v in adata.uns.items() if isinstance(v, Mapping) and Key.PARAMS in v]
    return {str(c) for c in adata.var.columns if any(str(c) == k or str(c).startswith(k + ".") for k in keys)}


def _merged_var(parts: Mapping[str, AnnData], names: pd.Index) -> tuple[pd.DataFrame, list[str]]:
    """The gene annotation shared by the samples, and the names of the per-sample var columns left out.

    A column is experiment-wide when every gene has one value in every sample that has the gene
    (gene annotation); method results (``var['<key_added>.*']``) and columns whose values differ
    between samples are per-sample and stay in each sample."""
    results = set().union(*(_result_columns(a) for a in parts.values()))
    columns = list(dict.fromkeys(str(c) for a in parts.values() for c in a.var.columns))
    out = pd.DataFrame(index=names)
    per_sample = []
    for col in columns:
        if col in results:
            per_sample.append(col)
            continue
        values = [a.var[col].reindex(names) for a in parts.values() if col in a.var.columns]
        stacked = pd.concat([v.astype(object) for v in values], axis=1, ignore_index=True)
        # the first non-missing value of each gene (bfill on object columns, without pandas' downcasting warning)
        arr = stacked.to_numpy()
        known = ~pd.isna(arr)
        pick = np.where(known.any(axis=1), known.argmax(axis=1), 0)
        first = pd.Series(arr[np.arange(len(arr)), pick] if len(arr) else arr[:, :1].ravel(), index=stacked.index,
                          dtype=object).where(known.any(axis=1))
        agree = stacked.isna() | stacked.eq(first, axis=0)
        if not bool(agree.to_numpy().all()):
            per_sample.append(col)
            continue
        dtype = values[0].dtype
        if all(v.dtype == dtype for v in values) and not first.isna().any():
            out[col] = first.astype(dtype) if not isinstance(dtype, pd.CategoricalDtype) else pd.Categorical(first)
        elif isinstance(dtype, pd.CategoricalDtype):
            out[col] = pd.Categorical(first)
        else:
            out[col] = first.infer_objects()
    return out, per_sample


def _merged_obsm_frames(parts: Mapping[str, AnnData], names: pd.Index) -> dict[str, pd.DataFrame]:
    """obsm DataFrames (named columns, e.g. cell-type abundances) stacked over the samples.

    Observations of samples without the key (or a column) get NaN. Unnamed arrays such as
    per-sample PCA spaces are not comparable across samples and are not merged."""
    keys = list(dict.fromkeys(str(k) for a in parts.values() for k, v in a.obsm.items() if isinstance(v, pd.DataFrame)))
    out = {}
    for key in keys:
        frames = [a.obsm[key] for a in parts.values() if isinstance(a.obsm.get(key), pd.DataFrame)]
        frame = pd.concat(frames, axis=0, join="outer").reindex(names)
        frame.columns = [str(c) for c in frame.columns]
        out[key] = frame
    return out


def _merged_libraries(parts: Mapping[str, AnnData]) -> dict[str, dict]:
    """``uns['spatial']`` of the merged object in scanpy's layout: each sample's library (its images, scale factors
    and metadata) under the sample's name, so plots of the integrated data draw every section over its own image.

    A sample's library is ``uns['spatial'][sample]``, else its only library; the image arrays are shared, not copied."""
    out: dict[str, dict] = {}
    for s, a in parts.items():
        libs = a.uns.get(Key.SPATIAL)
        if not isinstance(libs, Mapping) or not libs:
            continue
        lib = libs.get(s) if s in libs else (next(iter(libs.values())) if len(libs) == 1 else None)
        if not isinstance(lib, Mapping):
            logger.info(f"merge: sample {s!r} has libraries {list(libs)} but none named {s!r}; its images are not merged")
            continue
        out[s] = {k: dict(lib[k]) for k in ("images", "scalefactors", "metadata") if isinstance(lib.get(k), Mapping)}
        out[s].setdefault("scalefactors", {})
    return out


def _merged_obs(parts: Mapping[str, AnnData], names: pd.Index) -> pd.DataFrame:
    """The samples' obs stacked with the union of their columns (whatever the gene join): a column that only some
    samples have (e.g. the domains of a joint fit over a subset of the sections) is missing (NaN) in the others.
    A column categorical in every sample that has it stays categorical, over the union of the categories."""
    frames = [a.obs for a in parts.values()]
    obs = pd.concat(frames, axis=0, join="outer", ignore_index=True)
    obs.index = names  # ad.concat keeps the samples' order
    for col in obs.columns:
        present = [f[col] for f in frames if col in f.columns]
        if all(isinstance(v.dtype, pd.CategoricalDtype) for v in present):
            cats = list(dict.fromkeys(c for v in present for c in v.cat.categories))
            obs[col] = pd.Categorical(obs[col], categories=cats)
    return obs


def merge_samples(parts: Mapping[str, AnnData], *, mod: str, join: str) -> AnnData:
    """Concatenate the samples ``{sample: adata}`` of modality ``mod`` (see :meth:`Experiment.merge`)."""
    import anndata as ad

    from ..database import gene_overlap_report
    from ..methods._checks import make_columns_writable

    report = gene_overlap_report(parts)
    shared, union = report["shared"], report["n_union"]
    logger.debug(f"merge {mod}: {len(parts)} samples, {join} join")  # the gene overlap is logged by the report
    if join == "inner" and not shared:
        raise InvalidInputError(
            f"the samples of {mod} share no gene; check their taxa and gene ids, or use join='outer'."
        )
    slim = {}
    offset = 0.0
    for s, a in parts.items():
        b = ad.AnnData(X=a.X, obs=a.obs.copy(), var=pd.DataFrame(index=a.var_names.copy()),
                       layers={Key.COUNTS: a.layers[Key.COUNTS]} if Key.COUNTS in a.layers else None)
        if Key.SPATIAL in a.obsm:
            xy = np.asarray(a.obsm[Key.SPATIAL], dtype=float)
            b.obsm[Key.SPATIAL] = xy
            tiled = xy.copy()
            tiled[:, 0] = tiled[:, 0] - xy[:, 0].min() + offset
            b.obsm["spatial.tiled"] = tiled
            offset = tiled[:, 0].max() + 0.1 * (np.ptp(xy[:, 0]) + 1.0)
        slim[s] = b
    merged = ad.concat(slim, join=join, merge=None, label=None, index_unique=None, fill_value=0)
    merged.obs = _merged_obs(parts, merged.obs_names)
    merged.var, per_sample_var = _merged_var(parts, merged.var_names)
    for key, frame in _merged_obsm_frames(parts, merged.obs_names).items():
        merged.obsm[key] = frame
    for col in SAMPLE_OBS_COLUMNS:
        if col in merged.obs:
            merged.obs[col] = pd.Categorical(merged.obs[col].astype(str), categories=list(dict.fromkeys(
                str(v) for a in parts.values() for v in a.obs[col].cat.categories)))
    merged.uns[Key.SPATIAL] = _merged_libraries(parts)
    merged.uns["merge"] = {"samples": list(parts), "join": join, "n_shared_genes": len(shared), "n_union_genes": int(union),
                           "n_only_in": {k: int(v) for k, v in report["n_only_in"].items()},
                           "per_sample_var_columns": per_sample_var}
    if per_sample_var:
        logger.info(f"merge {mod}: per-sample var columns {per_sample_var[:8]} stay in each sample, not in the merged var")
    make_columns_writable(merged, sample=None)
    return merged


def merge_modalities(modality: str | Iterable[str] | None, available: list[str]) -> list[str]:
    """The modalities ``Experiment.merge(modality)`` merges (None: every modality with samples)."""
    from .._keys import MODALITIES, Modality

    if modality is not None and not isinstance(modality, (str, list, tuple)):
        raise InvalidInputError(f"modality must be a modality name, a list of them or None, not {modality!r}; valid: {list(MODALITIES)}.")
    if modality is None:
        return list(available)
    return [Modality(m).value for m in ([modality] if isinstance(modality, str) else modality)]


def integrate(merged: Mapping[str, AnnData], existing: MuData | None) -> MuData:
    """The integrated MuData: the mods of ``existing`` with those of ``merged`` replaced or added."""
    import warnings

    import mudata as md

    mods = dict(existing.mod) if existing is not None else {}
    mods.update(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # rna and spatial mods share gene names by design; MuData's global var keeps them apart
        warnings.filterwarnings("ignore", message="Cannot join columns with the same name", category=UserWarning)
        return md.MuData(mods)
