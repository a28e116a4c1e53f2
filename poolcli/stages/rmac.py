"""R-MAC regional maximum activations (Tolias et al. 2016)."""
