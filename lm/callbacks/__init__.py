"""Training callbacks; `default_callbacks()` is the set every run should have (RunSummaryCallback last)."""

import lightning as L

from lm.callbacks.run_summary import RunSummaryCallback
from lm.callbacks.samples import SampleCallback
from lm.callbacks.throughput import ThroughputCallback
from lm.callbacks.window_schedule import SlidingWindowSchedule
from lm.eval.hellaswag import HellaSwagCallback

__all__ = [
    "HellaSwagCallback",
    "RunSummaryCallback",
    "SampleCallback",
    "SlidingWindowSchedule",
    "ThroughputCallback",
    "default_callbacks",
]


def default_callbacks() -> list[L.Callback]:
    """Throughput, text samples and the run summary, in the order the summary needs (it reads the others)."""
    return [ThroughputCallback(), SampleCallback(), RunSummaryCallback()]
