"""Deconvolution bindings: references on ``rna``, mapping on ``spatial-bin``, fitted once and stored."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from .. import pl
from .._errors import InvalidInputError
from ..core.accessor import ModalityAccessor
from ..core.registry import register_method
from ..methods import deconv
from ..methods.deconv import cell2location as c2l
from ..methods.deconv import destvi

BIN = ("spatial-bin",)
_FITTERS = {"cell2location": "reference_signatures", "destvi": "fit_condscvi"}
#: the saved-model class of each method's reference
_MODEL_CLASSES = {"cell2location": c2l.ReferenceSignatures, "destvi": destvi.CondSCVIModel}


_KW = inspect.Parameter.KEYWORD_ONLY
#: options of the reference fit when ``reference=`` is the ``rna`` accessor (consumed by the setup)
_SETUP_OPTIONS = (
    inspect.Parameter("labels_key", _KW, default=None, annotation="str | None"),
    inspect.Parameter("reference_kwargs", _KW, default=None, annotation="dict | None"),
)


def _resolve_reference(method: str):
    """The cross-sample step of deconvolution: turn ``reference=`` into a fitted model, once."""

    def setup(expm, modality: str, options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        labels_key = opts.pop("labels_key", None)
        fit_kwargs = dict(opts.pop("reference_kwargs", None) or {})
        ref = opts.get("reference")
        if not isinstance(ref, ModalityAccessor) and (labels_key is not None or fit_kwargs):
            raise InvalidInputError(
                f"labels_key={labels_key!r} / reference_kwargs={fit_kwargs or None!r} configure the reference fit when "
                "reference= is the rna accessor (reference=expm.rna); with a fitted or stored reference, drop them."
            )
        if isinstance(ref, ModalityAccessor):
            if labels_key is None:
                raise InvalidInputError("reference=<accessor> needs labels_key= (the obs column with cell types).")
            fit_kwargs["labels_key"] = labels_key
            ref = getattr(ref, _FITTERS[method])(run_on_samples=True, **fit_kwargs)
        else:
            ref = _stored_or_folder(expm, method, ref)
        opts["reference"] = ref
        return opts

    return setup


def _stored_or_folder(expm, method: str, ref: Any) -> Any:
    """A reference given by name: a model stored in the project, else an existing model folder.

    Any other string is refused with the valid choices (it is not taken as a folder that does not exist).
    """
    if not isinstance(ref, (str, os.PathLike)):
        return ref
    if isinstance(ref, str) and ref in expm.models:
        return expm.load_model(ref)
    if Path(ref).is_dir():
        return _MODEL_CLASSES[method].load(ref)
    raise InvalidInputError(
        f"reference={str(ref)!r} is neither a model stored in this project (stored: {expm.models}) nor an existing "
        f"folder of a saved model. Pass one of the stored names, the path of a folder written by "
        f"{_MODEL_CLASSES[method].__name__}.save(), the fitted model itself, or reference=expm.rna with "
        f"labels_key= to fit it ({_FITTERS[method]})."
    )


def _resolve_stored_reference(expm, modality: str, options: dict[str, Any]) -> dict[str, Any]:
    """Setup of the DestVI utilities: ``reference=`` may name a stored CondSCVI model or a model folder."""
    return {**options, "reference": _stored_or_folder(expm, "destvi", options.get("reference"))}


# references: one model over all chosen scRNA samples, stored in the project's models/
register_method(c2l.reference_signatures, modalities=("rna",), kind="joint", reads=("layers/{layer}", "obs/{labels_key}"),
                writes=("uns/{key_added}",))
register_method(destvi.fit_condscvi, modalities=("rna",), kind="joint", reads=("layers/{layer}", "obs/{labels_key}"),
                writes=("obsm/{key_added}.*", "uns/{key_added}"))
register_method(c2l.gene_filter_histogram, modalities=("rna",), kind="query", reads=("layers/{layer}",))

# mapping onto spots
_MAP_READS = ("layers/{layer}",)
register_method(deconv.deconvolve, modalities=BIN, variants={"cell2location": "deconvolve_cell2location", "destvi": "deconvolve_destvi"})
register_method(c2l.deconvolve_cell2location, modalities=BIN, setup=_resolve_reference("cell2location"), reads=_MAP_READS,
                setup_options=_SETUP_OPTIONS,
                writes=("obsm/{key_added}.*", "obsm/MT", "uns/{key_added}"))
register_method(destvi.deconvolve_destvi, modalities=BIN, setup=_resolve_reference("destvi"), reads=_MAP_READS,
                setup_options=_SETUP_OPTIONS,
                writes=("obsm/{key_added}.*", "obs/{key_added}.noise", "var/{key_added}.*", "uns/{key_added}"))

# downstream
register_method(c2l.region_cluster, modalities=BIN, reads=("obsm/{abundance_key}",), writes=("obs/{key_added}", "uns/{key_added}"))
register_method(c2l.colocation_nmf, modalities=BIN, reads=("obsm/{abundance_key}",), writes=("obsm/{key_added}.*", "uns/{key_added}"))
register_method(c2l.expected_expression_per_type, modalities=BIN, kind="query")
register_method(c2l.reconstruction_qc, modalities=BIN, kind="query")
register_method(c2l.totals_qc, modalities=BIN, kind="query")
register_method(c2l.training_history, modalities=BIN, kind="query")
# stores its thresholds in uns[destvi_key]["thresholds"] (next to DestVI's own record, which it keeps)
register_method(destvi.automatic_proportion_threshold, modalities=BIN, reads=("obsm/{destvi_key}.proportions", "uns/{destvi_key}"),
                writes=("uns/{destvi_key}",))

# DestVI's exploration of the states and cell-type-specific DE (the reference by stored name, folder or model)
register_method(destvi.explore_gamma_space, modalities=BIN, setup=_resolve_stored_reference,
                reads=("obsm/{destvi_key}.proportions", "var/{destvi_key}.beta", "obsm/{spatial_key}", "uns/{destvi_key}"),
                writes=("obsm/{destvi_key}.spca.{ct}", "uns/{destvi_key}"))
register_method(destvi.de_genes_destvi, modalities=BIN, setup=_resolve_stored_reference,
                reads=("obsm/{destvi_key}.proportions", "var/{destvi_key}.beta", "var/{destvi_key}.theta", "uns/{destvi_key}"),
                writes=("uns/{key_added}",))

# figures of the deconvolution tutorials (views: {sample: AnnData} in, a Figure out)
register_method(pl.plot_gene_filter, modalities=("rna",), kind="view")
register_method(pl.plot_reference_qc, modalities=("rna",), kind="view")
register_method(pl.plot_colocation_loadings, modalities=BIN, kind="view")
register_method(pl.plot_proportion_thresholds, modalities=BIN, kind="view")
register_method(pl.plot_gamma_space, modalities=BIN, kind="view")
register_method(pl.plot_volcano, modalities=BIN, kind="view")
