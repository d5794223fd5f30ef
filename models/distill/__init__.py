"""Distillation: the KD losses, the KD student and where its cascades start from, and what a run is (its roles and run names)."""
