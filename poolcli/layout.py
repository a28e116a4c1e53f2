"""Channels-last maps: a (C, H, W) map whose memory is a C-contiguous (H, W, C) array, the C
values of each pixel side by side (the transposed view ``hwc.transpose(2, 0, 1)``: the same
array to every reader). The convs of mobile blocks hand such maps on
(:mod:`poolcli.kernels.channels_last`); this module only tells them apart, with NumPy alone, so
that the pipeline and the stages can ask without importing the kernels."""

import numpy as np


def is_channels_last(x: np.ndarray) -> bool:
    """Whether ``x`` (C, H, W), C > 1, float32, is a view of a C-contiguous (H, W, C) array."""
    return (x.ndim == 3 and x.shape[0] > 1 and not x.flags.c_contiguous and x.dtype == np.float32
            and x.transpose(1, 2, 0).flags.c_contiguous)


def pixels(x: np.ndarray) -> np.ndarray:
    """The (H, W, C) array under a channels-last (C, H, W) map."""
    return x.transpose(1, 2, 0)


def as_map(hwc: np.ndarray) -> np.ndarray:
    """The (C, H, W) map of a C-contiguous (H, W, C) array (a view)."""
    return hwc.transpose(2, 0, 1)
