"""PyTorch as the oracle users trust: ``torch`` is None where it is not installed, and
``needs_torch`` skips those tests (pip install torch==2.13.0 to run them)."""

import numpy as np
import pytest

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install torch==2.13.0)")


def run(fn, x, *args, **kwargs):
    """Call ``fn`` on a float32 NumPy map as a batch of one; NumPy float32 back."""
    out = fn(torch.from_numpy(np.ascontiguousarray(x))[None], *args, **kwargs)
    if isinstance(out, tuple):
        out = out[0]
    return out[0].numpy()
