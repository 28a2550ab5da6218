"""Grows the sliding window of the "S" layers during training, as the GPT-2 speedrun does: short windows while
the model learns local statistics (cheaper steps), the configured `model.config.sliding_window` later.

Design choices:
- The window is a function of the optimizer step only, so a resumed run (any world size) continues with exactly
  the window it would have had: the callback keeps no state.
- The window grows in a few stages, not every step: each size is one torch.compile recompilation (the windows
  are Python ints the compiled graph specialises on), and torch.compile's default recompile limit is 8 graphs.
- Validation during training uses the current window; a checkpoint rebuilt by another command (validate,
  generate, export, ...) uses `model.config.sliding_window`, the size the schedule ends at.
"""

import lightning as L

from lm.errors import UserError


class SlidingWindowSchedule(L.Callback):
    def __init__(self, start: int, share: float = 0.5, stages: int = 4):
        """
        Args:
            start: The S layers' window (tokens, the query included) at step 0.
            share: Share of trainer.max_steps over which the window grows to model.config.sliding_window.
            stages: Number of increases: the window goes from `start` to the configured size in `stages` equal
                steps, at equal intervals (at most 7: each size compiles once under torch.compile).
        """
        if start <= 0 or not 0 < share <= 1 or not 1 <= stages <= 7:
            raise UserError(
                f"SlidingWindowSchedule needs start > 0, 0 < share ≤ 1 and 1 ≤ stages ≤ 7; got start={start}, "
                f"share={share}, stages={stages}"
            )
        self.start, self.share, self.stages = start, share, stages

    def window(self, step: int, max_steps: int, final: int) -> int:
        """The S layers' window at optimizer step `step` (0-based) of a run of `max_steps`."""
        stage = min(int(step * self.stages / (self.share * max_steps)), self.stages)
        return self.start + (final - self.start) * stage // self.stages

    def setup(self, trainer, pl_module, stage):
        final = pl_module.config.sliding_window
        if stage == "fit" and (final is None or self.start > final):
            raise UserError(
                f"SlidingWindowSchedule(start={self.start}) grows model.config.sliding_window ({final}): set a "
                "window_pattern with S layers and a sliding_window no smaller than start"
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        config = pl_module.config
        windows = config.layer_windows(self.window(trainer.global_step, trainer.max_steps, config.sliding_window))
        if windows != pl_module.model.layer_windows:  # a few times a run: each change recompiles a compiled model
            pl_module.model.layer_windows = windows
