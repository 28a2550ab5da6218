"""The batch-size schedule: its phases against a micro-batch by micro-batch simulation, and a real run's token
accounting, data position, learning rate and validation points worked out by hand."""

import json
from types import SimpleNamespace

import pytest
import torch

from lm.batch_schedule import BatchSchedule
from lm.cli import main
from lm.errors import UserError
from lm.module import LanguageModel
from lm.optim import OptimConfig
from lm.run_length import RunLength
from tests.conftest import tiny_config, write_config
from tests.reliability.helpers import assert_same_run

# micro-batch 2 × 32 = 64 tokens; batch 64 (accumulation 1), 128 from 192 tokens, 256 from 512
POINTS = [[192, 128], [512, 256]]


def simulated(start: int, points, micro: int, steps: int) -> list[int]:
    """Accumulation of each step, by the rule stated in lm/batch_schedule.py, one micro-batch at a time: a point's
    batch takes over at a step boundary at or after its tokens where the micro-batches done are a multiple of its
    accumulation."""
    pending, accumulation, done, result = list(points), start // micro, 0, []
    while len(result) < steps:
        if pending and done * micro >= pending[0][0] and done % (pending[0][1] // micro) == 0:
            accumulation = pending.pop(0)[1] // micro
            continue
        result.append(accumulation)
        done += accumulation
    return result


@pytest.mark.parametrize(
    "start, points",
    [(64, POINTS), (64, [[1, 128]]), (128, [[100, 384], [1000, 512], [1001, 1024]]), (192, [[500, 384]])],
)
def test_phases_follow_the_micro_batch_rule(start, points):
    schedule = BatchSchedule(start, points, micro_tokens=64)
    accumulations = simulated(start, points, 64, 80)
    tokens = [64 * sum(accumulations[:step]) for step in range(81)]
    assert [schedule.accumulation(step) for step in range(80)] == accumulations
    assert [schedule.tokens_at(step) for step in range(81)] == tokens
    for budget in (1, 63, 64, 65, 500, 1000, 2047, 5000):
        assert schedule.steps_for(budget) == next(step for step, seen in enumerate(tokens) if seen >= budget)


def test_the_hand_worked_schedule():
    schedule = BatchSchedule(64, POINTS, micro_tokens=64)
    # 192 is not a multiple of 128: one more step of 64, then 128 from 256 tokens (step 4); 256 from 512 (step 6)
    assert schedule.as_list() == [[0, 0, 64], [4, 256, 128], [6, 512, 256]]
    assert schedule.validation_multiple() == 4


def test_bad_schedules_are_refused_in_one_line():
    with pytest.raises(UserError, match="token counts must be positive and increasing"):
        BatchSchedule(64, [[512, 128], [256, 256]], 64)
    with pytest.raises(UserError, match=r"positive .* \(the first batch is model.batch_tokens\)"):
        BatchSchedule(64, [[0, 128]], 64)
    with pytest.raises(UserError, match=r"batch 96 is not a multiple of the first batch \(64 tokens"):
        BatchSchedule(64, [[512, 96]], 32)


def test_the_learning_rate_runs_in_tokens(monkeypatch):
    """With a schedule, the rate of a step is the constant-batch run's rate at the same tokens seen."""
    module = LanguageModel(
        tiny_config(), optim=OptimConfig(warmup_steps=3, lr=1e-3, min_lr=1e-4), batch_schedule=POINTS
    )
    module.run_length = RunLength(BatchSchedule(64, POINTS, 64), scheduled=True)
    monkeypatch.setattr(LanguageModel, "trainer", SimpleNamespace(max_steps=12), raising=False)
    constant = LanguageModel(tiny_config(), optim=OptimConfig(warmup_steps=3, lr=1e-3, min_lr=1e-4))
    last = module.run_length.tokens_seen(11) // 64  # 28 steps of 64 tokens before the last step
    with monkeypatch.context() as m:
        m.setattr(LanguageModel, "trainer", SimpleNamespace(max_steps=last + 1), raising=False)
        reference = [constant.lr_at(module.run_length.tokens_seen(step) // 64) for step in range(12)]
    assert [module.lr_at(step) for step in range(12)] == reference
    assert module.lr_at(11) == pytest.approx(1e-4)  # the decay ends at the last step


def schedule_run(tmp_path, corpus, name: str, **overrides):
    settings = {
        "trainer.max_steps": -1,
        "trainer.val_check_interval": 8,
        "data.batch_size": 2,
        "model.max_tokens": 2048,
        "model.batch_schedule": POINTS,
        **overrides,
    }
    run = tmp_path / name
    main(["fit", "--config", write_config(tmp_path / f"{name}.yaml", corpus, run, **settings)])
    return run


def test_a_growing_batch_counts_tokens_data_and_validations_right(text_corpus, tmp_path):
    run = schedule_run(tmp_path, text_corpus, "run")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "train/loss" in line]
    # steps 1-4 take 64 tokens, 5-6 take 128, 7-12 take 256: the budget of 2048 tokens is 12 steps
    expected = [64 * s for s in range(1, 5)] + [256 + 128 * s for s in (1, 2)] + [512 + 256 * s for s in range(1, 7)]
    assert [line["step"] for line in train] == list(range(1, 13))
    assert [line["train/tokens"] for line in train] == expected
    # validation every 8 × 64 = 512 tokens: after steps 6 (512), 8 (1024), 10 (1536) and 12 (2048)
    assert [(line["step"], line["tokens"]) for line in lines if "val/loss" in line] == [
        (6, 512),
        (8, 1024),
        (10, 1536),
        (12, 2048),
    ]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["step"] == 12 and summary["tokens_seen"] == 2048
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["tokens_seen"] == 2048 and ckpt["batch_schedule"] == [[0, 0, 64], [4, 256, 128], [6, 512, 256]]
    assert ckpt["TokenDataModule"]["consumed_samples"] == 2048 // 32  # 4 + 2·2 + 6·4 micro-batches of 2 rows
    assert train[-1]["lr"] == pytest.approx(3e-4)  # min_lr at the last step: the decay ran over the tokens


def test_a_schedule_sets_accumulation_as_the_trainer_does(text_corpus, tmp_path):
    """The schedule's accumulation (here batch_tokens 128, then a point past the run) takes the same path as
    trainer.accumulate_grad_batches: the same losses and weights, exactly."""
    common = {"model.max_tokens": None, "trainer.max_steps": 4, "trainer.val_check_interval": 2}
    schedule = {"model.batch_tokens": 128, "model.batch_schedule": [[1e9, 256]]}
    scheduled = schedule_run(tmp_path, text_corpus, "scheduled", **common, **schedule)
    plain = schedule_run(
        tmp_path, text_corpus, "plain", **common, **{"model.batch_schedule": None, "trainer.accumulate_grad_batches": 2}
    )
    assert_same_run(scheduled, plain)


def test_validation_between_the_steps_of_a_larger_batch_is_refused(text_corpus, tmp_path):
    with pytest.raises(SystemExit, match=r"val_check_interval \(6\) must be a multiple of 4"):
        schedule_run(tmp_path, text_corpus, "run", **{"trainer.val_check_interval": 6})
