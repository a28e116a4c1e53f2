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


# Floor-mode window edge cases, (shape, kernel_size, stride), shared by the window-stage tests.
FLOOR_WINDOWS = [
    ((1, 1, 1), 1, None),
    ((2, 1, 1), 1, 3),
    ((2, 5, 7), [5, 7], None),  # kernel = map
    ((2, 7, 9), 2, None),  # floor mode drops the last row and column
    ((3, 9, 11), 3, 1),  # overlapping windows
    ((2, 13, 6), [3, 2], [2, 3]),
    ((1, 17, 5), [1, 3], [4, 1]),
]
