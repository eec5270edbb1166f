"""Pure analysis methods: AnnData (or arrays) in, results out.

Nothing here knows about :class:`~experimat.Experiment`, samples or files; JAX and torch
are imported inside the functions that need them.
"""
