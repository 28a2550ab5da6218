"""Counting device→host reads in the training loop: each one makes the CPU wait until the GPU has caught up.

A GPU step only runs at full speed while the host queues the next kernels ahead of it; a read of a device value
(`.item()`, `float(t)`, `if t:` ...) drains that queue. lm reads the device only at logging steps (the logger,
the progress bar's metrics, the non-finite guard's streak): this callback measures that claim. `lm bench` reports
its count for the lightning row, and a test trains through the real CLI with it.
"""

import lightning as L
import torch

# The Tensor methods through which Python reads a tensor's value on the host.
READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


class HostReadCounter(L.Callback):
    """Counts reads per optimizer step while training runs, by patching the methods in READS.

    `steps[k]` holds the reads from the start of the batch that makes optimizer step k until the next batch starts
    (its forward, backward, optimizer step, callbacks and logging); reads from the start of a validation to the next
    training batch (the validation, its logging, the checkpoints saved after it) are counted in `validation`. On a
    GPU only reads of device tensors count; on the CPU every tensor counts (on a GPU it would be on the device), an
    upper bound of what the same loop reads on a GPU.
    """

    def __init__(self):
        self.steps: dict[int, int] = {}
        self.validation = 0
        self.originals: dict[str, object] = {}
        self.phase: int | str | None = None  # the optimizer step or "validation" reads are counted for

    def on_train_start(self, trainer, pl_module):
        every_tensor = pl_module.device.type == "cpu"
        for name in READS:
            original = self.originals[name] = getattr(torch.Tensor, name)

            def read(tensor, *args, _original=original, **kwargs):
                if every_tensor or tensor.device.type != "cpu":
                    self.count()
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, read)

    def count(self) -> None:
        if self.phase == "validation":
            self.validation += 1
        elif self.phase is not None:
            self.steps[self.phase] = self.steps.get(self.phase, 0) + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.phase = trainer.global_step + 1
        self.steps.setdefault(self.phase, 0)

    def on_validation_start(self, trainer, pl_module):
        self.phase = "validation"  # until the next training batch: the checkpoints saved after it count here too

    def on_train_epoch_end(self, trainer, pl_module):
        self.phase = None  # what runs at the end of training (the last samples, checkpoints) is not the loop

    def on_train_end(self, trainer, pl_module):
        self.restore()

    def on_exception(self, trainer, pl_module, exception):
        self.restore()

    def restore(self) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        self.originals, self.phase = {}, None

    def summary(self, log_every_n_steps: int, steps: range | None = None) -> dict:
        """Reads per optimizer step, split into logging steps (multiples of log_every_n_steps) and the others."""
        counted = {step: n for step, n in self.steps.items() if steps is None or step in steps}
        logging = {step: n for step, n in counted.items() if step % log_every_n_steps == 0}
        return {
            "between_logging_steps": sum(n for step, n in counted.items() if step not in logging),
            "per_logging_step": sorted(set(logging.values())),
            "validation": self.validation,
        }
