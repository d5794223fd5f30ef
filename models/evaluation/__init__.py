"""Evaluation: the image-quality metrics, per slice and per volume, and their registry."""
