"""Saved models: one base class, one file layout, an explicit registry of model classes.

Every model experimat stores (cell2location reference signatures, the DestVI CondSCVI reference,
DeepST networks, models of plugins) subclasses :class:`SavedModel` and is registered with
:func:`register_model`. A saved model is a folder with exactly two files::

    config.json    {"model_type", "format_version", "layout", "arrays", "config"}   (JSON)
    arrays.npz     the model's arrays (numpy ``.npz``, read with ``allow_pickle=False``)

Tensors are stored as numpy arrays, so loading never calls ``torch.load`` and no environment variable
can turn unpickling on. A class is found only by its registered ``model_type`` name, never by an
import path. Each class has a ``format_version``; a folder written with an older version is brought
up to date by the class's explicit ``upgrades`` functions (``{old_version: fn(config, arrays) ->
(config, arrays)}``), one version at a time.

Folders written before this layout (experimat <= 0.1, "layout 1": ``config.json`` plus
``signatures.npz`` or a torch ``model.pt`` state dict, named in the manifest by import path) are read
by :func:`decode_legacy`: the import path is only looked up in the registered classes'
``legacy_names`` (never imported), ``.pt`` files are read with ``torch.load(weights_only=True)``
given explicitly, and the result goes through the same upgrade functions.

This module is in the base layer (light to import; numpy and torch are imported inside functions),
so that methods, io and core can all use it.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._errors import CorruptFileError, FormatVersionError, InvalidInputError

#: the two files of a saved model
CONFIG_FILE = "config.json"
ARRAYS_FILE = "arrays.npz"
MODEL_FILES = (CONFIG_FILE, ARRAYS_FILE)
#: layout of a saved-model folder: 1 = per-class files named by import path (experimat <= 0.1); 2 = this
LAYOUT_VERSION = 2
#: largest model file read into memory (bytes); a bigger one is refused as corrupt
MAX_MODEL_FILE = 1 << 34

M = TypeVar("M", bound="SavedModel")
Upgrade = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]

_MODEL_CLASSES: dict[str, type[SavedModel]] = {}


class SavedModel:
    """Base class of every model experimat stores.

    Subclasses set ``model_type`` through :func:`register_model`, a ``format_version`` and, for each
    older version, an upgrade function; they implement :meth:`get_state` and :meth:`from_state`.

    Examples
    --------
    >>> import numpy as np
    >>> import experimat as em
    >>> @em.register_model("myplugin.Centroids")
    ... class Centroids(em.SavedModel):
    ...     format_version = 1
    ...     def __init__(self, centres):
    ...         self.centres = centres
    ...     def get_state(self):
    ...         return {"n": len(self.centres)}, {"centres": self.centres}
    ...     @classmethod
    ...     def from_state(cls, config, arrays):
    ...         return cls(arrays["centres"])
    >>> folder = Centroids(np.zeros((3, 2))).save("centroids")  # doctest: +SKIP
    >>> Centroids.load(folder).centres.shape  # doctest: +SKIP
    (3, 2)
    """

    #: registered name (set by :func:`register_model`)
    model_type: ClassVar[str] = ""
    #: version of this class's ``(config, arrays)`` state
    format_version: ClassVar[int] = 1
    #: ``{version: fn(config, arrays) -> (config, arrays)}`` bringing a state from ``version`` to ``version + 1``
    upgrades: ClassVar[Mapping[int, Upgrade]] = {}
    #: import paths under which layout-1 manifests named this class (matched as strings, never imported)
    legacy_names: ClassVar[tuple[str, ...]] = ()

    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(config, arrays)``: a JSON-safe dict and a dict of numpy arrays (or torch tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_state()")

    @classmethod
    def from_state(cls: type[M], config: dict[str, Any], arrays: dict[str, Any]) -> M:
        """Rebuild the model from the ``(config, arrays)`` of the current ``format_version``."""
        raise NotImplementedError(f"{cls.__name__} must implement from_state()")

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model into folder ``path`` (``config.json`` + ``arrays.npz``; nothing pickled).

        An existing non-empty folder is refused unless ``overwrite``. Inside a project use
        ``expm.save_model(name, model)``, which writes into the project's ``models/`` instead.
        """
        path = Path(path)
        if path.is_symlink():
            raise InvalidInputError(f"{str(path)!r} is a symbolic link; save the model into a real folder.")
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise InvalidInputError(f"folder {str(path)!r} exists and is not empty; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        for name, data in encode_model(self).items():
            tmp = path / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path / name)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls: type[M], path: str | os.PathLike) -> M:
        """Load a model folder written by :meth:`save` (or by experimat <= 0.1); never unpickles."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise InvalidInputError(
                f"{str(path / CONFIG_FILE)!r} not found; is {str(path)!r} a folder written by {cls.__name__}.save?"
            )
        names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        files = {n: read_plain_file(path / n) for n in names if n == CONFIG_FILE or n.endswith((".npz", ".pt"))}
        cfg = _parse_json(files[CONFIG_FILE], path / CONFIG_FILE)
        if "model_type" in cfg:
            model = decode_model({n: files[n] for n in MODEL_FILES if n in files}, where=str(path))
        else:
            legacy = cls.legacy_names[0] if cls.legacy_names else f"{cls.__module__}:{cls.__qualname__}"
            model = decode_legacy(legacy, files, where=str(path))
        if not isinstance(model, cls):
            raise InvalidInputError(f"{str(path)!r} holds a {type(model).__name__}, not a {cls.__name__}.")
        return model


# -- registry ------------------------------------------------------------------------------------
def register_model(name: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a :class:`SavedModel` subclass storable and loadable under ``name``.

    ``expm.load_model`` resolves classes only from this registry (never by import path), so a plugin
    registers its model classes when it is imported (its ``experimat.methods`` entry point).

    Parameters
    ----------
    name
        Unique, stable name, e.g. ``"myplugin.Centroids"`` (stored in the project; keep it when the
        class moves between modules).

    Examples
    --------
    >>> import experimat as em
    >>> @em.register_model("myplugin.Nothing")
    ... class Nothing(em.SavedModel):
    ...     def get_state(self):
    ...         return {}, {}
    ...     @classmethod
    ...     def from_state(cls, config, arrays):
    ...         return cls()
    >>> "myplugin.Nothing" in em.registered_models()
    True
    """
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\:\x00"):
        raise InvalidInputError(f"model type name must be a non-empty string without '/', '\\' or ':', not {name!r}.")

    def decorate(cls: type[M]) -> type[M]:
        if not (isinstance(cls, type) and issubclass(cls, SavedModel)) or cls is SavedModel:
            raise InvalidInputError(f"register_model({name!r}) decorates a subclass of em.SavedModel, not {cls!r}.")
        version = cls.format_version
        if not isinstance(version, int) or version < 1:
            raise InvalidInputError(f"{cls.__name__}.format_version must be an int >= 1, not {version!r}.")
        old = _MODEL_CLASSES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise InvalidInputError(
                f"model type {name!r} is already registered by {old.__module__}.{old.__qualname__}; choose another name."
            )
        cls.model_type = name
        _MODEL_CLASSES[name] = cls
        return cls

    return decorate


def registered_models() -> list[str]:
    """Names of the registered model classes."""
    return sorted(_MODEL_CLASSES)


def is_registered(model: Any) -> bool:
    """Whether ``model`` is an instance of a registered :class:`SavedModel` class."""
    cls = type(model)
    return isinstance(model, SavedModel) and _MODEL_CLASSES.get(cls.model_type) is cls


def model_class(name: Any) -> type[SavedModel]:
    """The registered class named ``name``; :class:`CorruptFileError` listing the registered names otherwise."""
    cls = _MODEL_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CorruptFileError(
            f"model type {name!r} is not a registered model class (registered: {registered_models()}). "
            "If a plugin provides it, install and import the plugin (it registers its classes with "
            "em.register_model) and load again."
        )
    return cls


def _legacy_class(class_path: Any) -> type[SavedModel]:
    for cls in _MODEL_CLASSES.values():
        if isinstance(class_path, str) and class_path in cls.legacy_names:
            return cls
    known = sorted(n for c in _MODEL_CLASSES.values() for n in c.legacy_names)
    raise CorruptFileError(
        f"the model names class {class_path!r}, which is not a model class of an older experimat "
        f"(known: {known}); refusing to load it (classes are never imported from a project)."
    )


# -- encoding ------------------------------------------------------------------------------------
def _to_numpy(name: str, value: Any):
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise InvalidInputError(f"model array {name!r} has dtype object; store numbers or fixed-width strings (no pickle).")
    return arr


def encode_model(model: SavedModel) -> dict[str, bytes]:
    """``{CONFIG_FILE: bytes, ARRAYS_FILE: bytes}`` of a registered model."""
    import numpy as np

    if not is_registered(model):
        raise InvalidInputError(
            f"{type(model).__name__} is not a registered model class; subclass em.SavedModel and decorate it "
            f"with @em.register_model('<name>') (registered: {registered_models()})."
        )
    config, arrays = model.get_state()
    arrays = {str(k): _to_numpy(str(k), v) for k, v in arrays.items()}
    bad = [k for k in arrays if not k or "/" in k or k.startswith(".")]
    if bad:
        raise InvalidInputError(f"model array names must be non-empty, without '/' and not start with '.': {bad}.")
    doc = {
        "model_type": type(model).model_type,
        "format_version": type(model).format_version,
        "layout": LAYOUT_VERSION,
        "arrays": sorted(arrays),
        "config": config,
    }
    try:
        cfg = json.dumps(doc, indent=1).encode()
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{type(model).__name__}.get_state() returned a config that is not JSON-safe ({e}).") from e
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return {CONFIG_FILE: cfg, ARRAYS_FILE: buf.getvalue()}


def _parse_json(data: bytes, where: Any) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{where} is not valid JSON ({type(e).__name__}); the saved model is corrupt.") from e
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{where} does not hold a JSON object; the saved model is corrupt.")
    return doc


def _read_npz(data: bytes, where: Any) -> dict[str, Any]:
    import zipfile

    import numpy as np

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{where} is not a readable .npz without pickled objects ({e}).") from e


def _read_torch_state(data: bytes, where: Any) -> dict[str, Any]:
    """A layout-1 ``.pt`` state dict of tensors, read with ``weights_only=True`` given explicitly."""
    import pickle  # only for its exception class; nothing is unpickled

    from ._optional import import_optional

    torch = import_optional("torch", purpose="reading a model saved by experimat <= 0.1")
    try:
        # weights_only=True given explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn unpickling on
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError, EOFError, OSError) as e:
        raise CorruptFileError(f"{where} is not a plain torch state dict of tensors; refusing it ({type(e).__name__}: {e}).") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptFileError(f"{where} is not a state dict of named tensors.")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _upgrade(cls: type[M], version: Any, config: dict[str, Any], arrays: dict[str, Any], where: Any) -> M:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptFileError(f"{where}: model format version {version!r} is not a positive integer.")
    if version > cls.format_version:
        raise FormatVersionError(
            f"{where}: {cls.model_type} format version {version} is newer than this experimat reads "
            f"({cls.format_version}); upgrade experimat (pip install -U experimat)."
        )
    while version < cls.format_version:
        step = cls.upgrades.get(version)
        if step is None:
            raise FormatVersionError(f"{where}: {cls.model_type} has no upgrade from format version {version}.")
        config, arrays = step(dict(config), dict(arrays))
        version += 1
    try:
        return cls.from_state(config, arrays)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{where}: the saved {cls.model_type} does not match its format ({type(e).__name__}: {e}).") from e


def decode_model(files: Mapping[str, bytes], *, where: Any = "saved model", model_type: str | None = None) -> SavedModel:
    """Rebuild a model from the bytes of its two files (layout 2), upgrading older format versions."""
    missing = [n for n in MODEL_FILES if n not in files]
    if missing:
        raise CorruptFileError(f"{where} lacks {missing}; the saved model is incomplete.")
    doc = _parse_json(files[CONFIG_FILE], f"{where}/{CONFIG_FILE}")
    if model_type is not None and doc.get("model_type") != model_type:
        raise CorruptFileError(f"{where}: config names model type {doc.get('model_type')!r}, the manifest {model_type!r}.")
    if doc.get("layout") != LAYOUT_VERSION:
        raise FormatVersionError(f"{where}: saved-model layout {doc.get('layout')!r} is not {LAYOUT_VERSION}; upgrade experimat.")
    cls = model_class(doc.get("model_type"))
    arrays = _read_npz(files[ARRAYS_FILE], f"{where}/{ARRAYS_FILE}")
    if sorted(arrays) != sorted(doc.get("arrays") or []):
        raise CorruptFileError(f"{where}: {ARRAYS_FILE} holds {sorted(arrays)}, the config lists {doc.get('arrays')}.")
    config = doc.get("config")
    if not isinstance(config, dict):
        raise CorruptFileError(f"{where}/{CONFIG_FILE} has no 'config' object.")
    return _upgrade(cls, doc.get("format_version"), config, arrays, where)


def decode_legacy(class_path: str, files: Mapping[str, bytes], *, where: Any = "saved model") -> SavedModel:
    """Rebuild a model saved by experimat <= 0.1 (layout 1) through its class's upgrade functions."""
    cls = _legacy_class(class_path)
    if CONFIG_FILE not in files:
        raise CorruptFileError(f"{where} lacks {CONFIG_FILE}; the saved model is incomplete.")
    config = _parse_json(files[CONFIG_FILE], f"{where}/{CONFIG_FILE}")
    arrays: dict[str, Any] = {}
    weights = [n for n in files if n != CONFIG_FILE]
    if not weights:
        raise CorruptFileError(f"{where} holds no weights file; the saved model is incomplete.")
    for name in sorted(weights):
        if name.endswith(".npz"):
            arrays.update(_read_npz(files[name], f"{where}/{name}"))
        elif name.endswith(".pt"):
            arrays.update(_read_torch_state(files[name], f"{where}/{name}"))
        else:
            raise CorruptFileError(f"{where}/{name} is not a model file of experimat <= 0.1 (.npz, .pt, config.json).")
    return _upgrade(cls, config.get("format_version", 1), config, arrays, where)


def read_plain_file(path: Path, *, limit: int = MAX_MODEL_FILE) -> bytes:
    """The bytes of a regular file, refusing symbolic links (``O_NOFOLLOW``) and special files."""
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if Path(path).is_symlink():
            raise CorruptFileError(f"{path} is a symbolic link; model files must be regular files (remove the link).") from e
        raise CorruptFileError(f"{path} cannot be read ({e.strerror}); the saved model is missing or corrupt.") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"{path} is not a regular file; the saved model is corrupt.")
        if st.st_size > limit:
            raise CorruptFileError(f"{path} is {st.st_size} bytes, more than expected ({limit}); the saved model is corrupt.")
        return f.read(limit + 1)
