"""Adaptive feature pooling across stages (PANet)."""
