"""The report's statistics against hand computations and scipy's own definitions of the two t-tests."""

import math

import pytest

from lm.statistics import mean_and_spread, paired_p_value, tokens_to_target, welch_p_value


def test_mean_and_sample_standard_deviation():
    mean, spread = mean_and_spread([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert spread == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert mean_and_spread([5.0]) == (5.0, None)  # one seed: no spread, not 0


def test_tokens_to_target_is_the_first_validation_at_or_below_it():
    curve = [(300, 4.0), (100, 6.0), (200, 5.0), (400, 4.5)]  # unsorted, and not monotone after reaching it
    assert tokens_to_target(curve, 5.0) == 200  # at the target counts
    assert tokens_to_target(curve, 4.2) == 300
    assert tokens_to_target(curve, 3.0) is None


def test_welch_p_value_by_hand():
    a, b = [5.0, 5.1, 5.2], [4.6, 4.9]
    ma, mb = sum(a) / 3, sum(b) / 2
    va, vb = sum((x - ma) ** 2 for x in a) / 2, sum((x - mb) ** 2 for x in b) / 1
    t = (ma - mb) / math.sqrt(va / 3 + vb / 2)
    df = (va / 3 + vb / 2) ** 2 / ((va / 3) ** 2 / 2 + (vb / 2) ** 2 / 1)  # Welch–Satterthwaite
    from scipy import stats

    assert welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p_value([5.0], b) is None  # one seed: nothing to test
    assert welch_p_value([1.0, 1.0], [1.0, 1.0]) is None  # no spread at all: undefined, not a number


def test_paired_p_value_by_hand_over_the_common_seeds():
    """Seed 1 lies above seed 0 in both variants by far more than they differ: Welch sees only the spread, the
    paired test the consistent per-seed difference."""
    a, b = {0: 5.10, 1: 5.06, 2: 5.08, 7: 9.99}, {0: 5.08, 1: 5.05, 2: 5.05}  # seed 7: only in a, left out
    differences = [0.02, 0.01, 0.03]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    from scipy import stats

    p = paired_p_value(a, b)
    assert p == pytest.approx(2 * stats.t.sf(mean / (sd / math.sqrt(3)), 2))
    assert p < 0.1 < welch_p_value([5.10, 5.06, 5.08], [5.08, 5.05, 5.05])
    assert paired_p_value({0: 5.0}, {0: 4.0, 1: 4.1}) is None  # one common seed
    assert paired_p_value({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0}) is None  # the same difference twice: undefined
