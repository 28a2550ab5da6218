"""Loss spikes: a step whose loss is `threshold` standard deviations above its running mean is logged, and can be
skipped like a non-finite one; no host sync per step.

Large runs see sudden loss spikes that a model may or may not recover from; PaLM restarted from before a spike and
skipped the batches around it, later codebases skip the update of a step whose loss (or gradient norm) is an
outlier. Here each optimizer step's loss (the mean over its micro-batches, and under DDP/FSDP over the ranks: every
rank decides the same) is compared on the device with an exponentially weighted running mean and variance of the
losses before it (weight `beta` per step, so about 1 / (1 − beta) steps; initialized from the first step, detection
from `warmup_steps` on, while early training's fast-falling loss has settled). With `skip`, a spike is folded into
the optimizer's `found_inf` flag that lm.callbacks.nonfinite.NonFiniteGuard sets just before (this callback runs
after it): the optimizer leaves weights and moments untouched, as for a non-finite step. Every finite loss enters the
statistics, spikes included, so a lasting shift of the loss level (a new data mixture) is absorbed after a few
steps instead of being skipped for ever.

Each step writes (spike, loss, mean, std) into a small device buffer; at the steps the logger writes the buffer is
read on the host once: each spike is printed with its step, and `train/loss_spikes` (total) is logged. The running
statistics and the buffer are in the checkpoint, so a resumed run detects exactly what an uninterrupted one would.
"""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lm.callbacks.nonfinite import NonFiniteGuard
from lm.errors import UserError


class LossSpikeDetector(L.Callback):
    def __init__(self, threshold: float | None = None, skip: bool = False, beta: float = 0.99, warmup_steps: int = 100):
        """
        Args:
            threshold: A step is a spike when its loss exceeds the running mean by this many running standard
                deviations (e.g. 6). null: off (the default).
            skip: Skip the optimizer update of a spike (weights and optimizer state untouched), as for a non-finite
                step; otherwise spikes are only logged.
            beta: Weight of the past in the running mean and variance, per step.
            warmup_steps: Steps that only feed the statistics before detection starts.
        """
        if threshold is not None and threshold <= 0:
            raise UserError(f"spikes.threshold must be > 0, got {threshold}")
        if not 0 < beta < 1:
            raise UserError(f"spikes.beta must be in (0, 1), got {beta}")
        self.threshold, self.skip, self.beta, self.warmup_steps = threshold, skip, beta, warmup_steps
        self.seen = 0  # optimizer steps whose loss was observed
        self.spikes = 0  # spikes in the whole run, up to the last check
        self.stats = torch.zeros(2)  # running mean and variance of the loss, on the device once training starts
        self.recent = torch.zeros(0, 4)  # (spike, loss, mean, std) of each step since the last check
        self.loss = torch.zeros(())  # sum of this step's micro-batch losses (each already divided by the accumulation)
        self.checked_step = -1

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def on_fit_start(self, trainer, pl_module):
        if not self.skip:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise UserError(
                "spikes.skip cannot run under 16-mixed precision (its GradScaler decides the skips): use "
                "bf16-mixed, or spikes.skip false"
            )
        position = trainer.callbacks.index(self)
        if not any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks[:position]):
            raise UserError(
                "spikes.skip needs the non-finite guard (lm.callbacks.nonfinite.NonFiniteGuard) before it "
                "among the callbacks: it sets the optimizer's found_inf flag that a spike is added to"
            )

    def on_train_start(self, trainer, pl_module):
        device = pl_module.device
        restored = self.recent.to(device)
        self.recent = torch.zeros(trainer.log_every_n_steps, 4, device=device)  # step s writes row s % interval
        self.recent[: len(restored)] = restored[: trainer.log_every_n_steps]
        self.stats, self.loss = self.stats.to(device), self.loss.to(device)

    def on_before_backward(self, trainer, pl_module, loss):
        self.loss += loss.detach()

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.enabled:
            return
        loss = trainer.strategy.reduce(self.loss.clone(), reduce_op="mean")  # the same on every rank
        self.loss.zero_()
        mean, var = self.stats.unbind()
        std = var.sqrt()
        spike = (loss - mean > self.threshold * std) if self.seen >= self.warmup_steps else torch.zeros_like(loss)
        spike = spike.float()
        if self.seen == 0:  # the first loss starts the statistics
            updated = torch.stack([loss, torch.zeros_like(loss)])
        else:
            delta = loss - mean
            updated = torch.stack([mean + (1 - self.beta) * delta, self.beta * (var + (1 - self.beta) * delta**2)])
        self.stats = torch.where(loss.isfinite(), updated, self.stats)  # a non-finite loss is NonFiniteGuard's
        self.seen += 1
        self.recent[trainer.global_step % len(self.recent)] = torch.stack([spike, loss, mean, std])
        if self.skip:
            optimizer.found_inf = torch.maximum(optimizer.found_inf, spike)
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # the steps the logger writes
            pl_module.log("train/loss_spikes", self.spikes + self.recent[:, 0].sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not self.enabled or step == self.checked_step or step % trainer.log_every_n_steps:
            return
        self.checked_step = step
        for row, (flag, loss, mean, std) in enumerate(self.recent.tolist()):  # one host read, at a logging step
            if flag:
                self.spikes += 1
                at = step - len(self.recent) + row + 1  # row r: the step made from global_step step − interval + r
                action = "skipped" if self.skip else "kept"
                rank_zero_warn(
                    f"loss spike at step {at}: {loss:.4f} against a running mean of {mean:.4f} ± {std:.4f} "
                    f"(spikes.threshold {self.threshold}); its update was {action}"
                )
        self.recent.zero_()

    def state_dict(self) -> dict:
        return {"stats": self.stats, "seen": self.seen, "spikes": self.spikes, "recent": self.recent}

    def load_state_dict(self, state: dict) -> None:
        self.stats, self.recent = state["stats"].float(), state["recent"].float()
        self.seen, self.spikes = int(state["seen"]), int(state["spikes"])
