"""Skip optimizer steps whose gradients are not finite, with no host sync per step; stop after K in a row.

After backward, before clipping, the total gradient norm (of the whole model, also under FSDP: see `grad_norm`)
is computed on the device and handed to fused AdamW as `optimizer.found_inf` (the interface torch's GradScaler
uses): when it is 1 the kernel leaves weights, moments and its step count untouched. The decision never leaves
the device. A NaN or inf loss always gives a non-finite norm, so both are caught. The LR schedule and global_step
still advance, as with GradScaler. The norm is also left on the optimizer as `optimizer.grad_norm`, which gradient
clipping then uses instead of computing it a second time.

Under `16-mixed` torch's GradScaler skips the step itself (and halves its scale): the guard sets no `found_inf`
then (unfused AdamW refuses one), only measures the unscaled gradients, counts and stops. Lightning unscales
before this hook for every optimizer except those that unscale inside their step (fused AdamW); for those the
guard unscales first (GradScaler.unscale_, on the device), so the norm, the logged value and clipping see the true
gradients, and the scaler's step knows they are unscaled. The scaler's own back-off steps at the start of a run
count as skipped steps too.

`train/grad_norm` (before clipping) and `train/skipped_steps` (total) are logged at the steps the logger writes.
Each step only writes its skip flag into a small device buffer (one slot per step of a logging interval); the
buffer is read on the host every `trainer.log_every_n_steps` optimizer steps, when the logger reads metrics anyway,
to count skipped steps and runs of them, so a divergence stops the run up to that many steps late. Skipped steps
change no weights, so any checkpoint written meanwhile still holds the last good ones, and nothing is saved after
the stop.
"""

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lm.errors import UserError


def grad_norm(trainer, optimizer) -> torch.Tensor:
    """2-norm of the gradient of everything `optimizer` updates, the same on every rank.

    Under DDP every rank holds the whole (all-reduced) gradient. Under FSDP each rank holds a shard of it, so
    the squared norms of the shards are summed across ranks by an all-reduce on the device (no host sync);
    a NaN or inf in any shard then reaches every rank, and every rank skips the step.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
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
        self.skipped = 0  # skipped steps in the whole run, up to the last check
        self.streak = 0  # consecutive skipped steps at the last check
        self.recent: torch.Tensor | None = None  # 1.0 for each skipped step since the last check, on the device
        self.restored: list[float] = []  # `recent` of a checkpoint, until the device is known
        self.checked_step = -1
        self.scaler: torch.amp.GradScaler | None = None  # 16-mixed's, which then decides the skip

    def on_fit_start(self, trainer, pl_module):
        self.scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.scaler is not None:
            return  # 16-mixed: its GradScaler skips non-finite steps itself; the guard counts them and stops the run
        for optimizer in trainer.optimizers:
            fused = getattr(optimizer, "_step_supports_amp_scaling", False)
            if not (fused or getattr(optimizer, "accepts_found_inf", False)):
                raise UserError(
                    f"NonFiniteGuard needs an optimizer that accepts found_inf (fused AdamW, lm.optim.MuonAdamW), not "
                    f"{type(optimizer).__name__}"
                )

    def on_train_start(self, trainer, pl_module):
        # One slot per optimizer step of a logging interval: step s writes slot s % log_every_n_steps.
        self.recent = torch.zeros(trainer.log_every_n_steps, device=pl_module.device)
        self.recent[: len(self.restored)] = torch.tensor(self.restored[: trainer.log_every_n_steps])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            self.scaler.unscale_(optimizer)  # fused AdamW under 16-mixed: Lightning left its gradients scaled
        norm = grad_norm(trainer, optimizer)
        bad = norm.isfinite().logical_not_().float()
        if self.scaler is None:
            optimizer.found_inf = bad
        optimizer.grad_norm = norm  # gradient clipping uses it (LanguageModel.configure_gradient_clipping)
        self.recent[trainer.global_step % len(self.recent)] = bad
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # the steps the logger writes (self.log costs)
            pl_module.log_dict({"train/grad_norm": norm, "train/skipped_steps": self.skipped + self.recent.sum()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.checked_step or step % trainer.log_every_n_steps:
            return
        self.checked_step = step
        for flag in self.recent.tolist():  # read on the host at logging steps only, where the logger reads anyway
            self.skipped += int(flag)
            self.streak = self.streak + 1 if flag else 0
            if self.streak >= self.max_consecutive:
                raise UserError(
                    f"training diverged: {self.max_consecutive} optimizer steps in a row (by step {step}) had a "
                    "non-finite loss or gradient norm and were skipped; the weights are those of the last good step "
                    "and the checkpoints are intact; lower model.optim.lr, raise model.optim.warmup_steps or set "
                    "trainer.gradient_clip_val"
                )
        self.recent.zero_()

    def state_dict(self) -> dict:
        recent = self.recent.tolist() if self.recent is not None else self.restored
        return {"skipped_steps": self.skipped, "streak": self.streak, "recent": recent}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.streak = int(state["skipped_steps"]), int(state["streak"])
        self.restored = state.get("recent", [])
