"""Validate after the last optimizer step too, so every run ends with the loss of its final weights.

Lightning validates every `val_check_interval` steps only: a run of 212 steps validated every 25 ends with the loss
of step 200, and a WSD run would never be scored after the end of its decay. The last step's loss is what a
scaling ladder fits (lm/scaling.py) and what tokens-to-target compares, so this callback asks for it: it sets the
Trainer's stop flag once the last step is done, and Lightning, asked to stop, validates first (its epoch loop runs
validation whenever it stops early). A run whose last step is a validation step is validated once, as before.

It must come before PreemptionCheckpoint among the callbacks: that one asks Lightning whether a validation follows
the step, which must already see this stop flag.
"""

import lightning as L


class FinalValidation(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps > 0 and trainer.enable_validation:
            trainer.should_stop = True
