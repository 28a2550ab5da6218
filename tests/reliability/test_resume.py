"""Kill -9 and preemption: a resumed run ends exactly where an uninterrupted one does (losses and weights)."""

import random
import signal

import pytest
import torch

from lm.callbacks.preemption import EXIT_PREEMPTED
from lm.checkpoint import load_checkpoint
from lm.cli import main
from tests.conftest import MUON_VARIANTS
from tests.reliability.helpers import (
    PERIODIC,
    ROOT,
    assert_same_run,
    last_step,
    run_config,
    start,
    train_lines,
    validations,
    wait_until,
)


@pytest.fixture(scope="module")
def reference(text_corpus, tmp_path_factory):
    """The uninterrupted run that every interrupted one must reproduce."""
    config, run = run_config(tmp_path_factory.mktemp("reference"), text_corpus, "run")
    main(["fit", "--config", config, *PERIODIC])
    return run


def resume(config: str, run, *extra: str) -> int:
    """Continue the run with --ckpt_path last; the step it restarted from (checked against last.ckpt)."""
    restart = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    before = len(train_lines(run))
    main(["fit", "--config", config, *extra, "--ckpt_path", "last"])
    assert train_lines(run)[before]["step"] == restart + 1  # Lightning resolved "last" to checkpoints/last.ckpt
    return restart


@pytest.mark.parametrize(
    "first, last",
    [(4, 9), pytest.param(4, 5, marks=pytest.mark.slow), pytest.param(10, 11, marks=pytest.mark.slow)],
    ids=["random", "early", "after-validation"],
)
def test_kill_9_then_resume_matches_uninterrupted_run(first, last, reference, text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")
    target = random.randint(first, last)  # a random step after the first checkpoint (step 3)
    process = start(["fit", "--config", config, *PERIODIC], tmp_path / "fit.log")
    wait_until(lambda: last_step(run) >= target, process, tmp_path / "fit.log")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = last_step(run)

    restart = resume(config, run, *PERIODIC)
    assert 3 <= restart <= killed_at, (target, killed_at, restart)
    assert_same_run(run, reference)


def test_sigterm_saves_last_and_exits_75_then_resumes(reference, text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")  # no periodic checkpoints: last.ckpt is the handler's
    process = start(["fit", "--config", config], tmp_path / "fit.log")
    wait_until(lambda: last_step(run) >= 7, process, tmp_path / "fit.log")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == EXIT_PREEMPTED, (tmp_path / "fit.log").read_text()[-3000:]
    stopped_at = last_step(run)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == stopped_at > 6

    assert resume(config, run) == stopped_at
    assert_same_run(run, reference)


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_last(reference, text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")
    log = tmp_path / "fit.log"
    # Saves: step-3, last (step 3), step-6, then last.ckpt at step 6 stalls halfway.
    script = str(ROOT / "tests" / "reliability" / "stall_save.py")
    process = start(["fit", "--config", config, *PERIODIC], log, script=script, STALL_SAVE="4")
    wait_until(lambda: "STALLED" in log.read_text(), process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / "checkpoints" / "last.ckpt.tmp").is_file()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3

    assert resume(config, run, *PERIODIC) == 3
    assert_same_run(run, reference)


@pytest.mark.slow
def test_sigusr1_acts_as_sigterm_outside_slurm(reference, text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")
    process = start(["fit", "--config", config], tmp_path / "fit.log")
    wait_until(lambda: last_step(run) >= 2, process, tmp_path / "fit.log")
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=120) == EXIT_PREEMPTED
    stopped_at = last_step(run)
    assert resume(config, run) == stopped_at
    assert_same_run(run, reference)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sigterm_inside_an_accumulation_window_resumes_exactly(workers, text_corpus, tmp_path):
    """SIGTERM at the 2nd micro-batch of step 2's window (accumulation 4): the run saves after that step, not before.

    Saving mid-window would count the window's first micro-batches as consumed while their gradients were lost.
    """
    settings = {"trainer.max_steps": 3, "trainer.accumulate_grad_batches": 4, "data.num_workers": workers}
    config, reference = run_config(tmp_path, text_corpus, "reference", **settings)
    main(["fit", "--config", config])

    signalled = [{"class_path": "tests.reliability.helpers.SignalAt", "init_args": {"micro_batch": 5}}]
    first, run = run_config(tmp_path, text_corpus, "run", **settings, **{"trainer.callbacks": signalled})
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", first])
    assert exit_.value.code == EXIT_PREEMPTED
    saved = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 2  # micro-batches 4..7 all trained: the window ended before the run did
    assert saved["TokenDataModule"]["consumed_samples"] == 2 * 4 * 2  # steps x accumulation x batch_size

    again, _ = run_config(tmp_path, text_corpus, "run", **settings)
    assert resume(again, run) == 2
    assert_same_run(run, reference)


WINDOW_OF_STEP_4 = [12, 13, 14, 15]  # micro-batches (0-based) of the accumulation window that ends at optimizer step 4


@pytest.fixture(scope="module")
def validated_every_4_steps(text_corpus, tmp_path_factory):
    """(settings, uninterrupted run) with accumulation 4, validating at optimizer steps 4 and 8."""
    settings = {"trainer.max_steps": 8, "trainer.accumulate_grad_batches": 4, "trainer.val_check_interval": 4}
    config, reference = run_config(tmp_path_factory.mktemp("validated"), text_corpus, "reference", **settings)
    main(["fit", "--config", config])
    assert [step for step, _ in validations(reference)] == [4, 8]
    return settings, reference


@pytest.mark.parametrize(
    "signal_at",
    [
        *(pytest.param({"micro_batch": i}, marks=[pytest.mark.slow] * (i in (13, 14))) for i in WINDOW_OF_STEP_4),
        {"validation_at_step": 4},
    ],
    ids=[f"micro-batch-{i}" for i in WINDOW_OF_STEP_4] + ["during-validation"],
)
def test_preemption_keeps_the_validation_of_its_step(signal_at, validated_every_4_steps, text_corpus, tmp_path):
    """SIGTERM anywhere in the window of a step that validates, or in that validation: the validation runs (whole)
    before the run stops, and the resumed run does not repeat it."""
    settings, reference = validated_every_4_steps
    signalled = [{"class_path": "tests.reliability.helpers.SignalAt", "init_args": signal_at}]
    first, run = run_config(tmp_path, text_corpus, "run", **settings, **{"trainer.callbacks": signalled})
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", first])
    assert exit_.value.code == EXIT_PREEMPTED
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert validations(run) == validations(reference)[:1]

    again, _ = run_config(tmp_path, text_corpus, "run", **settings)
    assert resume(again, run) == 4
    assert validations(run) == validations(reference)
    assert_same_run(run, reference)
    best = [load_checkpoint(path / "checkpoints" / "best.ckpt")["global_step"] for path in (run, reference)]
    assert best[0] == best[1]


def slow(settings: dict):
    return pytest.param(settings, marks=pytest.mark.slow)


@pytest.mark.parametrize(
    "settings",
    [
        {"model.optim.name": "muon", "model.optim.muon.lr": 0.02},
        # The rest in `make test-slow` (each ~20 s; the default suite keeps the plain and Muon runs).
        slow({"model.optim.name": "muon", "model.optim.muon.lr": 0.02, **MUON_VARIANTS}),
        slow({"data.packing": "bos_aligned"}),
        # batch 64 tokens, 128 from step 4, 256 from step 6 (tests/test_batch_schedule.py); checkpoints at 3, 6, 9
        slow({"model.batch_schedule": [[192, 128], [512, 256]], "trainer.val_check_interval": 8}),
        # rows of 8 tokens for steps 1-4, 16 for steps 5-8, then data.seq_len (32)
        slow({"data.seq_len_warmup": [[8, 256], [16, 512]]}),
    ],
    ids=["muon", "muon-variants", "bos_aligned", "batch_schedule", "seq_len_warmup"],
)
def test_kill_9_then_resume_matches_its_uninterrupted_run(settings, text_corpus, tmp_path):
    """Muon's momentum (and NorMuon's second moment) and AdamW's moments (one optimizer, lm.optim.MuonAdamW) come
    back exactly from last.ckpt;
    BOS-aligned rows continue from the samples consumed, as windows do; a batch schedule takes up the phase of the
    restored step (its accumulation is a function of the step), a sequence-length warm-up the row length of the
    restored data position."""
    config, reference = run_config(tmp_path, text_corpus, "reference", **settings)
    main(["fit", "--config", config, *PERIODIC])

    config, run = run_config(tmp_path, text_corpus, "run", **settings)
    process = start(["fit", "--config", config, *PERIODIC], tmp_path / "fit.log")
    wait_until(lambda: last_step(run) >= random.randint(4, 9), process, tmp_path / "fit.log")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert resume(config, run, *PERIODIC) >= 3
    assert_same_run(run, reference)
