"""Scaling-law fits of a ladder of runs: which model size and token count a compute budget should buy.

Two fits, each with its own use (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"):
- **IsoFLOP** (their approach 2), the one the prediction comes from: at each budget C the final loss against log N
  is a parabola; its minimum is the compute-optimal size N*(C), and the same in log D gives D*(C); power laws
  N* = k·C^a and D* = k'·C^b are lines in log-log space. It needs only 3+ sizes per budget and assumes no form of the
  loss, which suits a small ladder.
- **Parametric** L(N, D) = E + A/N^α + B/D^β (their approach 3): five constants from all points at once, so it says
  what each term costs (E the irreducible loss, α and β how fast size and data pay). It is fitted as they did, with
  the known pitfalls of that fit avoided: a Huber loss on log L, *summed* over points (a mean scales the objective
  down until L-BFGS's tolerance stops it early), L-BFGS-B from a grid of initial points with the best kept, and
  bootstrap intervals (refits on points resampled with replacement).
A fit always returns numbers; the warnings say when they are not a measurement: sizes or tokens spanning too
little, a budget whose lowest loss is at its smallest or largest size, or whose parabola's minimum lies outside
its sizes (not bracketed: N* is extrapolated from the parabola's curvature), and a degenerate parametric fit (an
exponent above 2, where a term acts as a step the points cannot constrain, or an irreducible loss E near 0, where
the points never flatten). A ladder too small for its models — every budget best at its smallest size, as on a
CPU — gets all of them.
N is the non-embedding parameter count (the embedding tables do no matmul and dominate a small model's count), D the
tokens a run trained on, and C the FLOP budget it was given (`model.max_flops`: by the model's own count,
GPT.flops_per_token × tokens, which the run spends rounded up to whole steps; run_summary.json records the exact
figure). Grouping and fitting by the budget keeps each IsoFLOP group one C.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

HUBER_DELTA = 1e-3  # as in Hoffmann et al.: nearly an L1 loss on log L, robust to an outlying run
MIN_SPAN = 4.0  # a ladder's sizes (and token counts) should span at least this factor to separate the exponents
MAX_EXPONENT = 2.0  # fitted α or β above this: the term is a step, not a law (published fits are 0.1-0.8)
MIN_E_SHARE = 0.01  # E below this share of the lowest loss: the fit found no irreducible loss


@dataclass
class Point:
    """One finished run of a ladder."""

    budget: float  # the FLOP budget it was given (the IsoFLOP group)
    params: float  # N: non-embedding parameters
    tokens: float  # D: tokens trained
    loss: float  # final val loss
    warmup_only: bool = False  # stopped before its warmup ended: its loss says nothing about its size


@dataclass
class PowerLaw:
    """y = k·C^a: a line in log-log space through the IsoFLOP optima (scipy.stats.linregress), with the confidence
    interval of the line where it has residuals to estimate one from."""

    exponent: float  # a
    exponent_se: float  # its standard error
    coefficient: float  # k
    budgets: int  # the optima it is fitted through
    log_budget_mean: float
    log_budget_var: float  # population variance: Sxx / budgets

    @classmethod
    def fit(cls, budgets: list[float], values: list[float]) -> "PowerLaw":
        log_c = np.log(budgets)
        line = stats.linregress(log_c, np.log(values))
        return cls(line.slope, line.stderr, math.exp(line.intercept), len(budgets), log_c.mean(), log_c.var())

    def __call__(self, flops: float) -> float:
        return self.coefficient * flops**self.exponent

    def interval(self, flops: float, level: float = 0.95) -> tuple[float, float] | None:
        """The line's `level` confidence interval at `flops`, Student's t with budgets − 2 degrees of freedom: the
        uncertainty of slope and intercept together, se² = σ²·(1/n + (x − x̄)²/Sxx) with x = log C, written here as
        se(slope)²·(Sxx/n + (x − x̄)²). None for a line through 2 optima: it has no residual to estimate σ from."""
        if self.budgets < 3:
            return None
        se = self.exponent_se * math.sqrt(self.log_budget_var + (math.log(flops) - self.log_budget_mean) ** 2)
        half = stats.t.ppf((1 + level) / 2, self.budgets - 2) * se
        return self(flops) * math.exp(-half), self(flops) * math.exp(half)


@dataclass
class IsoFlopFit:
    optima: dict[float, tuple[float, float]]  # budget -> (N*, D*) at the parabolas' minima
    params: PowerLaw  # N* = k·C^a
    tokens: PowerLaw  # D* = k'·C^b
    parabolas: dict[float, tuple[np.ndarray, np.ndarray]]  # budget -> (coefficients in log N, in log D)
    unbracketed: dict[float, tuple[float, float]]  # budget -> (smallest, largest size run) where the lowest loss is at
    # one of them or N* outside them: the optimum is not between two sizes that were run
    not_convex: list[float]  # budgets whose parabola opens downward: no optimum, left out of the power laws

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N*, D*) the power laws give for a budget of `flops`."""
        return self.params(flops), self.tokens(flops)


@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    intervals: dict[str, tuple[float, float]]  # constant -> 95% bootstrap interval (2.5th, 97.5th percentile)

    def loss(self, params, tokens):
        return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)


def usable(points: list[Point]) -> list[Point]:
    """The points a fit may use: warm-up-only runs left out."""
    return [p for p in points if not p.warmup_only]


def span_warnings(points: list[Point]) -> list[str]:
    """Why a fit of these points may not separate the exponents (empty when the sizes and tokens span enough)."""
    found = []
    for name, values in (("sizes", [p.params for p in points]), ("token counts", [p.tokens for p in points])):
        span = max(values) / min(values)
        if span < MIN_SPAN:
            found.append(
                f"the {name} span only {span:.1f}× (< {MIN_SPAN:.0f}×): the fitted exponents are poorly separated"
            )
    return found


def fit_isoflop(points: list[Point]) -> IsoFlopFit:
    """Parabolas of loss in log N and in log D per budget (3+ sizes), then power laws through their minima."""
    optima, parabolas, unbracketed, not_convex = {}, {}, {}, []
    for budget in sorted({p.budget for p in points}):
        group = [p for p in points if p.budget == budget]
        if len({p.params for p in group}) < 3:
            continue
        loss = np.array([p.loss for p in group])
        by_params = np.polyfit(np.log([p.params for p in group]), loss, 2)
        by_tokens = np.polyfit(np.log([p.tokens for p in group]), loss, 2)
        if by_params[0] <= 0 or by_tokens[0] <= 0:
            not_convex.append(budget)
            continue
        vertex = lambda c: math.exp(-c[1] / (2 * c[0]))
        optima[budget] = (vertex(by_params), vertex(by_tokens))
        parabolas[budget] = (by_params, by_tokens)
        sizes = min(p.params for p in group), max(p.params for p in group)
        lowest = min(group, key=lambda p: p.loss).params
        if lowest in sizes or not sizes[0] <= optima[budget][0] <= sizes[1]:
            unbracketed[budget] = sizes
    if len(optima) < 2:
        raise ValueError("an IsoFLOP fit needs at least 2 budgets with 3 or more sizes each")
    return IsoFlopFit(
        optima=optima,
        params=PowerLaw.fit(list(optima), [n for n, _ in optima.values()]),
        tokens=PowerLaw.fit(list(optima), [d for _, d in optima.values()]),
        parabolas=parabolas,
        unbracketed=unbracketed,
        not_convex=not_convex,
    )


def isoflop_warnings(fit: IsoFlopFit) -> list[str]:
    """A line per budget with no optimum, and per budget whose optimum is not bracketed: approach 2 needs the lowest
    loss at a size between two others that were run, and the parabola's minimum among the sizes."""
    found = [f"budget {budget:.3g}: the loss is not convex in log N, no optimum (unused)" for budget in fit.not_convex]
    for budget, (low, high) in fit.unbracketed.items():
        size = fit.optima[budget][0]
        found.append(
            f"budget {budget:.3g}: not bracketed by the sizes run ({low:,.0f}–{high:,.0f}), N* = {size:,.0f} is "
            f"extrapolated — add {'smaller' if size < math.sqrt(low * high) else 'larger'} sizes"
        )
    return found


def parametric_warnings(fit: ParametricFit, points: list[Point]) -> list[str]:
    """Why the parametric constants may be a degenerate fit rather than a law (empty when they look like one)."""
    found = [
        f"{name} = {value:.3g} > {MAX_EXPONENT:.0f}: its term acts as a step the points cannot constrain (degenerate)"
        for name, value in (("α", fit.alpha), ("β", fit.beta))
        if value > MAX_EXPONENT
    ]
    if fit.E < MIN_E_SHARE * min(p.loss for p in points):
        found.append(f"E = {fit.E:.3g} ≈ 0: the losses never flatten here, so no irreducible loss can be read off")
    return found


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray):
    """Summed Huber loss of log L, with L = exp(e) + exp(a − α log N) + exp(b − β log D) as a logsumexp, and its
    gradient (analytic: L-BFGS then needs one evaluation a step instead of six)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    exp_terms = np.exp(terms - top)
    predicted = top + np.log(exp_terms.sum(axis=0))  # logsumexp, without scipy's per-call overhead (a hot loop)
    residual = predicted - log_loss
    slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # d huber / d residual
    weights = slope * exp_terms / exp_terms.sum(axis=0)  # × d predicted / d term (the softmax of the terms)
    gradient = [
        weights[0].sum(),
        weights[1].sum(),
        weights[2].sum(),
        -(weights[0] * log_n).sum(),
        -(weights[1] * log_d).sum(),
    ]
    return float(special.huber(HUBER_DELTA, residual).sum()), np.array(gradient)


INITIAL_GRID = {  # Hoffmann et al.'s grid, coarser (72 starts, not 4,500): a, b, e, α, β
    "a": [0.0, 10.0],
    "b": [0.0, 10.0],
    "e": [-1.0, 1.0],
    "alpha": [0.2, 0.6, 1.2],
    "beta": [0.2, 0.6, 1.2],
}


def _minimize(data: tuple[np.ndarray, ...], starts) -> np.ndarray:
    """L-BFGS-B from every start; the parameters of the lowest objective."""
    best = None
    for start in starts:
        result = optimize.minimize(_objective, np.array(start, dtype=float), args=data, jac=True, method="L-BFGS-B")
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def fit_parametric(points: list[Point], bootstrap: int = 100, seed: int = 0) -> ParametricFit:
    """E + A/N^α + B/D^β by Huber regression on log L (summed), from a grid of starts; `bootstrap` refits on points
    resampled with replacement (each from the full fit's optimum) give the 95% intervals."""
    log_n, log_d = np.log([p.params for p in points]), np.log([p.tokens for p in points])
    log_loss = np.log([p.loss for p in points])
    a, b, e, alpha, beta = _minimize((log_n, log_d, log_loss), itertools.product(*INITIAL_GRID.values()))
    constants = lambda a, b, e, alpha, beta: {
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": alpha,
        "beta": beta,
    }
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        i = rng.integers(0, len(points), len(points))
        samples.append(constants(*_minimize((log_n[i], log_d[i], log_loss[i]), [(a, b, e, alpha, beta)])))
    intervals = (
        {name: tuple(float(q) for q in np.percentile([s[name] for s in samples], [2.5, 97.5])) for name in samples[0]}
        if samples
        else {}
    )
    return ParametricFit(**constants(a, b, e, alpha, beta), intervals=intervals)


def write_csv(points: list[Point], path) -> None:
    """Every point of the ladder, the warm-up-only ones marked, as CSV."""
    lines = ["budget_flops,non_embedding_params,tokens,final_val_loss,warmup_only"]
    lines += [f"{p.budget:.6g},{p.params:.0f},{p.tokens:.0f},{p.loss:.6f},{str(p.warmup_only).lower()}" for p in points]
    path.write_text("\n".join(lines) + "\n")


def plot_ladder(points: list[Point], fit: IsoFlopFit | None, path) -> None:
    """IsoFLOP curves (loss against N per budget, with the fitted parabola and its minimum) and the frontier (N* and
    D* against C with the power laws), in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, frontier) = plt.subplots(1, 2, figsize=(12, 4.5))
    for budget in sorted({p.budget for p in points}):
        group = sorted((p for p in points if p.budget == budget), key=lambda p: p.params)
        line = curves.plot([p.params for p in group], [p.loss for p in group], "o", label=f"C = {budget:.2g}")[0]
        if fit and budget in fit.parabolas:
            n = np.geomspace(group[0].params, group[-1].params, 50)
            curves.plot(n, np.polyval(fit.parabolas[budget][0], np.log(n)), "-", color=line.get_color())
            curves.plot(
                *fit.optima[budget][:1],
                np.polyval(fit.parabolas[budget][0], np.log(fit.optima[budget][0])),
                "*",
                ms=12,
                color=line.get_color(),
            )
    curves.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final val loss", title="IsoFLOP curves")
    curves.legend()
    if fit:
        budgets = np.array(sorted(fit.optima))
        c = np.geomspace(budgets[0], budgets[-1], 50)
        frontier.plot(budgets, [fit.optima[b][0] for b in budgets], "o", label="N* (parabola minima)")
        frontier.plot(c, [fit.optimal(x)[0] for x in c], "-", label=f"N* ∝ C^{fit.params.exponent:.2f}")
        frontier.plot(budgets, [fit.optima[b][1] for b in budgets], "s", label="D* (parabola minima)")
        frontier.plot(c, [fit.optimal(x)[1] for x in c], "--", label=f"D* ∝ C^{fit.tokens.exponent:.2f}")
        frontier.legend()
    frontier.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", title="compute-optimal frontier")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
