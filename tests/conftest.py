import numpy as np
import pytest

try:
    import torch
except ImportError:  # the oracle tests skip without torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install torch==2.13.0)")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
