"""Spatial domain methods."""
