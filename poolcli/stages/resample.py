"""Upsampling (= torch interpolate)."""
