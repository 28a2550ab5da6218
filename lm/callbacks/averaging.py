"""An exponential moving average (EMA) of the weights: validated beside them, saved with them, resumed exactly.

Averaging the weights over the end of training lowers the loss at no cost in steps (Polyak averaging; the
GPT-2 speedrun's tail EMA, OLMo's and nanochat's checkpoint averaging). From optimizer step `start_step` on, after
every optimizer step: average ← average + (1 − d) · (weights − average), one `torch._foreach_lerp_` over the
parameters on the device. The decay warms up, d = min(decay, (1 + t) / (10 + t)) at the t-th update after the copy
that starts the average, so an average started late is not dominated by the weights it started from.

Design choices:
- The average is a second GPT (a copy of the model) that is never trained. Validation runs it beside the trained
  model on the same batches and logs `val/ema/loss`, ppl and bpb: nothing is swapped in and out of the trained
  model, so a checkpoint saved after a validation always holds the trained weights in `state_dict`. Before
  `start_step` the average *is* the weights (val/ema equals val), so `checkpoint.monitor: val/ema/loss` works
  from the first validation.
- Checkpoints hold the average under `averaged_weights` (lm.checkpoint.AVERAGED): its GPT state dict and its
  update count (which sets the decay's warm-up) and step; a resumed run continues it exactly.
  `lm.checkpoint.load_model(path, weights="ema")` and `--weights ema` (validate, test, generate, eval, hellaswag,
  export) use it.
- Written by hand rather than with torch.optim.swa_utils.AveragedModel: that reads its update count on the host at
  every update (`n_averaged == 0`, a sync per step), copies the whole LightningModule, and its EMA function
  (`get_ema_multi_avg_fn`) has a fixed decay. What it computes is the same lerp.
- Costs: one fp32 copy of the weights in device memory, one lerp of the weights per step (memory-bound: the
  weights are read twice and written once), and the validation forward passes twice (docs/performance.md).
  Under FSDP each rank holds a shard of every weight: refused in one line.
"""

import copy

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lm.checkpoint import AVERAGED, load_weights
from lm.errors import UserError
from lm.model import GPT


class ExponentialMovingAverage(L.Callback):
    def __init__(self, start_step: int | None = None, decay: float = 0.999):
        """
        Args:
            start_step: Average the weights from this optimizer step on (the average starts as a copy of the weights
                after it). null: no averaging (the default).
            decay: The average's decay per step once warmed up: it spans about 1 / (1 − decay) steps.
        """
        if start_step is not None and start_step < 0:
            raise UserError(f"ema.start_step must be ≥ 0, got {start_step}")
        if not 0 <= decay < 1:
            raise UserError(f"ema.decay must be in [0, 1), got {decay}")
        self.start_step, self.decay = start_step, decay
        self.average: GPT | None = None  # created at the first update (or from a checkpoint)
        self.updates = 0  # updates of the average so far, its copy included
        self.step = -1  # the optimizer step of the last update
        self.metrics: torch.nn.ModuleDict | None = None  # the average's validation metrics, while validating

    @property
    def enabled(self) -> bool:
        return self.start_step is not None

    def decay_at(self, updates: int) -> float:
        """The decay of the update after `updates` updates: warmed up, min(decay, (1 + t) / (10 + t))."""
        return min(self.decay, (1 + updates) / (10 + updates))

    def setup(self, trainer, pl_module, stage):
        if stage == "fit" and isinstance(trainer.strategy, FSDPStrategy):
            raise UserError(
                "ema (weight averaging) cannot run under FSDP, where each rank holds a shard of every weight: use DDP "
                "(configs/trainer/ddp.yaml) or unset ema.start_step"
            )

    def on_train_start(self, trainer, pl_module):
        if self.average is not None:  # restored from a checkpoint before the Trainer moved the model to its device
            self.average.to(pl_module.device)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps done: the same for every micro-batch of an accumulation window
        if not self.enabled or step < self.start_step or step == self.step:
            return
        if self.average is None:
            self.average = copy.deepcopy(pl_module.model).eval().requires_grad_(False)
            for p in self.average.parameters():
                p.grad = None
        else:
            weight = 1 - self.decay_at(self.updates)  # a Python number: no host read
            torch._foreach_lerp_(list(self.average.parameters()), list(pl_module.model.parameters()), weight)
        self.updates, self.step = self.updates + 1, step

    # ---- validation: the average beside the trained weights ------------------------------------------

    def on_validation_epoch_start(self, trainer, pl_module):
        if self.average is not None:
            self.average.to(pl_module.device)
        self.metrics = copy.deepcopy(pl_module.val_metrics)  # reset after every validation: fresh sums

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with trainer.precision_plugin.val_step_context():  # the autocast validation_step ran under
            average = pl_module.model if self.average is None else self.average  # before start_step: the weights
            pl_module.update_val_metrics(self.metrics, average, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log_val_metrics(self.metrics, "val/ema")
        self.metrics = None

    # ---- checkpoints ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.average is not None:
            state = {"state_dict": self.average.state_dict(), "updates": self.updates, "step": self.step}
            checkpoint[AVERAGED] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        saved = checkpoint.get(AVERAGED)
        if saved is None:  # a checkpoint from before start_step (or of a run without averaging)
            self.average, self.updates, self.step = None, 0, -1
            return
        self.average = copy.deepcopy(pl_module.model).eval().requires_grad_(False)
        load_weights(self.average, saved["state_dict"], f"the averaged weights ({AVERAGED}) of the checkpoint")
        self.updates, self.step = int(saved["updates"]), int(saved["step"])
