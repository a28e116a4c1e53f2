import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests and fuzzers run the same examples on every run (a failure in CI reproduces
# anywhere); HYPOTHESIS_PROFILE=explore draws new ones and keeps a database of failures.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
