"""The console's training bar: optimizer steps out of max_steps, and no device sync of its own."""

import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """Shows training as `train: 37/100 steps`, not Lightning's epochs.

    An lm run is one endless epoch of a token budget, which Lightning's bars show as "Epoch 0/-2" with a count of
    micro-batches. This bar counts optimizer steps against `max_steps` (as resolved from the token budget) and
    continues from the restored step after a resume. It is made in that form when training starts: Lightning's bar
    is first drawn as "Training: 0/?", then as "Epoch 0: 0/<batches>" at the epoch's start, a hook that a run
    resumed in the middle of its epoch never gets. Beside it, `train/loss` and `val/loss` are read from the device
    only at logging steps (`trainer.log_every_n_steps`) and after validations, where the logger reads them anyway
    (metrics logged with Lightning's `prog_bar=True` would be read after every batch): updating the bar never waits
    for the GPU, so its refresh rate can stay at every step on any device.
    """

    SHOWN = ("train/loss", "val/loss")

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        metrics = trainer.callback_metrics
        return {name: f"{metrics[name].item():.3f}" for name in self.SHOWN if name in metrics}

    def init_train_tqdm(self) -> Tqdm:
        """Lightning's training bar (same place and look), in steps; the rate counts this session's steps."""
        trainer = self.trainer
        return Tqdm(
            desc="train",
            total=trainer.max_steps,
            initial=trainer.global_step,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        """No bar for Lightning's check of two validation batches before training: it would flash and vanish before
        the training bar, which is the only one lm shows until the first validation."""
        return Tqdm(disable=True)

    def on_train_epoch_start(self, trainer, *_) -> None:
        """Nothing: the bar counts the run's steps, not an epoch's batches (Lightning's would reset it here)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if step == bar.n or not self._should_update(step, bar.total):  # inside an accumulation window
            return
        bar.update(step - bar.n)
        if step % trainer.log_every_n_steps == 0:
            bar.set_postfix(self.get_metrics(trainer, pl_module))
