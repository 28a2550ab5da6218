"""Skip optimizer steps whose gradients are not finite, with no host sync per step; stop after K in a row.

After backward, before clipping, the total gradient norm (of the whole model, also under FSDP: see `grad_norm`)
is computed on the device and handed to fused AdamW as `optimizer.found_inf` (the interface torch's GradScaler
uses): when it is 1 the kernel leaves weights, moments and its step count untouched. The decision never leaves
the device. A NaN or inf loss always gives a non-finite norm, so both are caught. The LR schedule and global_step
still advance, as with GradScaler.

`train/grad_norm` (before clipping) and `train/skipped_steps` (total) are logged like any step metric. The run of
consecutive bad steps is read on the host only every `trainer.log_every_n_steps` optimizer steps, when the logger
reads metrics anyway, so a divergence stops the run up to that many steps late. Skipped steps change no weights,
so any checkpoint written meanwhile still holds the last good ones, and nothing is saved after the stop.
"""

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lm.errors import UserError


def grad_norm(trainer, pl_module) -> torch.Tensor:
    """2-norm of the whole model's gradient, the same on every rank.

    Under DDP every rank holds the whole (all-reduced) gradient. Under FSDP each rank holds a shard of it, so
    the squared norms of the shards are summed across ranks by an all-reduce on the device (no host sync);
    a NaN or inf in any shard then reaches every rank, and every rank skips the step.
    """
    grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(trainer.strategy, FSDPStrategy):
        squared = norm.square()
        torch.distributed.all_reduce(squared)
        norm = squared.sqrt()
    return norm


class NonFiniteGuard(L.Callback):
    def __init__(self, max_consecutive: int = 5):
        """
        Args:
            max_consecutive: Stop the run once this many optimizer steps in a row had a non-finite loss or gradient
                norm (each of them is skipped: no weight update).
        """
        if max_consecutive < 1:
            raise UserError(f"nonfinite.max_consecutive must be ≥ 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = torch.zeros(())  # skipped steps in the whole run
        self.streak = torch.zeros(())  # consecutive skipped steps up to now
        self.longest = torch.zeros(())  # longest streak since the last host check
        self.checked_step = -1

    def on_fit_start(self, trainer, pl_module):
        for optimizer in trainer.optimizers:
            if not getattr(optimizer, "_step_supports_amp_scaling", False):
                raise UserError(
                    f"NonFiniteGuard needs an optimizer that accepts found_inf (fused AdamW), not {type(optimizer)}"
                )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        norm = grad_norm(trainer, pl_module)
        bad = (~norm.isfinite()).float()
        optimizer.found_inf = bad
        self.skipped = self.skipped.to(bad.device) + bad
        self.streak = (self.streak.to(bad.device) + 1) * bad
        self.longest = torch.maximum(self.longest.to(bad.device), self.streak)
        pl_module.log("train/grad_norm", norm)
        pl_module.log("train/skipped_steps", self.skipped)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.checked_step or step % trainer.log_every_n_steps:
            return
        self.checked_step = step
        if self.longest.item() >= self.max_consecutive:
            raise UserError(
                f"training diverged: {self.max_consecutive} optimizer steps in a row (by step {step}) had a non-finite "
                f"loss or gradient norm and were skipped; the weights are those of the last good step and the "
                "checkpoints are intact; lower model.lr, raise model.warmup_steps or set trainer.gradient_clip_val"
            )
        self.longest = self.streak

    def state_dict(self) -> dict:
        return {"skipped_steps": int(self.skipped), "streak": int(self.streak)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = torch.tensor(float(state["skipped_steps"]))
        self.streak = self.longest = torch.tensor(float(state["streak"]))
