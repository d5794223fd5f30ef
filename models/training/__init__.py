"""Training: the one loop, its steps, its flags, the experiment folder and resume checks, devices and speed choices."""
