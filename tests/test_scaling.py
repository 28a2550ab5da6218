"""The scaling-law fitters on synthetic ladders drawn from a known law: they must recover its constants."""

import math

import numpy as np
import pytest
from scipy import stats

from lm.scaling import Point, PowerLaw, fit_isoflop, fit_parametric, span_warnings, usable

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al.'s fitted law


def law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def optimal_size(flops: float) -> float:
    """The law's compute-optimal N under C = 6ND."""
    return (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (flops / 6) ** (BETA / (ALPHA + BETA))


def ladder(budgets=(1e17, 1e18, 1e19, 1e20), sizes_per_budget=9, noise=0.0, seed=0) -> list[Point]:
    """Runs at each budget C over sizes around the law's optimum, D = C / 6N, with multiplicative noise on L."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        for n in optimal_size(c) * np.geomspace(1 / 8, 8, sizes_per_budget):
            d = c / (6 * n)
            points.append(Point(budget=c, params=n, tokens=d, loss=law(n, d) * (1 + noise * rng.standard_normal())))
    return points


def test_isoflop_recovers_the_compute_optimal_exponents():
    fit = fit_isoflop(ladder())
    # Under C = 6ND the law's optimum is N* ∝ C^(β/(α+β)), D* ∝ C^(α/(α+β)).
    assert fit.params.exponent == pytest.approx(BETA / (ALPHA + BETA), abs=0.02)
    assert fit.tokens.exponent == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.02)
    n, d = fit.optimal(1e21)
    assert 6 * n * d == pytest.approx(1e21, rel=0.15)  # the two power laws spend the budget they are given


def test_the_power_laws_interval_is_the_regression_lines_and_covers_the_truth():
    """The interval N* = k·C^a is given at a new budget: numpy's covariance of the same line gives the same one, and
    over many noisy ladders the 95% interval holds the true N* about 95% of the time."""
    rng = np.random.default_rng(0)
    budgets = np.array([1e15, 3e15, 1e16, 3e16])
    truth = lambda c: 2e3 * c**0.5
    noisy = lambda: truth(budgets) * np.exp(0.1 * rng.standard_normal(len(budgets)))
    sizes = noisy()
    law = PowerLaw.fit(list(budgets), list(sizes))
    (slope, intercept), covariance = np.polyfit(np.log(budgets), np.log(sizes), 1, cov=True)
    x = np.array([math.log(1e18), 1.0])
    half = stats.t.ppf(0.975, len(budgets) - 2) * math.sqrt(x @ covariance @ x)
    assert law.interval(1e18) == pytest.approx(np.exp(slope * x[0] + intercept + np.array([-half, half])), rel=1e-9)
    covered = []
    for _ in range(400):
        low, high = PowerLaw.fit(list(budgets), list(noisy())).interval(1e18)
        covered.append(low <= truth(1e18) <= high)
    assert 0.92 <= np.mean(covered) <= 0.98
    assert PowerLaw.fit([1e15, 1e16], [1e6, 3e6]).interval(1e18) is None  # a line through 2 points: no residual


def test_parametric_fit_recovers_the_law():
    exact = fit_parametric(ladder(), bootstrap=0)
    assert exact.alpha == pytest.approx(ALPHA, abs=0.01) and exact.beta == pytest.approx(BETA, abs=0.01)
    assert exact.E == pytest.approx(E, rel=0.01)


def test_bootstrap_intervals_come_from_refits_on_resampled_points():
    """The default suite's check of the bootstrap (the slow test below checks that the intervals hold the law)."""
    points = ladder(budgets=(1e17, 1e18, 1e19), sizes_per_budget=5, noise=0.002, seed=1)
    fit = fit_parametric(points, bootstrap=4)
    assert fit.alpha == fit_parametric(points, bootstrap=0).alpha  # the constants are the fit to all points
    assert set(fit.intervals) == {"E", "A", "B", "alpha", "beta"}
    assert all(low < high for low, high in fit.intervals.values())  # drawn with replacement: the refits differ


@pytest.mark.slow
def test_parametric_bootstrap_intervals_bracket_the_law_under_noise():
    noisy = fit_parametric(ladder(noise=0.002, seed=1), bootstrap=20)
    for name, true in (("alpha", ALPHA), ("beta", BETA), ("E", E)):
        low, high = noisy.intervals[name]
        assert low <= high and low - 0.05 * true <= true <= high + 0.05 * true, (name, low, high)


def log_data(points: list[Point]) -> tuple[np.ndarray, ...]:
    return tuple(np.log([getattr(p, k) for p in points]) for k in ("params", "tokens", "loss"))


def test_the_summed_huber_loss_is_what_lets_l_bfgs_converge():
    """Averaged over points, the objective and its gradient are len(points) times smaller: L-BFGS-B's default
    tolerances then stop it within a few steps, far from the law (the flaw of a mean in the Chinchilla refits). The
    sum, from the same start, reaches the law."""
    from scipy import optimize

    from lm.scaling import _objective

    points = ladder()
    data, start = log_data(points), np.array([0.0, 0.0, 0.0, 0.5, 0.5])
    mean = lambda theta, *data: tuple(x / len(points) for x in _objective(theta, *data))
    summed = optimize.minimize(_objective, start, args=data, jac=True, method="L-BFGS-B").x
    averaged = optimize.minimize(mean, start, args=data, jac=True, method="L-BFGS-B").x
    assert summed[3:] == pytest.approx([ALPHA, BETA], abs=0.01)
    assert abs(averaged[3] - ALPHA) > 0.1 and abs(averaged[4] - BETA) > 0.1  # stopped early


def test_one_start_can_stall_where_the_grid_of_starts_finds_the_law():
    import itertools

    from lm.scaling import INITIAL_GRID, _minimize

    data = log_data(ladder())
    stalled = _minimize(data, [(0.0, 0.0, -1.0, 1.2, 1.2)])  # one of the grid's corners, alone
    found = _minimize(data, itertools.product(*INITIAL_GRID.values()))
    assert abs(stalled[3] - ALPHA) > 0.5 and found[3:] == pytest.approx([ALPHA, BETA], abs=0.01)


def test_warmup_only_points_are_left_out_and_narrow_ladders_warned():
    points = ladder(budgets=(1e17, 1e18), sizes_per_budget=3)
    points[0].warmup_only = True
    assert points[0] not in usable(points) and len(usable(points)) == len(points) - 1
    narrow = [Point(1e17, n, 1e9, 3.0) for n in (1e6, 1.5e6, 2e6)]
    messages = span_warnings(narrow)
    assert any("sizes span only 2.0×" in m for m in messages) and any(
        "token counts span only 1.0×" in m for m in messages
    )
    assert span_warnings(ladder()) == []


def test_the_objective_gradient_equals_finite_differences():
    from scipy import optimize

    from lm.scaling import _objective

    data = log_data(ladder(noise=0.01))
    theta = np.array([np.log(A), np.log(B), np.log(E), ALPHA, BETA]) + 0.05
    value = lambda t: _objective(t, *data)[0]
    assert (
        optimize.check_grad(value, lambda t: _objective(t, *data)[1], theta)
        < 1e-6 * np.abs(_objective(theta, *data)[1]).max() + 1e-8
    )


def test_a_ladder_of_sizes_all_above_the_optimum_is_warned_as_unbracketed_and_degenerate():
    """On a CPU every budget was best at its smallest size: the fits still return numbers, the report must say
    they are extrapolations. Sizes 4-64× the law's optimum: the loss rises with size at every budget."""
    from lm.scaling import isoflop_warnings, parametric_warnings

    assert isoflop_warnings(fit_isoflop(ladder())) == []  # bracketed: no warning
    too_big = []
    for c in (1e17, 1e18, 1e19):
        for n in optimal_size(c) * np.geomspace(4, 64, 4):
            too_big.append(Point(budget=c, params=n, tokens=c / (6 * n), loss=law(n, c / (6 * n))))
    fit = fit_isoflop(too_big)
    assert set(fit.unbracketed) == {1e17, 1e18, 1e19}
    warnings = isoflop_warnings(fit)
    assert len(warnings) == 3 and all("not bracketed" in w and "add smaller sizes" in w for w in warnings)
    rising = [Point(5e16, n, 5e16 / (6 * n), loss) for n, loss in ((1e6, 3.0), (2e6, 3.01), (4e6, 3.1), (8e6, 3.4))]
    assert fit_isoflop(rising + ladder()).unbracketed.keys() == {5e16}  # lowest at the smallest size, vertex or not
    good = fit_parametric(ladder(), bootstrap=0)
    assert parametric_warnings(good, ladder()) == []
    concave = [Point(1e16, n, 1e16 / (6 * n), loss) for n, loss in ((1e6, 3.0), (2e6, 3.2), (4e6, 3.1))]
    assert fit_isoflop(concave + too_big).not_convex == [1e16]
    assert "budget 1e+16: the loss is not convex in log N" in isoflop_warnings(fit_isoflop(concave + too_big))[0]
    degenerate = fit_parametric(ladder(), bootstrap=0)
    degenerate.alpha, degenerate.E = 9.9, 1e-30  # what scaling-demo's CPU ladder fitted
    messages = parametric_warnings(degenerate, ladder())
    assert any("α = 9.9 > 2" in m for m in messages) and any("E = 1e-30 ≈ 0" in m for m in messages)
