"""Sphinx extension: a reference page of the methods registered on the modality accessors.

The accessor methods (``expm.spatial_bin.spatial_svg_moran`` ...) are made at run time from the registry, so autodoc
cannot find them; this writes ``generated/accessors.rst`` with each method exactly as ``help()`` shows it to a user:
the synthesised signature and the docstring (the method's own plus the runner options that apply).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from sphinx.ext.napoleon.docstring import NumpyDocstring

ACCESSORS = {"rna": "rna", "spatial-bin": "spatial_bin", "spatial-cell": "spatial_cell"}


def _bound(modality: str, spec):
    from experimat.core.accessor import ModalityAccessor

    acc = ModalityAccessor.__new__(ModalityAccessor)  # no experiment needed to build the method's face
    acc._expm = None
    acc.modality = modality
    return acc._bind(spec)


def _signature(func) -> str:
    """The signature without annotations; long defaults (arrays) shortened to one line."""
    parts, star = [], False
    for p in inspect.signature(func).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            continue
        if p.kind == p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.default is p.empty:
            parts.append(p.name)
        else:
            text = " ".join(repr(p.default).split())
            parts.append(f"{p.name}={text if len(text) <= 60 else text[:50] + '...'}")
    return "(" + ", ".join(parts) + ")"


def _clean(doc: str) -> str:
    """The method's docstring (indented as written) and the runner's section (flush left), each dedented."""
    head, sep, tail = doc.partition("\nRunner options")
    return inspect.cleandoc(head) + ("\n\nRunner options" + inspect.cleandoc(tail) if sep else "")


def _indent(text: str, n: int = 3) -> str:
    pad = " " * n
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def write_accessors(app) -> None:
    from experimat.core.registry import load_plugins, methods_for

    load_plugins()
    by_name: dict[str, list[tuple[str, object]]] = {}
    for modality in ACCESSORS:
        for name, spec in sorted(methods_for(modality).items()):
            by_name.setdefault(name, []).append((modality, spec))
    lines = [
        "Accessor methods",
        "================",
        "",
        "Methods registered on ``expm.rna``, ``expm.spatial_bin`` and ``expm.spatial_cell``, as ``help()`` shows",
        "them. Each runs the pure function of :mod:`experimat.methods` on the samples chosen by ``run_on_samples``.",
        "",
        ".. currentmodule:: experimat.core.accessor",
        "",
    ]
    for modality, attr in ACCESSORS.items():
        names = sorted(n for n, entries in by_name.items() if any(m == modality for m, _ in entries))
        lines += [f"- ``expm.{attr}``: " + ", ".join(f":meth:`~ModalityAccessor.{n}`" for n in names), ""]
    for name, entries in sorted(by_name.items()):
        seen: list[object] = []
        for modality, spec in entries:
            if spec.func in seen:
                continue
            seen.append(spec.func)
            func = _bound(modality, spec)
            where = ", ".join(f"``expm.{ACCESSORS[m]}``" for m, s in entries if s.func is spec.func)
            doc = str(NumpyDocstring(_clean(func.__doc__ or ""), app.config, app, "method", name, func))
            lines += [f".. py:method:: ModalityAccessor.{name}{_signature(func)}"]
            if len(seen) > 1:
                lines += ["   :no-index:"]
            lines += ["", f"   Accessors: {where}. Function: ``{spec.func.__module__}.{spec.func.__qualname__}``.", ""]
            lines += [_indent(doc), ""]
    out = Path(app.srcdir) / "generated" / "accessors.rst"
    out.parent.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


def setup(app):
    app.connect("builder-inited", write_accessors)
    return {"version": "1", "parallel_read_safe": True}
