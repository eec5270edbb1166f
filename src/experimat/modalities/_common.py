"""Methods bound to every modality."""

from .. import pl
from ..core.registry import register_method
from ..methods import preprocess as pp

ALL = ("rna", "spatial-bin", "spatial-cell")
SPATIAL = ("spatial-bin", "spatial-cell")


def models_in_project(expm, modality: str, options: dict) -> dict:
    """Setup of methods that train a model: inside an experiment nothing is written outside the project.

    The model comes back in the result (``attrs["model"]``) and the runner stores it in the
    project's ``models/``; a ``save_path`` (the standalone functions' own folder) is refused.
    """
    if options.get("save_path") is not None:
        from .._errors import InvalidInputError

        raise InvalidInputError(
            "save_path= writes outside the project; inside an experiment the trained model is stored in the "
            "project's models/ (see expm.models, expm.load_model(name)). Drop save_path=, or call the function "
            "of experimat.methods directly on an AnnData to write into a folder of your own."
        )
    return options


# preprocessing
register_method(pp.qc_metrics, modalities=ALL, reads=("layers/{layer}",), writes=("obs/{key_added}.*", "var/{key_added}.*", "uns/{key_added}"))
register_method(pp.normalize, modalities=ALL, reads=("layers/{layer}",), writes=("layers/{key_added}", "uns/{key_added}"))
register_method(pp.pca, modalities=ALL, reads=("layers/{layer}",), writes=("obsm/{key_added}", "uns/{key_added}"))
#: filters replace the whole sample (observations or genes removed from every slot)
WHOLE_SAMPLE = ("X", "obs/*", "var/*", "obsm/*", "varm/*", "obsp/*", "layers/*")
register_method(pp.filter_cells, modalities=ALL, reads=("layers/{layer}",), writes=(*WHOLE_SAMPLE, "uns/{key_added}"))
register_method(pp.filter_genes, modalities=ALL, reads=("layers/{layer}",), writes=(*WHOLE_SAMPLE, "uns/{key_added}"))
register_method(pp.neighbors_umap, modalities=ALL, reads=("obsm/{obsm_key}",), writes=("obsm/{key_added}", "obsp/connectivities", "obsp/distances", "uns/{key_added}", "uns/neighbors", "uns/umap"))

# figures (read-only)
register_method(pl.plot_embedding, modalities=ALL, kind="view")
register_method(pl.plot_training_history, modalities=ALL, kind="view")

# LOCAT: genes concentrated in one region of an embedding (spatial data: embedding="spatial", n_dims=None)
from ..methods import locat  # noqa: E402

register_method(locat.locat, modalities=ALL, reads=("layers/{layer}",), writes=("var/{key_added}.*", "uns/{key_added}"))
