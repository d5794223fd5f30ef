"""k-space data: FFT convention and data fidelity, sampling masks, the HDF5 slice dataset, preparation."""
