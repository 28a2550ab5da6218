"""The schedule's checks (the rates themselves: tests/test_module.py, through LanguageModel.lr_at)."""

import pytest

from lm.errors import UserError
from lm.optim import OptimConfig, check_warmup


def test_wsd_refuses_a_warmup_that_runs_into_the_decay():
    with pytest.raises(
        UserError, match=r"model.optim.warmup_steps \(81\) runs into the WSD decay, which starts at step 80"
    ):
        check_warmup(OptimConfig(warmup_steps=81, lr_schedule="wsd", decay_fraction=0.2), 100)
    check_warmup(OptimConfig(warmup_steps=80, lr_schedule="wsd", decay_fraction=0.2), 100)
    check_warmup(OptimConfig(warmup_steps=81, lr_schedule="cosine"), 100)  # no plateau to run into
