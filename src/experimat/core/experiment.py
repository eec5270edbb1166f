"""The :class:`Experiment`: samples per modality, an optional integrated MuData, a project folder."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._errors import (
    InvalidInputError,
    KeyNotFoundError,
    ProjectError,
    SampleNotFoundError,
)
from .._keys import MODALITIES, Modality
from .._logging import logger
from .._saved_model import SavedModel
from ..io import files as project_files
from ..io import models as model_store
from ..io import saving
from ..io.history import history_frame
from ..io.manifest import base_manifest
from ..io.project import ProjectStore, now_iso
from ._changes import INTEGRATED, ChangeTracker
from ._runlog import RunLog
from .accessor import ModalityAccessor
from .describe import describe_experiment
from .ingest import (  # noqa: F401  (prepare_sample, has_gene_table: re-exported)
    check_new_anndatas,
    check_new_sample,
    has_gene_table,
    prepare_anndatas,
    prepare_sample,
    read_sheet_samples,
    warn_unharmonized,
)
from .merge import integrate, merge_modalities, merge_samples
from .sample_table import SampleTable, resolve_run_on_samples, validate_sample_name

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

SampleKey = tuple[str, str]
#: compression of sample files (None: fastest; "lzf": ~1/3 smaller, ~2x slower to write; "gzip": smallest)
H5_COMPRESSION: str | None = None


# -- helpers ------------------------------------------------------------------------------------
#: reads a sample file (a module attribute so that tests can simulate a writer racing a read)
_read_sample = project_files.read_sample


# -- the experiment -----------------------------------------------------------------------------
class Experiment:
    """Samples per modality (one AnnData each), an optional integrated MuData, a project folder.

    Create one with :meth:`from_table` or :meth:`from_anndata`; open a saved one with
    :func:`load_experiment`.

    Examples
    --------
    >>> expm = em.Experiment.from_table("samples.tsv", project="projects/muscle")  # doctest: +SKIP
    >>> expm.spatial_bin["Vis5A_2dpi"]  # doctest: +SKIP
    >>> expm.save()  # doctest: +SKIP
    """

    def __init__(self, table: SampleTable, *, _store: ProjectStore | None = None, _manifest: dict | None = None,
                 verify: bool = True) -> None:
        self._table = table
        self._store = _store
        self._manifest: dict[str, Any] = _manifest or {}
        self._verify = verify
        self._data: dict[str, dict[str, AnnData]] = {m: {} for m in MODALITIES}
        self._changes = ChangeTracker()  # what save() rewrites
        self._integrated: MuData | None = None
        self._integrated_loaded = False
        self._runs = RunLog()  # history records and which runs' results are committed
        self._accessors = {m: ModalityAccessor(self, m) for m in MODALITIES}
        self._finalizer = weakref.finalize(self, _release, _store) if _store is not None else None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_table(
        cls,
        table: SampleTable | pd.DataFrame | str | os.PathLike,
        *,
        project: str | os.PathLike | None = None,
        harmonize_genes: bool = True,
        load_images: bool = True,
        force: bool = False,
    ) -> Experiment:
        """Read every sample of a sample sheet (``sample, modality, taxa, batch, group, path``).

        Each ``path`` is read with :func:`experimat.io.read`, which detects the layout (Space Ranger,
        Visium HD, Xenium, CosMx, MERSCOPE, 10x h5/mtx, h5ad, count table); a ``coordinates`` column
        names a coordinates table for count tables, ``image``/``image_scale`` an image for them,
        ``bin_size`` the Visium HD bin size (µm). A Visium HD run is read as bins for
        ``spatial-bin`` and as its segmented cells for ``spatial-cell``.
        With ``project``, a new project folder is created and saved.
        """
        from ..methods._checks import check_bool, check_path

        check_bool("force", force)
        check_bool("harmonize_genes", harmonize_genes)
        if project is not None:
            check_path("project", project)
        st = table if isinstance(table, SampleTable) else SampleTable(table)
        warn_unharmonized({r["sample"]: r["taxa"] for r in st.to_records()}, harmonize_genes)
        adatas = read_sheet_samples(st, harmonize_genes=harmonize_genes, load_images=load_images)
        return cls._create(st, adatas, project, force=force, handed=False)

    @classmethod
    def from_anndata(
        cls,
        adatas: Mapping[str, AnnData],
        *,
        modality: str,
        taxa: str,
        project: str | os.PathLike | None = None,
        batch: Mapping[str, str] | str | None = None,
        group: Mapping[str, str] | str | None = None,
        harmonize_genes: bool = True,
        copy: bool = True,
        force: bool = False,
    ) -> Experiment:
        """Build an experiment from AnnData objects already in memory (``{sample: adata}``)."""
        from ..methods._checks import check_bool, check_path

        modality = Modality(modality).value
        if not isinstance(adatas, Mapping) or not adatas:
            raise InvalidInputError("adatas must be a non-empty dict {sample_name: AnnData}.")
        for name, value in (("force", force), ("harmonize_genes", harmonize_genes), ("copy", copy)):
            check_bool(name, value)
        if project is not None:
            check_path("project", project)
        check_new_anndatas(adatas, taxa=taxa, batch=batch, group=group)
        warn_unharmonized(dict.fromkeys(adatas, taxa), harmonize_genes)
        st, prepared = prepare_anndatas(adatas, modality=modality, taxa=taxa, batch=batch, group=group,
                                        harmonize_genes=harmonize_genes, copy=copy)
        return cls._create(st, prepared, project, force=force, handed=not copy)

    @classmethod
    def _create(cls, st: SampleTable, adatas: dict[SampleKey, AnnData], project, *, force: bool,
                handed: bool) -> Experiment:
        expm = cls(st)
        for (mod, s), a in adatas.items():
            expm._data[mod][s] = a
            expm._changes.mark((mod, s))
            if handed:  # the caller still holds these objects (copy=False)
                expm._changes.hand_out((mod, s), a)
        if project is not None:
            expm.save(project, force=force)
        return expm

    # -- basic properties ---------------------------------------------------------------------
    @property
    def table(self) -> SampleTable:
        """The sample sheet."""
        return self._table

    @property
    def rna(self) -> ModalityAccessor:
        return self._accessors["rna"]

    @property
    def spatial_bin(self) -> ModalityAccessor:
        return self._accessors["spatial-bin"]

    @property
    def spatial_cell(self) -> ModalityAccessor:
        return self._accessors["spatial-cell"]

    def modality(self, name: str) -> ModalityAccessor:
        """The accessor of a modality given by name (``"spatial-bin"`` or ``"spatial_bin"``)."""
        return self._accessors[Modality(name.replace("_", "-")).value]

    @property
    def modalities(self) -> list[str]:
        return self._table.modalities

    @property
    def project_path(self) -> Path | None:
        return self._store.root if self._store is not None else None

    @property
    def mode(self) -> str | None:
        return self._store.mode if self._store is not None else None

    @property
    def is_writable_backed(self) -> bool:
        return self._store is not None and self._store.writable

    # -- samples ------------------------------------------------------------------------------
    def resolve_samples(self, modality: str, run_on_samples: Any) -> list[str]:
        """Map a ``run_on_samples`` value to the exact list of sample names (sheet order)."""
        return resolve_run_on_samples(self._table, modality, run_on_samples)

    def _entry(self, modality: str, sample: str) -> dict[str, Any] | None:
        return self._manifest.get("samples", {}).get(modality, {}).get(sample)

    def get_sample(self, modality: str, sample: str) -> AnnData:
        """The AnnData of a sample, read from the project folder on first access.

        The object is the experiment's own: edits in place are saved by the next :meth:`save`."""
        modality = Modality(modality).value
        adata = self._sample(modality, sample)
        self._changes.hand_out((modality, sample), adata)
        return adata

    def _sample(self, modality: str, sample: str) -> AnnData:
        """The AnnData of a sample for experimat's own code (the runner), which records its changes
        explicitly; unlike :meth:`get_sample` it is not treated as handed to user code."""
        loaded = self._data[modality]
        if sample in loaded:
            return loaded[sample]
        if sample not in self._table.samples(modality):
            raise SampleNotFoundError(sample, self._table.samples(modality), modality)
        entry = self._entry(modality, sample)
        if entry is None or self._store is None:
            raise ProjectError(f"sample {sample!r} ({modality}) is neither in memory nor in the project folder.")
        adata = self._read_file(entry["file"], _read_sample)
        loaded[sample] = adata
        return adata

    def get_sample_slots(self, modality: str, sample: str, slots: Iterable[str] = ("obs", "obsm")) -> AnnData:
        """Only some slots of a sample (``obs``, ``var``, ``obsm``, ``obsp``, ``uns``), without ``X`` or layers.

        Reads just those groups of the sample's file, checking each against its own checksum in
        the manifest (:mod:`experimat.io.checksums`; ``X`` is neither read nor hashed), so the
        coordinates and annotations of a 500,000-bin sample open in seconds. The result is an AnnData with ``X=None`` that is not attached to the experiment.

        Examples
        --------
        >>> meta = expm.get_sample_slots("spatial-bin", "hd1")  # doctest: +SKIP
        >>> meta.obsm["spatial"]  # doctest: +SKIP
        """
        modality = Modality(modality).value
        slots = project_files.check_slot_names(slots)
        if sample in self._data[modality]:
            return project_files.slots_of(self._data[modality][sample], slots)
        if sample not in self._table.samples(modality):
            raise SampleNotFoundError(sample, self._table.samples(modality), modality)
        entry = self._entry(modality, sample)
        if entry is None or self._store is None:
            raise ProjectError(f"sample {sample!r} ({modality}) is neither in memory nor in the project folder.")
        return self._read_file(entry["file"], lambda f: project_files.read_sample_slots(f, slots),
                               elements=project_files.slots_read(slots))

    def _read_file(self, rel: str, read, *, elements: list[str] | None = None):
        """Check a file named by the opened manifest and read it (``elements``: see ``io.files.read_checked``).

        A writer may commit a new manifest and remove this file between the check and the read
        (readers never lock): a missing or changed file then raises :class:`ProjectChangedError`
        (``load_experiment`` retries with the new manifest) instead of a bare I/O error."""
        return project_files.read_checked(self._store, self._manifest, rel, read, verify=self._verify, elements=elements)

    def set_sample(self, modality: str, sample: str, adata: AnnData) -> None:
        """Replace the AnnData of an existing sample (marked modified)."""
        from ..methods._checks import make_columns_writable

        modality = Modality(modality).value
        if sample not in self._table.samples(modality):
            raise SampleNotFoundError(sample, self._table.samples(modality), modality)
        check_new_sample(adata, sample=sample, taxa=self._table.row(modality, sample)["taxa"])
        make_columns_writable(adata, sample=sample)
        self._data[modality][sample] = adata
        self._changes.mark((modality, sample))
        self._changes.hand_out((modality, sample), adata)  # the caller holds it

    def add_sample(self, adata: AnnData, *, sample: str, modality: str, taxa: str, batch: str | None = None,
                   group: str | None = None, harmonize_genes: bool = True) -> None:
        """Add a new sample held in memory (saved with the next :meth:`save`)."""
        modality = Modality(modality).value
        validate_sample_name(sample)
        if sample in self._table.samples(modality):
            raise InvalidInputError(f"sample {sample!r} already exists in {modality}; choose another name.")
        check_new_sample(adata, sample=sample, taxa=taxa)
        warn_unharmonized({sample: taxa}, harmonize_genes)
        prepare_sample(adata, sample=sample, modality=modality, taxa=taxa, batch=batch, group=group, harmonize_genes=harmonize_genes)
        self._table = self._table.add([{"sample": sample, "modality": modality, "taxa": taxa, "batch": batch or "",
                                        "group": group or "", "path": ""}])
        self._data[modality][sample] = adata
        self._changes.mark((modality, sample))
        self._changes.hand_out((modality, sample), adata)  # the caller holds it

    def mark_modified(self, modality: str, sample: str) -> None:
        """Mark a sample as changed so that the next save rewrites it."""
        self._changes.mark((Modality(modality).value, sample))

    def is_modified(self, modality: str, sample: str) -> bool:
        """Whether a sample differs from its saved copy: it was marked changed (by a method,
        ``set_sample``, ...), or it was handed out and its content fingerprint differs now."""
        key = (modality, sample)
        if self._entry(modality, sample) is None:
            return True
        if sample not in self._data[modality]:
            return self._changes.is_marked(key)
        return self._changes.changed(key, self._data[modality][sample])

    def clean_sample_file(self, modality: str, sample: str) -> Path | None:
        """The saved file of a sample when it is unchanged in memory, else None (for workers)."""
        entry = self._entry(modality, sample)
        if entry is None or self._store is None or self.is_modified(modality, sample):
            return None
        return self._store.check_file(entry["file"], self._manifest["files"][entry["file"]], verify=False)

    # -- integrated data ----------------------------------------------------------------------
    @property
    def integrated(self) -> MuData | None:
        """The integrated MuData (one mod per modality), or None before :meth:`merge`."""
        mdata = self._integrated_data()
        if mdata is not None:
            self._changes.hand_out(INTEGRATED, mdata)
        return mdata

    def _integrated_data(self) -> MuData | None:
        if not self._integrated_loaded:
            entry = self._manifest.get("integrated")
            if entry and self._store is not None:
                self._integrated = self._read_file(entry["file"], project_files.read_integrated)
            self._integrated_loaded = True
        return self._integrated

    def integrated_modality(self, modality: str) -> AnnData:
        """One modality of the integrated MuData (after :meth:`merge`)."""
        if self._integrated_data() is not None:
            self._changes.hand_out(INTEGRATED, self._integrated)
        return self._integrated_mod(modality)

    def _integrated_mod(self, modality: str) -> AnnData:
        mdata = self._integrated_data()
        if mdata is None:
            raise ProjectError("the experiment has no integrated data yet; call expm.merge() first.")
        if modality not in mdata.mod:
            raise KeyNotFoundError("modality in the integrated data", modality, list(mdata.mod),
                                   hint=f"call expm.merge(modality={modality!r}).")
        return mdata.mod[modality]

    def mark_integrated_modified(self) -> None:
        self._changes.mark(INTEGRATED)

    def merge(self, modality: str | Iterable[str] | None = None, *, join: str = "inner") -> MuData:
        """Concatenate the samples of each modality into the integrated MuData.

        One MuData mod per modality; obs columns are kept, the ``counts`` layer is kept,
        ``obsm['spatial']`` keeps each sample's own coordinates (tell samples apart with
        ``obs['sample']``) and ``obsm['spatial.tiled']`` shifts samples side by side so they do
        not overlap. Genes are matched by ``var_names`` (unversioned Ensembl ids after
        harmonisation); the number of shared genes is reported.

        Parameters
        ----------
        modality
            A modality, a list of them, or None for every modality with samples.
        join
            ``"inner"`` (genes shared by all samples) or ``"outer"`` (union, missing = 0).
        """
        from ..methods._checks import check_choice

        join = check_choice("join", join, ("inner", "outer"))
        out: dict[str, AnnData] = {}
        for mod in merge_modalities(modality, self.modalities):
            names = self._table.samples(mod)
            if not names:
                raise InvalidInputError(f"modality {mod!r} has no samples; the experiment holds: {self.modalities}.")
            out[mod] = merge_samples({s: self._sample(mod, s) for s in names}, mod=mod, join=join)
        self._integrated = integrate(out, self._integrated_data())
        self._integrated_loaded = True
        self._changes.mark(INTEGRATED)
        return self.integrated

    # -- saving -------------------------------------------------------------------------------
    def _require_writable(self) -> ProjectStore:
        if self._store is None:
            raise ProjectError("this experiment has no project folder; save it with expm.save('path/to/project').")
        self._store.require_writable()
        self._store.check_can_commit()  # closed, lock lost, or changed behind our back: refuse before writing
        return self._store

    def save(self, path: str | os.PathLike | None = None, *, force: bool = False) -> Path:
        """Write what changed since load to the project folder (crash-safe).

        With ``path`` naming another folder, the whole project is written there (save-as) and
        the experiment continues in the new folder.
        """
        from ..methods._checks import check_bool, check_path

        check_bool("force", force)
        if path is not None:
            check_path("path", path)
        if path is not None and (self._store is None or Path(path).resolve() != self._store.root):
            return self._save_as(Path(path), force=force)
        self._require_writable()
        keys = [(m, s) for m in MODALITIES for s in self._table.samples(m) if self.is_modified(m, s)]
        self._save(keys, integrated=self._integrated_is_modified())
        return self._store.root

    def save_samples(self, keys: Iterable[SampleKey]) -> None:
        """Save the given samples (and the manifest) now."""
        self._require_writable()
        self._save(list(keys), integrated=False)

    def _integrated_is_modified(self) -> bool:
        return self._integrated is not None and self._changes.changed(INTEGRATED, self._integrated)

    def _save(self, keys: list[SampleKey], *, integrated: bool) -> None:
        store = self._require_writable()
        t0 = time.perf_counter()
        samples = [(m, s, self._data[m][s]) for m, s in keys if s in self._data[m]]
        mdata = self._integrated if integrated else None
        manifest = saving.write_changes(store, self._base_manifest(), samples, mdata, compression=H5_COMPRESSION)
        self._adopt(manifest, saved=[(m, s) for m, s, _ in samples] + ([(m, "integrated") for m in mdata.mod] if mdata is not None else []))
        for m, s in keys:
            self._changes.saved((m, s), self._data[m].get(s))
        if mdata is not None:
            self._changes.saved(INTEGRATED, mdata)
        logger.debug(f"saved {len(samples)} samples{' + integrated' if mdata is not None else ''} to {store.root}", time=t0)

    def _base_manifest(self) -> dict[str, Any]:
        from .._version import __version__

        return base_manifest(self._manifest, self._table.to_records(), __version__, now_iso())

    def _adopt(self, manifest: dict[str, Any], saved: Iterable[SampleKey] = ()) -> None:
        """``manifest`` was committed: it is the current one; write the history records it completes."""
        self._manifest = manifest
        self._runs.committed(self._store, manifest.get("generation", 0), saved)

    def _save_as(self, path: Path, *, force: bool) -> Path:
        samples = []
        for mod in MODALITIES:
            for s in self._table.samples(mod):
                adata = self._data[mod].get(s)
                if adata is None and (self._entry(mod, s) is None or self._store is None):
                    adata = self._sample(mod, s)  # raises: neither in memory nor in a project
                samples.append((mod, s, adata))
        integ = self._integrated_data()
        new = saving.write_project(path, force=force, manifest=self._base_manifest(), samples=samples, integrated=integ,
                                   source=self._store, source_manifest=self._manifest, verify=self._verify,
                                   compression=H5_COMPRESSION)
        if self._store is not None:
            self._store.lock.release()
            if self._finalizer is not None:
                self._finalizer.detach()
        self._store = new
        self._manifest = new.read_manifest()
        self._finalizer = weakref.finalize(self, _release, new)
        written = {(m, s): a for m in MODALITIES for s, a in self._data[m].items()}
        self._changes.all_saved(written | ({INTEGRATED: integ} if integ is not None else {}))
        self._runs.moved(new)
        logger.info(f"project written to {new.root}")
        return new.root

    # -- models -------------------------------------------------------------------------------
    def save_model(self, name: str, model: SavedModel) -> Path:
        """Store a fitted model under ``models/<name>.<token>/`` and commit it to the manifest.

        ``model`` is an instance of a registered :class:`~experimat.SavedModel` class (see
        :func:`~experimat.register_model`); an existing model of that name is replaced.
        """
        store = self._require_writable()
        validate_sample_name(name)
        entry = model_store.write_model(store, name, model)
        manifest = self._base_manifest()
        manifest["models"][name] = entry
        self._adopt(saving.commit(store, manifest))
        return store.root / entry["dir"]

    def load_model(self, name: str) -> SavedModel:
        """Load a model stored with :meth:`save_model`.

        The class comes only from the registry of model classes; every file is checked against its
        sha256; nothing is unpickled (older projects' models are read through the upgrade path).
        """
        from .registry import load_plugins

        models = self._manifest.get("models", {})
        if name not in models:
            raise KeyNotFoundError("model", name, list(models))
        if self._store is None:
            raise ProjectError(f"model {name!r} has no project folder to load from.")
        load_plugins()  # built-in and plugin modules register their model classes
        return model_store.read_model(self._store, name, models[name])

    @property
    def models(self) -> list[str]:
        return list(self._manifest.get("models", {}))

    # -- history ------------------------------------------------------------------------------
    def _result_saved(self, modality: Any, sample: Any) -> bool:
        if sample == "integrated":
            return self._store is not None and not self._changes.is_marked(INTEGRATED)
        return self._store is not None and not self._changes.is_marked((modality, sample)) and (modality, sample) in {
            (m, s) for m, e in self._manifest.get("samples", {}).items() for s in e}

    def add_history(self, records: list[dict[str, Any]]) -> None:
        """Record method runs. Each record says whether its sample's result was already committed
        (``saved``); a run counts as finished for ``resume=True`` only once it is."""
        self._runs.add(records, self._store if self.is_writable_backed else None, self._result_saved)

    def _history_records(self) -> list[dict[str, Any]]:
        return [r for r in self._runs.lines(self._store) if "method" in r]

    def history(self) -> pd.DataFrame:
        """Every recorded method call per sample (method, params, outcome, times, versions, host).

        ``saved`` says whether the run's result was committed when it was recorded (a later
        save commits it too). Damaged lines of ``history.jsonl`` are skipped with a warning."""
        return history_frame(self._history_records())

    def finished_samples(self, method: str, modality: str) -> dict[str, str]:
        """``{sample: params_hash}`` of samples whose last run of ``method`` finished and whose result is kept.

        A run counts once its result is committed to the project (recorded ``saved``, or a later
        commit of that sample), or when it ran in this session (its result is in memory). A run
        whose result was never saved (``save=False``, then a crash or a new session) does not count."""
        return self._runs.finished(self._store, method, modality)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the writer lock (unsaved changes stay in memory only).

        A closed experiment can still be read; ``save()`` then raises (reopen it to write), and
        ``save(new_path)`` writes a new project."""
        if self._store is not None:
            self._store.lock.release()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return describe_experiment(self)

def _release(store: ProjectStore) -> None:
    store.lock.release()
