"""Preprocessing helpers (``em.pp``)."""

from experimat.methods.locat._filter import filter_genes_locat

__all__ = ["filter_genes_locat"]
