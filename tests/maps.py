"""Test inputs shared by the kernel tests."""

import numpy as np


def sample(rng, shape, specials=False, ties=False, every=20):
    """Normal float32 values. ``ties`` rounds them to halves (many equal maxima); ``specials``
    puts NaN, -inf and +inf at about one place in ``every`` each."""
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:
        x = np.round(x * 2) / 2
    if specials:
        flat = x.reshape(-1)
        for value in (np.nan, -np.inf, np.inf):
            flat[rng.integers(0, flat.size, max(1, flat.size // every))] = value
    return x
