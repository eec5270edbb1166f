"""Sample preparation: what makes a freshly read AnnData a sample of an experiment.

Plain functions used by :meth:`Experiment.from_table`, :meth:`Experiment.from_anndata` and
:meth:`Experiment.add_sample`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._errors import ExperimatWarning, InvalidInputError, KeyNotFoundError, NotCountsError
from .._keys import SAMPLE_OBS_COLUMNS, SPATIAL_MODALITIES, Key
from .._logging import logger
from .sample_table import SampleTable, validate_sample_name

if TYPE_CHECKING:
    from anndata import AnnData

SampleKey = tuple[str, str]


def prepare_sample(
    adata: AnnData,
    *,
    sample: str,
    modality: str,
    taxa: str,
    batch: str | None = None,
    group: str | None = None,
    harmonize_genes: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> AnnData:
    """Make a freshly read AnnData a sample of an experiment (in place; returns it).

    - raw counts in ``layers['counts']`` are checked (non-negative integers);
    - obs names become ``<sample>:<barcode>`` (original in ``obs['barcode']``);
    - ``obs`` gets categorical ``sample, batch, group, modality, taxa``;
    - spatial coordinates are checked for NaN;
    - genes are harmonised through the gene database (``harmonize_genes``).
    """
    from ..methods._checks import is_integer_matrix, make_columns_writable

    check_new_sample(adata, sample=sample, taxa=taxa)
    if Key.COUNTS in adata.layers:
        if not is_integer_matrix(adata.layers[Key.COUNTS]):
            raise NotCountsError(
                f"sample {sample!r}: layers['counts'] must hold raw counts (non-negative integers); it holds "
                "negative or fractional values. Store the raw counts there (or remove the layer)."
            )
    elif adata.X is not None and is_integer_matrix(adata.X):
        adata.layers[Key.COUNTS] = adata.X.copy()
    if Key.SPATIAL in adata.obsm:
        xy = np.asarray(adata.obsm[Key.SPATIAL], dtype=float)
        bad = ~np.isfinite(xy).all(axis=1)
        if bad.any():
            raise InvalidInputError(
                f"sample {sample!r}: {int(bad.sum())} spots have NaN/inf coordinates in obsm['spatial'] "
                f"(e.g. {list(adata.obs_names[bad][:3])}); fix or drop them before creating the experiment."
            )
    elif modality in SPATIAL_MODALITIES:
        raise InvalidInputError(
            f"sample {sample!r} of modality {modality!r} has no obsm['spatial'] coordinates; read it with an em.io "
            "reader or add the coordinates."
        )
    barcodes = adata.obs[Key.BARCODE].astype(str).to_numpy() if Key.BARCODE in adata.obs else adata.obs_names.astype(str).to_numpy()
    prefix = f"{sample}:"
    already = all(str(n).startswith(prefix) for n in adata.obs_names[:10]) and Key.BARCODE in adata.obs
    if not already:
        adata.obs[Key.BARCODE] = barcodes
        adata.obs_names = [f"{sample}:{b}" for b in barcodes]
    if not adata.obs_names.is_unique:
        raise InvalidInputError(f"sample {sample!r} has duplicated barcodes; make obs names unique first.")
    values = {"sample": sample, "batch": batch or sample, "group": group or "", "modality": modality, "taxa": taxa}
    for col in SAMPLE_OBS_COLUMNS:
        adata.obs[col] = pd.Categorical([values[col]] * adata.n_obs)
    if extra:
        adata.uns.setdefault("experimat", {})["sample_info"] = {str(k): str(v) for k, v in extra.items()}
    if harmonize_genes and has_gene_table(taxa):
        from ..database import harmonize_var

        harmonize_var(adata, taxa)
    if Key.GENE not in adata.var:  # symbols live in var['gene'] whether or not genes were harmonised
        adata.var[Key.GENE] = adata.var_names.astype(str)
    if not adata.var_names.is_unique:
        n = int(adata.var_names.duplicated().sum())
        adata.var_names_make_unique()
        logger.info(f"sample {sample!r}: {n} duplicated gene names made unique (original names in var['gene'])")
    make_columns_writable(adata, sample=sample)
    return adata


def check_new_sample(adata: Any, *, sample: str, taxa: Any) -> None:
    """Refuse what cannot become a sample: not an AnnData, no observation or no variable, no taxa."""
    from anndata import AnnData

    validate_sample_name(sample)
    if not isinstance(adata, AnnData):
        raise InvalidInputError(f"sample {sample!r} must be an AnnData, not {type(adata).__name__}; read it with em.io.read(path).")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InvalidInputError(
            f"sample {sample!r} has {adata.n_obs} observations and {adata.n_vars} genes; a sample needs at least one of "
            "each. Check its filtering (or leave it out of the experiment)."
        )
    if not isinstance(taxa, str) or not taxa.strip():
        raise InvalidInputError(f"sample {sample!r}: taxa must be a non-empty string such as 'mmu', 'hsa' or 'dre', not {taxa!r}.")


def check_new_anndatas(adatas: Mapping[str, Any], *, taxa: Any, batch: Any, group: Any) -> None:
    """Check the input of :meth:`Experiment.from_anndata`: ``batch``/``group`` and every AnnData."""
    for name, value in (("batch", batch), ("group", group)):
        if value is not None and not isinstance(value, (str, Mapping)):
            raise InvalidInputError(
                f"{name} must be one name for every sample or a dict {{sample: {name}}}, not {value!r} ({type(value).__name__})."
            )
    for s, a in adatas.items():
        check_new_sample(a, sample=s, taxa=taxa)


def has_gene_table(taxa: str) -> bool:
    """Whether the gene database has a table for ``taxa`` (code or alias)."""
    from ..database import resolve_taxa

    try:
        resolve_taxa(taxa)
    except KeyNotFoundError:
        return False
    return True


def warn_unharmonized(taxa_of: Mapping[str, str], harmonize_genes: bool) -> None:
    """One warning naming the taxa without a gene table and their samples (their genes keep their names)."""
    if not harmonize_genes:
        return
    from ..database import available_taxa

    missing: dict[str, list[str]] = {}
    for sample, taxa in taxa_of.items():
        if isinstance(taxa, str) and taxa.strip() and not has_gene_table(taxa):
            missing.setdefault(taxa, []).append(sample)
    if missing:
        which = "; ".join(f"{t!r} (samples {', '.join(map(repr, s))})" for t, s in missing.items())
        warnings.warn(
            f"no gene table for taxa {which}: their gene names are kept as they are and not harmonised to Ensembl ids "
            f"(gene tables exist for {available_taxa()}). Samples of different taxa share genes only where their names "
            "match; pass harmonize_genes=False to silence this.",
            ExperimatWarning,
            stacklevel=3,
        )



def read_sheet_samples(st: SampleTable, *, harmonize_genes: bool, load_images: bool) -> dict[SampleKey, AnnData]:
    """Read and prepare every sample of a sample sheet; the errors of all samples are raised together."""
    from ..io import read
    from ..io.readers import READER_OPTION_COLUMNS

    adatas: dict[SampleKey, AnnData] = {}
    errors = []
    for row in st.to_records():
        mod, s = row["modality"], row["sample"]
        try:
            path = st.resolve_path(mod, s)
            if not path.exists():
                raise InvalidInputError(f"sample {s!r}: path {str(path)!r} does not exist.")
            coords = row.get("coordinates") or None
            if coords and not Path(coords).is_absolute() and st.base_dir is not None:
                coords = str(st.base_dir / coords)
            options = {k: row[k] for k in READER_OPTION_COLUMNS if row.get(k)}
            if options.get("image") and not Path(options["image"]).is_absolute() and st.base_dir is not None:
                options["image"] = str(st.base_dir / options["image"])
            adata = read(path, library_id=s, coordinates=coords, load_images=load_images, modality=mod, **options)
            extra = {k: v for k, v in row.items() if k not in ("sample", "modality", "taxa", "batch", "group", "path")}
            adatas[(mod, s)] = prepare_sample(
                adata, sample=s, modality=mod, taxa=row["taxa"], batch=row["batch"] or None, group=row["group"] or None,
                harmonize_genes=harmonize_genes, extra=extra,
            )
        except (InvalidInputError, KeyError, OSError) as e:
            errors.append(f"{mod}/{s}: {e}")
    if errors:
        raise InvalidInputError("could not read the samples of the sheet:\n  " + "\n  ".join(errors))
    return adatas


def prepare_anndatas(
    adatas: Mapping[str, AnnData],
    *,
    modality: str,
    taxa: str,
    batch: Mapping[str, str] | str | None,
    group: Mapping[str, str] | str | None,
    harmonize_genes: bool,
    copy: bool,
) -> tuple[SampleTable, dict[SampleKey, AnnData]]:
    """The sample sheet and the prepared samples of ``{sample: adata}`` (checked beforehand)."""

    def pick(v, s):
        return v.get(s, "") if isinstance(v, Mapping) else (v or "")

    rows = [{"sample": s, "modality": modality, "taxa": taxa, "batch": pick(batch, s), "group": pick(group, s), "path": ""}
            for s in adatas]
    st = SampleTable(pd.DataFrame(rows))
    prepared = {}
    for s, a in adatas.items():
        a = a.copy() if copy else a
        prepared[(modality, s)] = prepare_sample(
            a, sample=s, modality=modality, taxa=taxa, batch=pick(batch, s) or None, group=pick(group, s) or None,
            harmonize_genes=harmonize_genes,
        )
    return st, prepared
