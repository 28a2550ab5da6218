import numpy as np
import pytest

from lm.data.mixture import Mixture, Schedule
from lm.errors import UserError

BLEND = {"fineweb-edu": 0.5, "dclm": 0.3, "finemath": 0.15, "cosmopedia": 0.05}


def shares(sources: np.ndarray, n: int = 4) -> np.ndarray:
    return np.bincount(sources, minlength=n) / len(sources)


@pytest.mark.parametrize("seed", range(5))
def test_weights_hold_within_one_point_over_10k_windows(seed):
    mixture = Mixture(dict.fromkeys(BLEND, 997), BLEND, seed, 1024)
    for first in (0, 123_457):  # from the start, and anywhere later
        got = shares(mixture.sources(np.arange(first, first + 10_000)))
        assert np.abs(got - list(BLEND.values())).max() < 0.01


def test_a_pure_function_of_the_sample_index():
    a = Mixture(dict.fromkeys(BLEND, 50), BLEND, 7, 16)
    sequential = [a.locate(k, 16) for k in range(0, 320, 16)]
    b = Mixture(dict.fromkeys(BLEND, 50), BLEND, 7, 16)
    for k in reversed(range(0, 320, 16)):  # fresh object, any order
        src, win = b.locate(k, 16)
        np.testing.assert_array_equal(src, sequential[k // 16][0])
        np.testing.assert_array_equal(win, sequential[k // 16][1])
    other_seed = Mixture(dict.fromkeys(BLEND, 50), BLEND, 8, 16)
    assert not np.array_equal(other_seed.locate(0, 64)[1], a.locate(0, 64)[1])


def test_each_epoch_is_a_new_permutation_of_every_window():
    mixture = Mixture({"only": 100}, None, 0, 8)
    _, windows = mixture.locate(0, 300)
    epochs = windows.reshape(3, 100)
    for epoch in epochs:
        assert sorted(epoch) == list(range(100))
    assert not np.array_equal(epochs[0], epochs[1])


def test_schedule_ramps_linearly_between_token_counts():
    seq_len = 10
    start = {"a": 1.0, "b": 0.0}
    schedule = Schedule(weights={"a": 0.0, "b": 1.0}, start_tokens=100_000, end_tokens=300_000)
    mixture = Mixture({"a": 500, "b": 500}, start, 0, seq_len, schedule)
    # samples are seq_len tokens: the ramp runs from sample 10_000 to sample 30_000
    np.testing.assert_allclose(mixture.weights(np.array([0, 10_000, 20_000, 30_000, 90_000]))[:, 1], [0, 0, 0.5, 1, 1])
    assert shares(mixture.sources(np.arange(0, 10_000)), 2)[1] == 0
    assert shares(mixture.sources(np.arange(30_000, 40_000)), 2)[1] == 1
    ramp = shares(mixture.sources(np.arange(10_000, 30_000)), 2)[1]
    assert abs(ramp - 0.5) < 0.01
    np.testing.assert_array_equal(mixture.counts(30_000), np.bincount(mixture.sources(np.arange(30_000))))


@pytest.mark.parametrize(
    "weights, schedule, message",
    [
        ({"a": 1, "typo": 1}, None, "weights names unknown source 'typo'"),
        ({"a": 1}, None, "weights has no weight for source 'b'"),
        ({"a": 0, "b": 0}, None, "weights must sum to a positive number"),
        ({"a": -1, "b": 2}, None, r"weights\['a'\] = -1 must be"),
        ({"a": 1, "b": 1}, Schedule({"a": 1, "c": 1}, 0, 10), "schedule.weights names unknown source 'c'"),
    ],
)
def test_bad_weights_name_the_key(weights, schedule, message):
    with pytest.raises(UserError, match=message):
        Mixture({"a": 10, "b": 10}, weights, 0, 8, schedule)


def test_empty_source_is_named():
    with pytest.raises(UserError, match="source 'b' has no windows"):
        Mixture({"a": 10, "b": 0}, None, 0, 8)
