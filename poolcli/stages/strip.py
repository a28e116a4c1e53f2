"""Strip pooling (Hou et al. 2020)."""
