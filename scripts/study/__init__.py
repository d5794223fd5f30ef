"""The study tooling: the arm registry, the study and map runners, contrasts, probes, seed noise and the
phase comparison; run each as a module from the repository root, e.g. ``python -m scripts.study.map``."""
