"""Stochastic pooling (Zeiler & Fergus 2013)."""
