"""SoftPool (Stergiou et al. 2021)."""
