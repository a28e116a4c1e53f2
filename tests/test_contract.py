"""One contract for every registered stage (as timm's TestPoolingCommon does): float32 out,
the shape ``output_shape`` promised, deterministic, input not modified."""

import numpy as np
import pytest

from poolcli.explain import WORKED_MAP, example_call, worked_example
from poolcli.stages import STAGES


@pytest.mark.parametrize("name", sorted(STAGES))
@pytest.mark.parametrize("shape", [(3, 13, 11), (1, 4, 4), (2, 32, 7)])
def test_stage_contract(name, shape):
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(np.float32)
    before = x.copy()
    _, stage, inputs = example_call(name, x)  # the example's stage and the maps it takes
    y = stage(*inputs)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == tuple(stage.output_shape(*(i.shape for i in inputs)))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(stage(*inputs), y)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_a_worked_example_and_a_summary(name):
    params, x, y = worked_example(name)
    np.testing.assert_array_equal(x, WORKED_MAP)
    assert y.size > 0 and STAGES[name].summary
    assert STAGES[name].__doc__


def test_spec_worked_example():
    stage = STAGES["max_pool"].model_validate({"type": "max_pool", "kernel_size": 2, "stride": 2})
    np.testing.assert_array_equal(stage(WORKED_MAP)[0], [[6, 4], [4, 5]])
