"""The scripts that run after training (report, contrasts, figure, benchmark, checkpoint import); run each as a module from the repository root, e.g. ``python -m scripts.report``."""
