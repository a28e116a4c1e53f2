"""Slow, obviously correct NumPy references: one per operator, written as plain loops over
the definition, for the kernels to be compared with. Clarity over speed, always."""

from __future__ import annotations

import numpy as np

# --- global pooling ---------------------------------------------------------------------------


def global_avg_pool(x):
    return np.array([x[c].astype(np.float64).mean() for c in range(x.shape[0])], np.float32)


def global_max_pool(x):
    return np.array([np.max(x[c]) for c in range(x.shape[0])], np.float32)  # np.max propagates NaN


def gem(x, p=3.0, eps=1e-6):
    out = []
    for c in range(x.shape[0]):
        v = np.maximum(x[c].astype(np.float64), eps)  # np.maximum propagates NaN, like clamp
        out.append(np.mean(v**p) ** (1.0 / p))
    return np.array(out, np.float32)


# --- windowed pooling (pool family) -------------------------------------------------------------


# --- convolution (conv family) ------------------------------------------------------------------
