"""A fit's batch and length (lm.run_length): accumulation from the global batch on any world size, the budget in
steps, an integer val_check_interval in optimizer steps, and the resume checks on the global batch and schedule."""

import math
from types import SimpleNamespace

import pytest

from lm.batch_schedule import BatchSchedule
from lm.errors import UserError
from lm.run_length import RunLength

DATA = SimpleNamespace(batch_size=2, seq_len=32)  # 64 tokens a micro-batch on each rank
POINTS = [[192, 128], [512, 256]]  # as tests/test_batch_schedule.py's hand-worked schedule


def trainer(world_size: int = 1, accumulate: int = 1, max_steps: int = -1, val_check_interval=1.0):
    trainer = SimpleNamespace(
        world_size=world_size,
        accumulate_grad_batches=accumulate,
        max_steps=max_steps,
        val_check_interval=val_check_interval,
    )
    trainer.fit_loop = SimpleNamespace(epoch_loop=trainer)  # where Lightning keeps max_steps
    return trainer


def test_accumulation_follows_the_world_size():
    for world_size, accumulate in ((1, 4), (2, 2), (4, 1)):
        fit = trainer(world_size)
        assert RunLength.resolve(fit, DATA, 256, None).tokens_per_step == 256
        assert fit.accumulate_grad_batches == accumulate


def test_a_global_batch_that_does_not_divide_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"batch_tokens \(256\) is not a multiple .* world size \(2 × 32 × 3 = 192\)"):
        RunLength.resolve(trainer(world_size=3), DATA, 256, None)
    with pytest.raises(UserError, match="either trainer.accumulate_grad_batches or model.batch_tokens"):
        RunLength.resolve(trainer(accumulate=2), DATA, 256, None)


def test_an_integer_val_check_interval_counts_optimizer_steps():
    fit = trainer(world_size=2, val_check_interval=10)
    RunLength.resolve(fit, DATA, 512, None)
    assert fit.accumulate_grad_batches == 4 and fit.val_check_interval == 40  # Lightning counts micro-batches
    fraction = trainer(val_check_interval=0.5)
    RunLength.resolve(fraction, DATA, 512, None)
    assert fraction.val_check_interval == 0.5  # a fraction of an epoch is left to Lightning
    with pytest.raises(UserError, match=r"val_check_interval \(6\) must be a multiple of 4 under model.batch_schedule"):
        RunLength.resolve(trainer(val_check_interval=6), DATA, None, POINTS)


@pytest.mark.parametrize("schedule", [None, POINTS], ids=["constant", "schedule"])
def test_a_token_budget_is_the_fewest_steps_that_see_it(schedule):
    run = RunLength.resolve(trainer(), DATA, None, schedule)
    for budget in (1, 64, 65, 1000, 2048):
        fit = trainer()
        steps = run.set_max_steps(fit, budget)
        assert fit.max_steps == steps and run.tokens_seen(steps - 1) < budget <= run.tokens_seen(steps)
    assert run.tokens_seen(12) == (12 * 64 if schedule is None else 2048)
    assert run.lr_clock(12) == run.tokens_seen(12) // 64  # the schedule's clock counts steps of the first batch
    constant = RunLength.resolve(trainer(), DATA, None, None)
    assert constant.set_max_steps(trainer(), 1000) == math.ceil(1000 / 64)


def test_a_length_given_twice_or_not_at_all_is_refused():
    run = RunLength.resolve(trainer(), DATA, None, None)
    with pytest.raises(UserError, match="either trainer.max_steps or a token budget"):
        run.set_max_steps(trainer(max_steps=10), 1000)
    with pytest.raises(UserError, match="no training length"):
        run.set_max_steps(trainer(), None)
    assert run.set_max_steps(trainer(max_steps=10), None) == 10


def test_resume_with_another_global_batch_is_refused():
    run = RunLength.resolve(trainer(world_size=2), DATA, 128, None)
    with pytest.raises(UserError, match=r"256 tokens per optimizer step.*model.batch_tokens=256"):
        run.check_resume({"tokens_per_step": 256}, world_size=2)
    run.check_resume({"tokens_per_step": 128}, world_size=2)  # same global batch: fine on any world size
    assert run.checkpoint_state() == {"tokens_per_step": 128}


def test_resume_with_another_schedule_is_refused():
    run = RunLength(BatchSchedule(64, POINTS, 64), scheduled=True)
    saved = run.checkpoint_state()
    assert saved == {"tokens_per_step": 64, "batch_schedule": [[0, 0, 64], [4, 256, 128], [6, 512, 256]]}
    run.check_resume(saved, world_size=1)
    with pytest.raises(UserError, match="batch schedule .* differs from this run's"):
        run.check_resume({**saved, "batch_schedule": [[0, 0, 64], [4, 256, 128]]}, world_size=1)
    with pytest.raises(UserError, match="batch schedule .* differs from this run's"):
        run.check_resume({"tokens_per_step": 64}, world_size=1)  # a run without a schedule
    with pytest.raises(UserError, match="batch schedule .* differs from this run's"):
        RunLength(BatchSchedule(64, [], 64), scheduled=False).check_resume(saved, world_size=1)
