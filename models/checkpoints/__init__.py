"""The checkpoint room: the project's format (format.py), file I/O and the pickle policy (io.py) and the import
of the public code's checkpoints (public.py)."""
