"""Running trained networks outside training: the forward pass and its faster modes, export, and what it costs."""
