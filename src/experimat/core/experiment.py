"""The :class:`Experiment`: samples per modality, an optional integrated MuData, a project folder."""

from __future__ import annotations

import os
import time
import warnings
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
from ..io.history import finished_samples as finished_in_history
from ..io.history import history_frame, run_key
from ..io.manifest import base_manifest, replace_file
from ..io.project import ProjectStore, now_iso
from ._fingerprint import fingerprint
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
from .merge import merge_samples
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
        self._fp: dict[SampleKey, str] = {}
        self._modified: set[SampleKey] = set()
        self._checked_fp: dict[SampleKey, str] = {}
        self._integrated: MuData | None = None
        self._integrated_loaded = False
        self._integrated_fp: str | None = None
        self._integrated_modified = False
        self._pending_history: list[dict[str, Any]] = []
        self._unsaved_runs: set[SampleKey] = set()  # samples with run records written as saved=false
        self._session_runs: set[tuple] = set()  # ok runs of this object (their results are in memory)
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
        return cls._create(st, adatas, project, force=force)

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
        return cls._create(st, prepared, project, force=force)

    @classmethod
    def _create(cls, st: SampleTable, adatas: dict[SampleKey, AnnData], project, *, force: bool) -> Experiment:
        expm = cls(st)
        for (mod, s), a in adatas.items():
            expm._data[mod][s] = a
            expm._modified.add((mod, s))
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
        """The AnnData of a sample, read from the project folder on first access."""
        modality = Modality(modality).value
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
        self._fp[(modality, sample)] = fingerprint(adata)
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
        self._modified.add((modality, sample))

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
        self._modified.add((modality, sample))

    def mark_modified(self, modality: str, sample: str) -> None:
        """Mark a sample as changed so that the next save rewrites it."""
        self._modified.add((Modality(modality).value, sample))

    def is_modified(self, modality: str, sample: str) -> bool:
        """Whether a sample differs from its saved copy (content fingerprints are compared)."""
        key = (modality, sample)
        if key in self._modified or self._entry(modality, sample) is None:
            return True
        if sample not in self._data[modality]:
            return False
        fp = fingerprint(self._data[modality][sample])
        self._checked_fp[key] = fp  # reused by the save that usually follows
        return fp != self._fp.get(key)

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
        if not self._integrated_loaded:
            entry = self._manifest.get("integrated")
            if entry and self._store is not None:
                self._integrated = self._read_file(entry["file"], project_files.read_integrated)
                self._integrated_fp = fingerprint(self._integrated)
            self._integrated_loaded = True
        return self._integrated

    def integrated_modality(self, modality: str) -> AnnData:
        mdata = self.integrated
        if mdata is None:
            raise ProjectError("the experiment has no integrated data yet; call expm.merge() first.")
        if modality not in mdata.mod:
            raise KeyNotFoundError("modality in the integrated data", modality, list(mdata.mod),
                                   hint=f"call expm.merge(modality={modality!r}).")
        return mdata.mod[modality]

    def mark_integrated_modified(self) -> None:
        self._integrated_modified = True

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
        import mudata as md

        from ..methods._checks import check_choice

        join = check_choice("join", join, ("inner", "outer"))
        if modality is not None and not isinstance(modality, (str, list, tuple)):
            raise InvalidInputError(f"modality must be a modality name, a list of them or None, not {modality!r}; valid: {list(MODALITIES)}.")
        mods = self.modalities if modality is None else [Modality(m).value for m in ([modality] if isinstance(modality, str) else modality)]
        out: dict[str, AnnData] = {}
        for mod in mods:
            names = self._table.samples(mod)
            if not names:
                raise InvalidInputError(f"modality {mod!r} has no samples; the experiment holds: {self.modalities}.")
            parts = {s: self.get_sample(mod, s) for s in names}
            out[mod] = merge_samples(parts, mod=mod, join=join)
        existing = dict(self.integrated.mod) if self.integrated is not None else {}
        existing.update(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # rna and spatial mods share gene names by design; MuData's global var keeps them apart
            warnings.filterwarnings("ignore", message="Cannot join columns with the same name", category=UserWarning)
            self._integrated = md.MuData(existing)
        self._integrated_loaded = True
        self._integrated_modified = True
        return self._integrated

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
        if self._integrated_modified:
            return True
        if self._integrated is None or not self._integrated_loaded:
            return False
        return fingerprint(self._integrated) != self._integrated_fp

    def _write_sample(self, store: ProjectStore, modality: str, sample: str) -> tuple[str, dict[str, Any]]:
        return project_files.write_sample(store, modality, sample, self._data[modality][sample], compression=H5_COMPRESSION)

    def _save(self, keys: list[SampleKey], *, integrated: bool) -> None:
        store = self._require_writable()
        t0 = time.perf_counter()
        manifest = self._base_manifest()
        files = manifest["files"]
        try:
            for mod, s in keys:
                if s not in self._data[mod]:
                    continue  # nothing in memory: the saved copy is current
                old = self._entry(mod, s)
                rel, entry = self._write_sample(store, mod, s)
                replace_file(files, rel, store.file_entry(rel), old)
                manifest["samples"].setdefault(mod, {})[s] = entry
            if integrated and self._integrated is not None:
                old = manifest.get("integrated")
                rel, manifest["integrated"] = project_files.write_integrated(store, self._integrated)
                replace_file(files, rel, store.file_entry(rel), old)
            self._commit(manifest, saved=[(mod, s) for mod, s in keys if s in self._data[mod]]
                         + ([(m, "integrated") for m in self._integrated.mod] if integrated and self._integrated is not None else []))
        except BaseException:
            store.discard_uncommitted()  # a refused or failed save leaves no file behind
            raise
        for mod, s in keys:
            if s in self._data[mod]:
                checked = self._checked_fp.pop((mod, s), None)
                self._fp[(mod, s)] = checked if checked is not None and (mod, s) not in self._modified else fingerprint(self._data[mod][s])
            self._modified.discard((mod, s))
        if integrated and self._integrated is not None:
            self._integrated_fp = fingerprint(self._integrated)
            self._integrated_modified = False
        logger.debug(f"saved {len(keys)} samples{' + integrated' if integrated else ''} to {store.root}", time=t0)

    def _base_manifest(self) -> dict[str, Any]:
        from .._version import __version__

        return base_manifest(self._manifest, self._table.to_records(), __version__, now_iso())

    def _commit(self, manifest: dict[str, Any], saved: Iterable[SampleKey] = ()) -> None:
        store = self._require_writable()
        generation = store.commit(manifest)
        manifest["generation"] = generation
        self._manifest = store.read_manifest(adopt=True)
        self._collect_models_garbage()
        if self._pending_history:
            store.append_history(self._pending_history)
            self._pending_history = []
        now_saved = sorted(k for k in saved if k in self._unsaved_runs)
        if now_saved:  # runs recorded with saved=false are now committed: say so in the history
            store.append_history([{"event": "commit", "generation": generation, "time": now_iso(),
                                   "samples": [list(k) for k in now_saved]}])
            self._unsaved_runs.difference_update(now_saved)

    def _collect_models_garbage(self) -> None:
        if self._store is not None:
            model_store.collect_garbage(self._store, self._manifest)

    def _save_as(self, path: Path, *, force: bool) -> Path:
        with project_files.creating_project(path, force=force) as new:
            manifest = self._base_manifest()
            manifest.pop("generation", None)
            manifest["created"] = now_iso()
            manifest["files"], manifest["samples"], manifest["integrated"], manifest["models"] = {}, {}, None, {}
            old_store = self._store
            for mod in MODALITIES:
                for s in self._table.samples(mod):
                    entry = self._entry(mod, s)
                    if s not in self._data[mod] and entry is not None and old_store is not None:
                        rel, e = project_files.copy_sample_file(old_store, new, mod, s, entry, self._manifest["files"][entry["file"]],
                                                                verify=self._verify)
                    else:
                        self.get_sample(mod, s)
                        rel, e = self._write_sample(new, mod, s)
                    manifest["files"][rel] = new.file_entry(rel)
                    manifest["samples"].setdefault(mod, {})[s] = e
            if self.integrated is not None:
                rel, manifest["integrated"] = project_files.write_integrated(new, self._integrated, quiet=False)
                manifest["files"][rel] = new.file_entry(rel)
            if old_store is not None:
                manifest["models"] = project_files.copy_models_and_history(old_store, new, self._manifest.get("models", {}))
            new.commit(manifest)
        if self._store is not None:
            self._store.lock.release()
            if self._finalizer is not None:
                self._finalizer.detach()
        self._store = new
        self._manifest = new.read_manifest()
        self._finalizer = weakref.finalize(self, _release, new)
        self._fp = {(m, s): fingerprint(a) for m in MODALITIES for s, a in self._data[m].items()}
        self._modified.clear()
        self._integrated_fp = fingerprint(self._integrated) if self._integrated is not None else None
        self._integrated_modified = False
        if self._pending_history:
            new.append_history([{**r, "saved": True} if "method" in r else r for r in self._pending_history])
            self._pending_history = []
        self._unsaved_runs.clear()
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
        self._commit(manifest)
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
            return self._store is not None and not self._integrated_modified
        return self._store is not None and (modality, sample) not in self._modified and (modality, sample) in {
            (m, s) for m, e in self._manifest.get("samples", {}).items() for s in e}

    def add_history(self, records: list[dict[str, Any]]) -> None:
        """Record method runs. Each record says whether its sample's result was already committed
        (``saved``); a run counts as finished for ``resume=True`` only once it is."""
        marked = []
        for r in records:
            r = dict(r)
            if "method" in r:
                r["saved"] = bool(self.is_writable_backed and self._result_saved(r.get("modality"), r.get("sample")))
                if r.get("outcome") == "ok":
                    self._session_runs.add(run_key(r))
                    if not r["saved"]:
                        self._unsaved_runs.add((r.get("modality"), r.get("sample")))
            marked.append(r)
        if self.is_writable_backed:
            self._store.append_history(marked)
        else:
            self._pending_history.extend(marked)

    def _history_lines(self) -> list[dict[str, Any]]:
        saved = self._store.read_history() if self._store is not None else []
        return saved + list(self._pending_history)

    def _history_records(self) -> list[dict[str, Any]]:
        return [r for r in self._history_lines() if "method" in r]

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
        return finished_in_history(self._history_lines(), method, modality, self._session_runs)

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
