"""Device→host reads in the training loop, counted through the real CLI stack: none between logging steps."""

import lightning as L

from lm.callbacks.host_reads import HostReadCounter
from lm.train import run
from tests.conftest import write_config


class ReadsTheLossEveryStep(L.Callback):
    """What a careless callback does (a host sync per step on a GPU): the counter must see it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        float(outputs["loss"])


def count_reads(
    tmp_path, text_corpus, *callbacks, model_config: dict | None = None, args: tuple[str, ...] = ()
) -> dict:
    """8 steps through `python -m lm fit`'s stack (every default callback, the progress bar, TensorBoard,
    checkpoints), logging every 4 steps, validating at 4 and 8."""
    settings = {
        "trainer.max_steps": 8,
        "trainer.log_every_n_steps": 4,
        "trainer.val_check_interval": 4,
        "trainer.enable_progress_bar": True,
    }
    settings |= {f"model.config.{key}": value for key, value in (model_config or {}).items()}
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run", **settings)
    counter = HostReadCounter()
    run(["fit", "--config", config, "--overwrite", "true", *args], callbacks=(counter, *callbacks))
    assert sorted(counter.steps) == list(range(1, 9))
    return counter.summary(log_every_n_steps=4)


def test_no_host_reads_between_logging_steps(tmp_path, text_corpus):
    reads = count_reads(tmp_path, text_corpus)
    assert reads["between_logging_steps"] == 0
    # At a logging step (docs/performance.md): Lightning's logger 10 (one per metric logged), metrics.jsonl 9, the
    # progress bar 1-2 (train/loss, then val/loss too), the non-finite guard 1, and on the CPU only the seed of
    # the validation DataLoader that a validation at the same step starts (a CPU tensor on a GPU) 1.
    assert reads["per_logging_step"] == [22, 23]
    assert 0 < reads["validation"] <= 40


def test_document_masking_and_windows_read_nothing_from_the_device(tmp_path, text_corpus):
    """Document starts are computed from the ids on the device; masks and positions need no host value."""
    masking = {"attention_mask": "document", "window_pattern": "S", "sliding_window": 8}
    assert count_reads(tmp_path, text_corpus, model_config=masking)["between_logging_steps"] == 0


def test_the_counter_sees_a_read_per_step(tmp_path, text_corpus):
    reads = count_reads(tmp_path, text_corpus, ReadsTheLossEveryStep())
    assert reads["between_logging_steps"] == 6  # steps 1, 2, 3, 5, 6, 7
    assert reads["per_logging_step"] == [23, 24]


def test_no_host_reads_between_logging_steps_with_every_training_aid(tmp_path, text_corpus):
    """z-loss, weight averaging, the loss-spike detector (skipping) and the per-group diagnostics all stay on the
    device between logging steps."""
    aids = ("--model.z_loss", "1e-4", "--ema.start_step", "2", "--spikes.threshold", "6", "--spikes.skip", "true")
    aids += ("--spikes.warmup_steps", "2", "--diagnostics.enabled", "true", "--checkpoint.monitor", "val/ema/loss")
    reads = count_reads(tmp_path, text_corpus, args=aids)
    assert reads["between_logging_steps"] == 0
