"""Deconvolution methods."""
