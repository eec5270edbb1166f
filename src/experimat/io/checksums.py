"""Checksums of a project's data files: the whole file, and per element for partial reads.

Every file the manifest names carries the sha256 and size of the whole file. A sample file
(``.h5ad``) also carries, in ``elements``, a sha256 of the content of each element that
:meth:`Experiment.get_sample_slots` can read alone (``obs``, ``var``, ``obsm``, ``obsp``,
``uns``): the hash runs over the element's tree as HDF5 returns it — every member's name, every
attribute, every dataset's dtype, shape and values — so it changes with anything a read of the
element would see. A partial read (``obs``/``obsm`` of a 500,000-bin sample without ``X``) then
checks the elements it reads against these sums instead of hashing the whole file; ``X`` and
the layers are neither read nor hashed. A mismatch raises :class:`CorruptFileError`, as a
whole-file mismatch does. Full reads (:meth:`Experiment.get_sample`) check the whole file.

Manifests without ``elements`` (written before they existed) stay valid: partial reads of
their files check the whole file's sha256 first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CorruptFileError
from ._durable import NOFOLLOW as _NOFOLLOW
from ._durable import sha256_file

__all__ = ["ELEMENTS", "check_elements_entry", "element_sha256", "file_checksums", "sha256_file", "verify_elements"]

_CHUNK = 1 << 22
#: the elements of a sample file that carry their own checksum (those get_sample_slots reads alone)
ELEMENTS = ("obs", "var", "obsm", "obsp", "uns")
#: values hashed per slice of a large dataset (bounds the memory of hashing)
_SLICE_VALUES = 1 << 24


def file_checksums(path: Path) -> dict[str, Any]:
    """The manifest's ``files`` entry of a data file: ``sha256`` and ``size``, and for a sample
    file (``.h5ad``) the ``elements`` checksums."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    out: dict[str, Any] = {"sha256": h.hexdigest(), "size": size}
    if Path(path).suffix == ".h5ad":
        import h5py

        with h5py.File(path, "r") as f:
            out["elements"] = {k: element_sha256(f[k]) for k in ELEMENTS if k in f}
    return out


def check_elements_entry(elements: Any) -> str | None:
    """What is wrong with an ``elements`` entry, or None."""
    if not isinstance(elements, dict):
        return "must be an object {element: sha256}"
    for k, v in elements.items():
        if k not in ELEMENTS:
            return f"names {k!r}, which is not one of {list(ELEMENTS)}"
        if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            return f"[{k!r}] must be 64 lower-case hex digits"
    return None


def verify_elements(f, names: list[str], entry: dict[str, Any], label: str) -> None:
    """Check the elements ``names`` of an open sample file against the entry's ``elements`` sums.

    An element present in the file but not in the entry, or recorded but missing, is a mismatch too."""
    recorded = entry["elements"]
    for name in names:
        if (name in f) != (name in recorded) or (name in f and element_sha256(f[name]) != recorded[name]):
            raise CorruptFileError(
                f"{label}: its element {name!r} does not match its sha256 checksum (corrupt file). Restore the project "
                "from a backup, or rewrite the sample from its source (em.Experiment.from_table) if no backup holds it."
            )


def element_sha256(obj) -> str:
    """sha256 over an HDF5 group or dataset: member names, attributes, dtypes, shapes and the stored data.

    The data are hashed as stored (contiguous or chunked storage read straight from the file,
    and for variable-length strings the global-heap collections their heap ids point to), so no
    value is decoded (a collection HDF5 shares between elements is hashed with each of them, so
    damage to it is refused by the partial reads of all of them); compact datasets, datasets whose chunks are not all written, and filtered
    variable-length datasets are hashed by their decoded values instead."""
    h = hashlib.sha256()
    fd = os.open(obj.file.filename, os.O_RDONLY | _NOFOLLOW)
    try:
        _feed(h, obj, _Raw(fd, obj.file.id.get_create_plist().get_sizes()))
    finally:
        os.close(fd)
    return h.hexdigest()


class _Raw:
    """Reads stored bytes of an HDF5 file (``sizes``: the file's size of addresses and lengths)."""

    def __init__(self, fd: int, sizes: tuple[int, int]) -> None:
        self.fd, (self.addr_size, self.len_size) = fd, sizes

    def feed(self, h, offset: int, n: int) -> bytes:
        """Hash ``n`` bytes at ``offset``; returns them when they are few (heap ids are parsed from them)."""
        keep = []
        done = 0
        while done < n:
            part = os.pread(self.fd, min(_CHUNK, n - done), offset + done)
            if not part:
                raise CorruptFileError(f"the file ends at byte {offset + done}, inside data its HDF5 header places there")
            h.update(part)
            keep.append(part)
            done += len(part)
        return b"".join(keep)

    def feed_heap(self, h, ids: bytes) -> None:
        """Hash the global-heap collections that variable-length heap ids point to."""
        dt = np.dtype([("len", "<u4"), ("addr", f"<u{self.addr_size}"), ("idx", "<u4")])
        if len(ids) % dt.itemsize:
            raise CorruptFileError("variable-length data whose stored heap ids have a broken size")
        addrs = np.unique(np.frombuffer(ids, dtype=dt)["addr"])
        for addr in addrs[addrs != 0].tolist():
            head = os.pread(self.fd, 8 + self.len_size, addr)
            if len(head) < 8 + self.len_size or head[:4] != b"GCOL":
                raise CorruptFileError(f"a heap id points to byte {addr}, which holds no global-heap collection")
            size = int.from_bytes(head[8:8 + self.len_size], "little")
            h.update(addr.to_bytes(8, "little"))
            self.feed(h, addr, size)


def _stored_chunks(obj) -> list[tuple] | None:
    """(chunk offset, filter mask, byte offset, size) of every chunk, or None when some are not written."""
    out: list[tuple] = []
    obj.id.chunk_iter(lambda c: out.append((tuple(c.chunk_offset), c.filter_mask, c.byte_offset, c.size)))
    expected = int(np.prod([-(-n // c) for n, c in zip(obj.shape, obj.chunks)]))
    return sorted(out) if len(out) == expected else None


def _feed(h, obj, raw: _Raw) -> None:
    import h5py

    for key in sorted(obj.attrs):
        h.update(b"A" + key.encode() + b"\0")
        _feed_array(h, np.asarray(obj.attrs[key]))
    if isinstance(obj, h5py.Group):
        for name in sorted(obj):
            h.update(b"G" + name.encode() + b"\0")
            _feed(h, obj[name], raw)
        h.update(b"E")
        return
    h.update(f"D{obj.dtype.str}{obj.shape}".encode())
    plist = obj.id.get_create_plist()
    layout, n_filters = plist.get_layout(), plist.get_nfilters()
    h.update(repr([plist.get_filter(i) for i in range(n_filters)]).encode())
    vlen = obj.dtype.kind == "O" and not obj.dtype.names
    stored = b""
    if layout == h5py.h5d.CONTIGUOUS and obj.id.get_offset() is not None:
        h.update(b"contiguous")
        stored = raw.feed(h, obj.id.get_offset(), obj.id.get_storage_size())
    elif layout == h5py.h5d.CHUNKED and not (vlen and n_filters) and (chunks := _stored_chunks(obj)) is not None:
        parts = []
        for off, mask, byte_offset, size in chunks:
            h.update(f"chunk{off}{mask}{size}".encode())
            parts.append(raw.feed(h, byte_offset, size))
        stored = b"".join(parts)
    else:
        _feed_values(h, obj)
        return
    if vlen:
        raw.feed_heap(h, stored)


def _feed_values(h, obj) -> None:
    h.update(b"values")
    if obj.shape is None or obj.ndim == 0 or obj.size == 0:
        _feed_array(h, np.asarray(obj[()]))
        return
    step = max(1, _SLICE_VALUES // max(1, obj.size // obj.shape[0]))
    for start in range(0, obj.shape[0], step):
        _feed_array(h, obj[start:start + step])


def _feed_array(h, a: np.ndarray) -> None:
    """Feed the values of an array (numbers, strings, bytes, records) in a form that does not depend on memory."""
    h.update(f"{a.dtype.kind}{a.shape}".encode())
    if a.dtype.names:
        for field in a.dtype.names:
            _feed_array(h, a[field])
        return
    if a.dtype.kind == "O":
        items = [x.encode() if isinstance(x, str) else x if isinstance(x, bytes) else np.asarray(x).tobytes()
                 for x in a.ravel().tolist()]
        h.update(np.fromiter(map(len, items), dtype=np.int64, count=len(items)).tobytes())
        h.update(b"".join(items))
        return
    if a.dtype.kind == "U":
        a = np.char.encode(a, "utf-8")
    h.update(np.ascontiguousarray(a).tobytes())
