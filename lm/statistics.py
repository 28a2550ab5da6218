"""What an experiment's report computes from its runs: the spread over seeds, tokens to a target loss, and whether
two variants differ by more than the seeds do.

Design choices:
- The spread is the sample standard deviation over seeds (n − 1 in the denominator); with one seed there is none,
  and the report says so instead of printing ± 0.
- Tokens to target: the tokens seen at the first validation whose val loss is at or below the target, read off
  metrics.jsonl. No interpolation between validations: the answer's resolution is the validation interval, which
  the report states.
- The test is Welch's t-test (scipy.stats.ttest_ind with equal_var=False): two-sided, no assumption that both
  variants' seeds scatter equally. With 2 seeds a side it has about 1–2 degrees of freedom, so only large effects
  reach p < 0.05; the report prints the p-value and n rather than a verdict.
- Beside it, the paired t-test over the seeds both variants ran (scipy.stats.ttest_rel): seed k gives every variant
  with the same parameter shapes the same initial weights, and every variant reads the data in the same order, so
  much of the seed-to-seed spread is shared and the per-seed differences can be far tighter than either spread
  (document-masking-demo: seed 0 above seed 1 by ~0.04 in three variants whose means differ by ~0.02). Where the
  variants' shapes differ (a leave-one-out that removes parameters) the pairing shares only the data order; Welch's
  test, which assumes nothing of the kind, stays in the report.
"""

from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_and_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (numpy's, ddof=1; None for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def tokens_to_target(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """Tokens at the first (tokens, val loss) point at or below `target`; None if the curve never gets there."""
    return next((tokens for tokens, loss in sorted(curve) if loss <= target), None)


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that `a` and `b` have the same mean; None with fewer than 2 values a side
    or no spread on either side (nothing to compare the difference with)."""
    if len(a) < 2 or len(b) < 2 or len(set(a)) == len(set(b)) == 1:  # no spread on either side: undefined
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p_value(a: dict[int, float], b: dict[int, float]) -> float | None:
    """Two-sided p-value of the paired t-test over the seeds (keys) both `a` and `b` ran; None with fewer than 2
    common seeds or with the same difference at every seed (no spread: undefined)."""
    seeds = sorted(a.keys() & b.keys())
    differences = [a[seed] - b[seed] for seed in seeds]
    if len(seeds) < 2 or len(set(differences)) == 1:
        return None
    return float(stats.ttest_rel([a[seed] for seed in seeds], [b[seed] for seed in seeds]).pvalue)
