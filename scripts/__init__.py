"""The scripts that run the pipeline and read its results: runners (.sh), report, figure, benchmark and the GPU
check, compression, reconstruction, checkpoint import; the study's tooling is scripts/study/. Run each as a module
from the repository root, e.g. ``python -m scripts.report``."""
