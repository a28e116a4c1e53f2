"""Fractional max pooling (Graham 2014)."""
