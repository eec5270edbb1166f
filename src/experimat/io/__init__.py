"""Readers and the project-folder format."""

from .readers import read, read_10x_h5, read_10x_mtx, read_count_table, read_h5ad, read_spaceranger

__all__ = ["read", "read_10x_h5", "read_10x_mtx", "read_count_table", "read_h5ad", "read_spaceranger"]
