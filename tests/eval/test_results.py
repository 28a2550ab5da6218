import math

import pytest

from lm.eval.results import mean_accuracy, mean_accuracy_stderr, metric_values, task_accuracies

RESULTS = {
    "results": {
        "arc": {
            "alias": "arc",
            "acc,none": 0.5,
            "acc_stderr,none": 0.1,
            "acc_norm,none": 0.75,
            "acc_norm_stderr,none": 0.03,
        },
        "lambada": {
            "acc,none": 0.25,
            "acc_stderr,none": 0.04,
            "perplexity,none": 40.0,
            "perplexity_stderr,none": "N/A",
        },
        "gsm": {"exact_match,strict-match": 0.0, "sample_len": 10},
        "suite": {"acc,none": 0.9},
    },
    "groups": {"suite": {}},
}


def test_metric_names():
    assert metric_values(RESULTS) == {
        "arc/acc": 0.5,
        "arc/acc_norm": 0.75,
        "lambada/acc": 0.25,
        "lambada/perplexity": 40.0,
        "gsm/exact_match/strict-match": 0.0,
        "suite/acc": 0.9,
    }


def test_mean_accuracy_takes_acc_norm_where_reported_and_leaves_groups_out():
    assert task_accuracies(RESULTS) == {"arc": ("acc_norm", 0.75, 0.03), "lambada": ("acc", 0.25, 0.04)}
    assert mean_accuracy(RESULTS) == pytest.approx((0.75 + 0.25) / 2)
    assert mean_accuracy_stderr(RESULTS) == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert mean_accuracy({"results": {"gsm": {"exact_match,none": 1.0}}}) is None
