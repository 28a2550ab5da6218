"""The console's training bar: optimizer steps out of max_steps, and no device sync of its own."""

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Shows training as `train: 37/100 steps`, not Lightning's epochs.

    An lm run is one endless epoch of a token budget, which Lightning's bars show as "Epoch 0/-2" with a count of
    micro-batches. This bar counts optimizer steps against `max_steps` (as resolved from the token budget) and
    continues from the restored step after a resume. Beside it, `train/loss` and `val/loss` are read from the device
    only at logging steps (`trainer.log_every_n_steps`) and after validations, where the logger reads them anyway
    (metrics logged with Lightning's `prog_bar=True` would be read after every batch): updating the bar never waits
    for the GPU, so its refresh rate can stay at every step on any device.
    """

    SHOWN = ("train/loss", "val/loss")

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        metrics = trainer.callback_metrics
        return {name: f"{metrics[name].item():.3f}" for name in self.SHOWN if name in metrics}

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step  # a resumed run continues from its step; the rate counts new ones
        bar.set_description("train")
        bar.unit = "step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if step == bar.n or not self._should_update(step, bar.total):  # inside an accumulation window
            return
        bar.update(step - bar.n)
        if step % trainer.log_every_n_steps == 0:
            bar.set_postfix(self.get_metrics(trainer, pl_module))
