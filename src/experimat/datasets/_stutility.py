"""The STUtility example data (Spatial Transcriptomics 2k arrays): 8 mouse brain (hippocampus) sections and 4 mouse
olfactory bulb sections with their H&E images, registered with their public sources and checksums, and a sample
sheet that builds a multi-section project from them (the data set of tutorial 06)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._errors import InvalidInputError
from ._registry import REGISTRY, DataFile, Dataset, fetch

if TYPE_CHECKING:
    import pandas as pd

NAME = "st_mouse_brain_and_olfactory_bulb_stutility"
_COMMIT = "9a8f421499e58b13340ee386db07b0eba923c88c"
_RAW = f"https://raw.githubusercontent.com/jbergenstrahle/STUtility/{_COMMIT}/inst/extdata/"
_SRC = f"GitHub jbergenstrahle/STUtility, commit {_COMMIT}, inst/extdata/"
HIPPO = tuple(f"Hippo{i}" for i in range(1, 9))
MOB = tuple(f"MOB{i}" for i in range(1, 5))


def _stu_copy(name: str, path: str, size: int, sha256: str) -> DataFile:
    return DataFile(name, size, sha256, _SRC + path, _RAW + path)


def _stu_gzip(name: str, path: str, size: int, sha256: str, source_size: int, source_sha256: str) -> DataFile:
    return DataFile(name, size, sha256, f"{_SRC}{path}, gzipped (gzip -n -9)", convert="gzip", source_url=_RAW + path,
                    source_size=source_size, source_sha256=source_sha256)


DATASET = Dataset(
    name=NAME,
    description="Spatial Transcriptomics (2k arrays, 100 um spots) example data of the STUtility R package: 8 mouse "
    "brain sections around the hippocampus (Hippo1-8, ~1,000-1,350 spots under tissue x 10,000 genes, no image) and "
    "4 mouse olfactory bulb sections (MOB1-4, ~380-440 spots x 1,000 genes, with H&E); raw counts, genes as "
    "versioned Ensembl ids (symbols in mouse_genes.tsv.gz), spot pixel positions in the alignment tables.",
    citation="Bergenstråhle, Larsson & Lundeberg, BMC Genomics 21:482 (2020), STUtility (MIT license).",
    files=(
        _stu_copy("mouse_genes.tsv.gz", "mouse_genes.tsv.gz", 445210,
                  "914e92c5d3f57770ed89a1db9ba64a95dfcbe2f0592027551eaa3e05b47495d9"),
        _stu_copy("hippo/Hippo1.tsv.gz", "counts/Hippo1.tsv.gz", 2593184,
                  "fd8c5924f437e515085b31b347658238df02323d31551741f67e195ab9345fe5"),
        _stu_copy("hippo/Hippo2.tsv.gz", "counts/Hippo2.tsv.gz", 2862927,
                  "4c924d620f1632180ef832a3ecd984814d39d6732783cb86cd464c9a420b3cdf"),
        _stu_copy("hippo/Hippo3.tsv.gz", "counts/Hippo3.tsv.gz", 2887278,
                  "103ce1600ff4e19b0e7ba93092afa4828785070bc330b3a7640acd80ee31c45f"),
        _stu_copy("hippo/Hippo4.tsv.gz", "counts/Hippo4.tsv.gz", 2535462,
                  "4a6fa993954fb7183c8d5c57d01f0b11df7974e0c6646788f1a926aae38fea3f"),
        _stu_copy("hippo/Hippo5.tsv.gz", "counts/Hippo5.tsv.gz", 2519104,
                  "4619147463d9941fa10376fa997352cc08604181d9d661cfc0aada50ae1255a7"),
        _stu_copy("hippo/Hippo6.tsv.gz", "counts/Hippo6.tsv.gz", 2771628,
                  "ceac19f057167a490948cf98936c568c7fc8d3304552d9b25c82f7ca48d1b3ea"),
        _stu_copy("hippo/Hippo7.tsv.gz", "counts/Hippo7.tsv.gz", 2793437,
                  "3de2963daef14dcaa61bc41f19f840f86843a68c68f678b0d2349991df98299f"),
        _stu_copy("hippo/Hippo8.tsv.gz", "counts/Hippo8.tsv.gz", 2992529,
                  "838db3c94c854367455a7b87afc530d8aab17f0ed6a3648ca01e8a9cd8ab630d"),
        _stu_copy("hippo/alignment_table_Hippo1.tsv.gz", "counts/alignment_table_Hippo1.tsv.gz", 21380,
                  "b0ff535e7060b102372790d2625bb5d5dc22b13bd9f706011f8df25c2444bcf3"),
        _stu_copy("hippo/alignment_table_Hippo2.tsv.gz", "counts/alignment_table_Hippo2.tsv.gz", 24383,
                  "30c9ab552f7937d00cbdb1214b7d1913130d3fe6c6baa0d379ca3d176a16d010"),
        _stu_copy("hippo/alignment_table_Hippo3.tsv.gz", "counts/alignment_table_Hippo3.tsv.gz", 24369,
                  "d4709fe7453d98c379df764b16664714690ce0bcb10ae79e1f863ee67559db9f"),
        _stu_copy("hippo/alignment_table_Hippo4.tsv.gz", "counts/alignment_table_Hippo4.tsv.gz", 24453,
                  "b01f87859820052a08cf3e2230d3afd19d264e3e568b6d6f96aad1efdd8c853a"),
        _stu_copy("hippo/alignment_table_Hippo5.tsv.gz", "counts/alignment_table_Hippo5.tsv.gz", 24532,
                  "5c461727956e040c8863ee6729059c295ab1cc8f06fe6931a36d37f16d153af4"),
        _stu_copy("hippo/alignment_table_Hippo6.tsv.gz", "counts/alignment_table_Hippo6.tsv.gz", 24686,
                  "341c35c406f3f63d1ddf8f1d13ac646b3a244ff695eafdfae3d8880faf04374e"),
        _stu_copy("hippo/alignment_table_Hippo7.tsv.gz", "counts/alignment_table_Hippo7.tsv.gz", 24704,
                  "1b1945f7f60da81c407f5b94b0c93f914c1300c29c2672f1d73c92c9d2e797c7"),
        _stu_copy("hippo/alignment_table_Hippo8.tsv.gz", "counts/alignment_table_Hippo8.tsv.gz", 24683,
                  "9817c2f1bceedadf85fd9c56a04ea813abf7f0c075c2662430b8b1c2e28dd291"),
        _stu_copy("mob/MOB1.jpg", "counts/MOB1.jpg", 328839,
                  "c1c292187221bab077ac1b15e95cf665db35684c98d6193af56d2e8b7772fe20"),
        _stu_copy("mob/MOB2.jpg", "counts/MOB2.jpg", 399001,
                  "1079fe52f600ec212a6a59cef76b8697fcd776d0cdb10461ad3bb738eaa5c0b6"),
        _stu_copy("mob/MOB3.jpg", "counts/MOB3.jpg", 297951,
                  "0ac2c820ca6614e3ebc7fef3004a85c4623093b10741858e5c5328d7310606ca"),
        _stu_copy("mob/MOB4.jpg", "counts/MOB4.jpg", 310162,
                  "c45a4f559fb560e8b0224085c9a9ed2bf20e17a1128a7e2c1c36050b173acc0b"),
        _stu_gzip("mob/MOB1.tsv.gz", "counts/MOB1.tsv", 371899,
                  "6ebbfc4b05967d4a364f706c9973e5309df8933bcfca98601af02ae2e586b6ec",
                  3919144, "82c0691f800355369fd8a72ff44ba1e3112d4e44a790f490a9fa267876a9352e"),
        _stu_gzip("mob/MOB2.tsv.gz", "counts/MOB2.tsv", 398322,
                  "90999b2a16254afc535aa4d89d2e53fcc87641211b5a4d1dbb6b983ef8f030d8",
                  3919474, "449dcc351ede5c63f9afe313479dbb830ba32c6e86b56b258276304102d1f7e9"),
        _stu_gzip("mob/MOB3.tsv.gz", "counts/MOB3.tsv", 655597,
                  "25cb1d930bb2be320738647d7e29d6c3f511f97315e7efc9def9a4a06863eee6",
                  3936527, "f0b9601a10d627d372c412cad4a4dde2a1dee9f2433e51f07ca26d534be015ea"),
        _stu_gzip("mob/MOB4.tsv.gz", "counts/MOB4.tsv", 604047,
                  "b34977808059e7708ccf5b7d60f7d51cd12a7bf893f3d088231cc8095a7159e3",
                  3929191, "bc782caf3e990468d579715139db4e9c1f682b7c625978f1073720458f98a509"),
        _stu_gzip("mob/alignment_table_MOB1.tsv.gz", "counts/alignment_table_MOB1.tsv", 22560,
                  "472ac3ca6b5641ac2ef769598442c7f5b1204af80fb21e734423e32381277ef6",
                  66695, "91ade06cf93bc0b3cd728846c34e310a8365200d1ad33498e6a0eb6951a92164"),
        _stu_gzip("mob/alignment_table_MOB2.tsv.gz", "counts/alignment_table_MOB2.tsv", 22613,
                  "20be43b65f716a51148ccc080f9182c37c18eb2cca388de97d4da96d22e31723",
                  66742, "6d86b226386b0a08f825b3bff4b5c359f00fd52d3f53d77db0376b0f7e0ec30d"),
        _stu_gzip("mob/alignment_table_MOB3.tsv.gz", "counts/alignment_table_MOB3.tsv", 22636,
                  "9665b4e989e8338167ed00e19cce944e60276034ff4051fb9d0c7bfff360b6b3",
                  67142, "da0ce26ad12b94b6d0784ddc1c0c76e998d3bbd2579bad6aa8c4ac2c4f7f2e33"),
        _stu_gzip("mob/alignment_table_MOB4.tsv.gz", "counts/alignment_table_MOB4.tsv", 22713,
                  "c6deee4f99cbe5c93bf728a14738d033db6775600e6f9f439c82cca42c033f66",
                  67379, "243fa0518132fbc750cbf05ae17946d66c94be32b48803b27c70fde3d76fd5ff"),
    ),
)
REGISTRY[NAME] = DATASET


def stutility_sheet(sections: Sequence[str] | None = None) -> pd.DataFrame:
    """A sample sheet of the STUtility sections (default: all 12; e.g. ``["Hippo1", "Hippo2", "MOB1", "MOB2"]``).

    Each row reads a count table with its alignment table (spots under the tissue, at the pixels of the section's
    image) through :meth:`experimat.Experiment.from_table`; the olfactory-bulb sections carry their H&E image (the
    alignment's pixels are pixels of that image: ``image_scale`` 1). The files are located with :func:`fetch`
    (``em.settings.data_dir``) and verified against the registry.

    Returns
    -------
    DataFrame with columns ``sample, modality, taxa, batch, group, path, coordinates, image, image_scale, tissue``.

    Examples
    --------
    >>> import experimat as em
    >>> sheet = em.datasets.stutility_sheet(["MOB1", "MOB2"])  # doctest: +SKIP
    >>> expm = em.Experiment.from_table(sheet, project="mob")  # doctest: +SKIP
    """
    import pandas as pd

    chosen = list(HIPPO + MOB) if sections is None else [str(s) for s in sections]
    unknown = [s for s in chosen if s not in HIPPO + MOB]
    if unknown or not chosen:
        raise InvalidInputError(f"unknown STUtility sections {unknown or chosen}; choose from {list(HIPPO + MOB)}.")
    rows, wanted = [], []
    for s in chosen:
        sub = "hippo" if s in HIPPO else "mob"
        files = [f"{sub}/{s}.tsv.gz", f"{sub}/alignment_table_{s}.tsv.gz"] + ([f"mob/{s}.jpg"] if sub == "mob" else [])
        wanted += files
        rows.append({"sample": s, "modality": "spatial-bin", "taxa": "mmu", "batch": "ST-2k",
                     "group": "brain" if sub == "hippo" else "olfactory bulb", "path": files[0],
                     "coordinates": files[1], "image": files[2] if sub == "mob" else "",
                     "image_scale": "1.0" if sub == "mob" else "", "tissue": "hippocampus" if sub == "hippo" else "olfactory bulb"})
    folder = fetch(NAME, wanted)
    sheet = pd.DataFrame(rows)
    for col in ("path", "coordinates", "image"):
        sheet[col] = [str(folder / v) if v else "" for v in sheet[col]]
    return sheet
