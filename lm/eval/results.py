"""Reading lm-evaluation-harness results: the dict `simple_evaluate` returns, as `python -m lm eval` writes it.

Plain functions on that dict (no harness import), shared by HarnessCallback, the experiment report and tests.
"""

import math


def metric_values(results: dict) -> dict[str, float]:
    """{"<task>/<metric>": value} of every task and group; a filter other than "none" is appended ("/<filter>")."""
    values = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")  # other keys (alias, sample_len) are not metrics
            if not comma or "_stderr" in metric or not isinstance(value, int | float):
                continue
            suffix = "" if filter_name == "none" else f"/{filter_name}"
            values[f"{task}/{metric}{suffix}"] = float(value)
    return values


def accuracy(metrics: dict) -> tuple[str, float, float | None] | None:
    """(name, value, standard error) of a task's accuracy: acc_norm where the task reports it, else acc."""
    for name in ("acc_norm", "acc"):
        value, stderr = metrics.get(f"{name},none"), metrics.get(f"{name}_stderr,none")
        if isinstance(value, int | float):
            return name, float(value), float(stderr) if isinstance(stderr, int | float) else None
    return None


def task_accuracies(results: dict) -> dict[str, tuple[str, float, float | None]]:
    """accuracy() of every task that has one (groups left out)."""
    groups = results.get("groups", {})
    scores = {task: accuracy(metrics) for task, metrics in results["results"].items() if task not in groups}
    return {task: score for task, score in scores.items() if score is not None}


def mean_accuracy(results: dict) -> float | None:
    """Mean over tasks (not groups) of acc_norm where the task reports it, else acc; None if no task has either."""
    scores = [value for _, value, _ in task_accuracies(results).values()]
    return sum(scores) / len(scores) if scores else None


def mean_accuracy_stderr(results: dict) -> float | None:
    """Standard error of mean_accuracy, taking the tasks as independent: sqrt(sum of squared errors) / tasks."""
    errors = [stderr for _, _, stderr in task_accuracies(results).values()]
    if not errors or None in errors:
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)
