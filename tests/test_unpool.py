"""max_unpool: linking to its max_pool, the kernel against its naive twin, against PyTorch's
max_unpool2d on a seeded sweep (one torch thread: with several, torch races on repeated
indices), the output-size rules, and the errors users see."""

import numpy as np
import pytest

import naive
from poolcli import ConfigError, Pipeline, ShapeError
from poolcli.stages import STAGES
from poolcli.stages.base import ReceptiveField
from poolcli.stages.unpool import max_argmax_index
from torch_oracle import F, needs_torch, torch

WORKED = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [0, 1, 3, 1], [2, 4, 5, 2]], np.float32)[None]


def linked(pool_params, output_size=None):
    """A max_pool named p and a max_unpool linked to it, as the pipeline builds them."""
    pool = STAGES["max_pool"].model_validate({"type": "max_pool", "name": "p", **pool_params})
    unpool = STAGES["max_unpool"].model_validate({"type": "max_unpool", "indices": "p", "output_size": output_size})
    assert unpool.link({"p": (pool, ("input",))}) == ("input",)
    return pool, unpool


def torch_max_unpool(*args, **kwargs):
    """F.max_unpool2d on one thread: with several, torch's CPU loop races on repeated indices.
    Set at every call, since running a numba kernel (OpenMP, shared with torch) resets it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return F.max_unpool2d(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_worked_example_config():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "name": "p"},
                                            {"type": "max_unpool", "indices": "p"}]})
    expected = [[0, 0, 0, 4], [0, 6, 0, 0], [0, 0, 0, 0], [0, 4, 5, 0]]
    np.testing.assert_array_equal(pipe(WORKED), [expected])
    assert pipe.nodes[1].inputs == ("p", "input")  # the pooled map, then the max_pool's input


def test_unpools_any_map_of_the_pooled_shape():
    # `from` an earlier stage: the values come from there, the positions from p's input
    pipe = Pipeline.from_config({"stages": [
        {"type": "max_pool", "kernel_size": 2, "name": "p", "from": "input"},
        {"type": "avg_pool", "kernel_size": 2, "name": "a", "from": "input"},
        {"type": "max_unpool", "indices": "p", "from": "a"},
    ]})
    assert pipe.nodes[2].inputs == ("a", "input")
    np.testing.assert_array_equal(pipe(WORKED), [[[0, 0, 0, 2.25], [0, 3.75, 0, 0], [0, 0, 0, 0], [0, 1.75, 2.75, 0]]])


# --- kernel against the naive reference ------------------------------------------------------------

EDGES = [  # (shape, max_pool params, output_size)
    ((1, 1, 1), dict(kernel_size=1), None),
    ((2, 1, 1), dict(kernel_size=1, stride=3), None),
    ((2, 5, 7), dict(kernel_size=[5, 7]), None),  # kernel = map
    ((2, 6, 8), dict(kernel_size=2), None),
    ((2, 7, 9), dict(kernel_size=2), [7, 9]),  # odd: the default 6x8 is too small, give the size
    ((2, 7, 9), dict(kernel_size=3, stride=1), None),  # overlapping windows: repeated indices
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1), None),
    ((2, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), None),
    ((1, 6, 7), dict(kernel_size=[2, 3], stride=[3, 2], ceil_mode=True), [6, 7]),
    ((2, 8, 8), dict(kernel_size=2, dilation=2, padding=1, stride=3), [8, 8]),
]


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, params, output_size", EDGES)
def test_matches_naive(shape, params, output_size, specials, rng):
    x = np.round(rng.standard_normal(shape).astype(np.float32) * 2) / 2  # ties: equal maxima
    if specials:
        x.reshape(-1)[rng.integers(0, x.size, max(1, x.size // 10))] = np.nan
    pool, unpool = linked(params, output_size)
    pooled, indices = naive.max_pool(x, **params, return_indices=True)
    y = rng.standard_normal(pooled.shape).astype(np.float32)  # distinct values: the order of writes shows
    out = unpool(y, x)
    assert out.shape == unpool.output_shape(y.shape, x.shape)
    np.testing.assert_array_equal(out, naive.max_unpool(y, indices, out.shape[1:]))


def test_later_write_wins_on_a_repeated_index():
    x = np.array([[[0, 5, 0]]], np.float32)  # both 1x2 windows, stride 1, take their max at column 1
    pool, unpool = linked(dict(kernel_size=[1, 2], stride=1), output_size=[1, 3])
    np.testing.assert_array_equal(unpool(np.array([[[10, 20]]], np.float32), x), [[[0, 20, 0]]])


@needs_torch
def test_torch_agrees_on_a_repeated_index():
    out = torch_max_unpool(torch.tensor([[[[10.0, 20.0]]]]), torch.tensor([[[[1, 1]]]]), (1, 2), 1, output_size=[1, 3])
    np.testing.assert_array_equal(out[0].numpy(), [[[0, 20, 0]]])


# --- against PyTorch -------------------------------------------------------------------------------------


def _case(rng):
    kernel = [int(k) for k in rng.integers(1, 5, 2)]
    params = dict(kernel_size=kernel, ceil_mode=bool(rng.integers(2)))
    if rng.integers(4):
        params["stride"] = [int(s) for s in rng.integers(1, 5, 2)]
    if rng.integers(3):
        params["padding"] = [int(rng.integers(0, k // 2 + 1)) for k in kernel]  # torch's rule: <= k // 2
    if rng.integers(4) == 0:
        params["dilation"] = [int(d) for d in rng.integers(1, 3, 2)]
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 20)))
    return shape, params


@needs_torch
def test_matches_torch_sweep():
    rng = np.random.default_rng(8)
    compared = refused = 0
    for case in range(300):
        shape, params = _case(rng)
        x = np.round(rng.standard_normal(shape).astype(np.float32) * 2) / 2
        try:
            pool, unpool = linked(params)
            pooled_shape = pool.output_shape(shape)
        except ShapeError:
            continue
        stride = params.get("stride", params["kernel_size"])
        padding = params.get("padding", [0, 0])
        default = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(pooled_shape[1:], stride, padding, params["kernel_size"])]
        choice = case % 3  # torch's default, the max_pool input's size, anything near the default
        size = None if choice == 0 else list(shape[1:]) if choice == 1 else [max(1, d + int(rng.integers(-3, 4))) for d in default]
        pool, unpool = linked(params, size)
        y = rng.standard_normal(pooled_shape).astype(np.float32)
        _, indices = F.max_pool2d(torch.from_numpy(x)[None], **{"stride": stride, **params}, return_indices=True)
        unpool_torch = lambda values, where: torch_max_unpool(  # noqa: E731
            values, where, params["kernel_size"], stride, padding, output_size=size
        )
        message = f"{shape} {params} output_size={size}"
        try:
            ours = unpool(y, x)
        except ShapeError as error:
            if "strictly between" in str(error):  # torch refuses the size itself
                with pytest.raises(ValueError, match="invalid output_size"):
                    unpool_torch(torch.from_numpy(y)[None], indices)
                continue
            if "is empty" in str(error):  # torch returns an empty map, poolcli a shape error
                assert unpool_torch(torch.from_numpy(y)[None], indices).numel() == 0
                continue
            # A recordable position beyond the output: torch fails on a map whose maximum sits there.
            reach = max_argmax_index(pool, *shape[1:])
            worst = np.zeros(shape, np.float32)
            row, col = divmod(reach, shape[2])
            if row < shape[1] and col < shape[2]:
                worst[:, row, col] = 1
            _, worst_indices = F.max_pool2d(torch.from_numpy(worst)[None], **{"stride": stride, **params},
                                            return_indices=True)
            with pytest.raises(RuntimeError, match="invalid max index"):
                unpool_torch(torch.from_numpy(y)[None], worst_indices)
            refused += 1
            continue
        expected = unpool_torch(torch.from_numpy(y)[None], indices)[0].numpy()
        np.testing.assert_array_equal(ours, expected, err_msg=message)
        compared += 1
    assert compared > 100 and refused > 10  # the sweep reaches both outcomes


# --- output sizes, shapes, costs -------------------------------------------------------------------------


@pytest.mark.parametrize("hw, params", [
    ((4, 4), dict(kernel_size=2)),
    ((5, 5), dict(kernel_size=2)),
    ((6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((9, 11), dict(kernel_size=3, dilation=2, padding=2, stride=3)),
    ((1, 3), dict(kernel_size=2, stride=1, padding=1, dilation=2)),  # no tap inside: torch's starting index
])
def test_max_argmax_index_is_the_largest_index_max_pool_records(hw, params, rng):
    pool, _ = linked(params)
    bound = max_argmax_index(pool, *hw)
    for _ in range(20):
        x = np.round(rng.standard_normal((1, *hw)).astype(np.float32))
        assert naive.max_pool(x, **params, return_indices=True)[1].max() <= bound
    worst = np.zeros((1, *hw), np.float32)  # and some map reaches it: its maximum there
    row, col = divmod(bound, hw[1])
    if row < hw[0]:
        worst[0, row, col] = 1
    assert naive.max_pool(worst, **params, return_indices=True)[1].max() == bound
    assert max_argmax_index(linked(dict(kernel_size=2))[0], 5, 5) == 3 * 5 + 3


def test_output_size_rules():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "name": "p"},
                                            {"type": "max_unpool", "indices": "p", "name": "u"}]})
    assert pipe.output_shape((3, 8, 6)) == (3, 8, 6)
    with pytest.raises(ShapeError, match=(
        r"stage 'u' \(max_unpool\): max_pool 'p' on a 5x5 map can record position 18 \(row 3, column 3\), "
        r"beyond a 4x4 output: set output_size, e.g. \[5, 5\]"
    )):
        pipe.trace((1, 5, 5))
    fixed = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "name": "p"},
                                             {"type": "max_unpool", "indices": "p", "output_size": [5, 5]}]})
    assert fixed.output_shape((1, 5, 5)) == (1, 5, 5)
    outcomes = {  # on a 4x4 map: default 4, stride 2, so torch takes 3, 4 or 5
        (2, 4): r"output_size 2x4: h must lie strictly between 2 and 6 \(the default 4, minus and plus the stride 2\)",
        (4, 6): r"output_size 4x6: w must lie strictly between 2 and 6",
        (3, 4): r"can record position 15 \(row 3, column 3\), beyond a 3x4 output",
        (4, 4): None,
        (5, 5): None,  # flat positions of the 4-wide map, placed in a 5-wide one (torch's rule)
    }
    for size, message in outcomes.items():
        pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "name": "p"},
                                                {"type": "max_unpool", "indices": "p", "output_size": list(size)}]})
        if message is None:
            assert pipe.output_shape((1, 4, 4)) == (1, *size)
        else:
            with pytest.raises(ShapeError, match=message):
                pipe.trace((1, 4, 4))


def test_input_must_have_the_pooled_shape():
    pipe = Pipeline.from_config({"stages": [{"type": "max_pool", "kernel_size": 2, "name": "p"},
                                            {"type": "max_unpool", "indices": "p", "name": "u", "from": "input"}]})
    with pytest.raises(ShapeError, match=(
        r"stage 'u' \(max_unpool\): its input has shape \(1, 4, 4\), but max_pool 'p' pools its \(1, 4, 4\) "
        r"input to \(1, 2, 2\): max_unpool takes a map of the pooled shape"
    )):
        pipe(WORKED)


def test_trace():
    pipe = Pipeline.from_config({"stages": [
        {"type": "max_pool", "kernel_size": 3, "stride": 2, "padding": 1, "name": "p"},
        {"type": "max_unpool", "indices": "p", "output_size": [9, 10]},
    ]})
    pool, unpool = pipe.trace((2, 9, 10))
    assert unpool.in_shape == ((2, 5, 5), (2, 9, 10)) and unpool.out_shape == (2, 9, 10)
    assert unpool.macs == pool.macs + 2 * 5 * 5  # max pooling again, then one write per value
    assert pool.receptive_field == ReceptiveField((3, 3), (2, 2))
    assert unpool.receptive_field == ReceptiveField((3, 3), (1, 1))


# --- link and config errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("stages, message", [
    ([{"type": "max_pool", "kernel_size": 2, "name": "pool1"}, {"type": "max_unpool", "indices": "pool2"}],
     r"stages\[1\] \(max_unpool 'max_unpool1'\): indices: no earlier stage is named 'pool2' \(did you mean 'pool1'\?\)"),
    ([{"type": "max_pool", "kernel_size": 2, "name": "a"}, {"type": "max_unpool", "indices": "zzz"}],
     r"no earlier stage is named 'zzz' \(earlier max_pool stages: a\)"),
    ([{"type": "avg_pool", "kernel_size": 2}, {"type": "max_unpool", "indices": "p"}],
     r"no earlier stage is named 'p' \(there is no earlier max_pool stage\)"),
    ([{"type": "avg_pool", "kernel_size": 2, "name": "p"}, {"type": "max_unpool", "indices": "p"}],
     r"indices: 'p' is a avg_pool stage; give the name of a max_pool stage"),
    ([{"type": "max_unpool", "indices": "p"}, {"type": "max_pool", "kernel_size": 2, "name": "p"}],
     r"stages\[0\] \(max_unpool 'max_unpool0'\): indices: no earlier stage is named 'p'"),
    ([{"type": "max_pool", "kernel_size": 2, "name": "p"}, {"type": "max_unpool"}],
     r"stages\[1\] \(max_unpool\)\.indices: is required"),
    ([{"type": "max_pool", "kernel_size": 2, "name": "p"}, {"type": "max_unpool", "indices": "p", "output_size": 0}],
     r"\.output_size: must be >= 1, got 0"),
    ([{"type": "max_pool", "kernel_size": 2, "name": "p"}, {"type": "max_unpool", "indices": "p", "kernel_size": 2}],
     r"unknown key 'kernel_size'"),
])
def test_config_errors(stages, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_config({"stages": stages})


def test_an_unlinked_stage_says_so():
    unpool = STAGES["max_unpool"].model_validate({"type": "max_unpool", "indices": "p"})
    with pytest.raises(ConfigError, match=r"not linked to its max_pool 'p' \(build it in a Pipeline\)"):
        unpool.output_shape((1, 2, 2), (1, 4, 4))
