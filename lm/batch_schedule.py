"""Batch-size schedule: a global batch that grows during training, by gradient accumulation.

`model.batch_schedule` lists (tokens seen, batch tokens) points; the run starts with `model.batch_tokens` (or the
trainer's accumulation) and takes each point's batch from the first optimizer step that starts at or after its token
count *and* at a multiple of the new batch. The second condition keeps every step's micro-batches together: Lightning
closes an accumulation window when its micro-batch count is a multiple of `trainer.accumulate_grad_batches`, and a
token count that is a multiple of the batch is exactly a micro-batch count that is a multiple of its accumulation
(every micro-batch holds the same tokens). The switch may so come a few steps after the point (at most
new batch / gcd(old, new) − 1 steps); `phases` says where it does, and the run's log prints them. Each batch is a
multiple of the first, so the learning-rate schedule and validation can count steps of the first batch, i.e. tokens,
in whole numbers.

Lightning's GradientAccumulationScheduler is not used: it changes accumulation at epoch starts, and an lm run is
one endless epoch. Everything here is a pure function of the optimizer step (restored on resume), so the schedule
needs no state of its own: a resumed run takes up the same phase at the same step.
"""

import math
from bisect import bisect_right
from typing import NamedTuple

from lm.errors import UserError


class Phase(NamedTuple):
    step: int
    """First optimizer step (0-based) of the phase."""
    tokens: int
    """Tokens seen before that step (all ranks, all micro-batches)."""
    batch_tokens: int
    """Tokens per optimizer step in the phase."""


class BatchSchedule:
    """Which batch each optimizer step takes, and the tokens seen before it."""

    def __init__(self, start_batch: int, points: list[tuple[float, int]], micro_tokens: int):
        """
        Args:
            start_batch: Tokens per optimizer step before the first point.
            points: (tokens seen, batch tokens from then on), token counts increasing.
            micro_tokens: Tokens per micro-batch, all ranks (data.batch_size × data.seq_len × world size); it divides
                start_batch, so every batch (a multiple of start_batch) is a whole number of micro-batches.
        """
        self.micro_tokens = micro_tokens
        counts = [tokens for tokens, _ in points]
        if any(b <= a for a, b in zip(counts, counts[1:])) or any(tokens <= 0 for tokens in counts):
            raise UserError(
                f"model.batch_schedule token counts must be positive and increasing, got {counts} (the first batch is "
                "model.batch_tokens)"
            )
        for _, batch in points:
            if batch <= 0 or batch % start_batch:
                raise UserError(
                    f"model.batch_schedule batch {batch} is not a multiple of the first batch ({start_batch} tokens: "
                    "model.batch_tokens, or data.batch_size × data.seq_len × accumulation × world size): the "
                    "learning-rate schedule and validation count steps of the first batch"
                )
        self.phases = [Phase(0, 0, start_batch)]
        for tokens, batch in points:
            last = self.phases[-1]
            steps = max(math.ceil((tokens - last.tokens) / last.batch_tokens), 0)  # 0: a point passed already
            while (last.tokens + steps * last.batch_tokens) % batch:  # at most batch / gcd(batch, last) - 1 more
                steps += 1
            self.phases.append(Phase(last.step + steps, last.tokens + steps * last.batch_tokens, batch))

    def phase(self, step: int) -> Phase:
        return self.phases[bisect_right([p.step for p in self.phases], step) - 1]

    def tokens_at(self, step: int) -> int:
        """Tokens seen before optimizer step `step` (0-based), i.e. after `step` steps."""
        phase = self.phase(step)
        return phase.tokens + (step - phase.step) * phase.batch_tokens

    def accumulation(self, step: int) -> int:
        """Micro-batches per rank of optimizer step `step`."""
        return self.phase(step).batch_tokens // self.micro_tokens

    def steps_for(self, tokens: float) -> int:
        """The fewest optimizer steps that see at least `tokens` tokens."""
        phase = self.phases[bisect_right([p.tokens for p in self.phases], tokens) - 1]
        return phase.step + max(math.ceil((tokens - phase.tokens) / phase.batch_tokens), 0)

    def steps_of_first_batch(self, step: int) -> int:
        """Optimizer steps of the first phase's batch that would see the tokens seen before step `step`: the clock
        the learning-rate schedule runs on, so its warmup and decay follow tokens, not steps of varying size."""
        return self.tokens_at(step) // self.phases[0].batch_tokens

    def validation_multiple(self) -> int:
        """What an integer val_check_interval (counted in steps of the first batch) must be a multiple of, so every
        validation falls between two optimizer steps of any phase."""
        return math.lcm(*(p.batch_tokens // self.phases[0].batch_tokens for p in self.phases))

    def as_list(self) -> list[list[int]]:
        """The phases as [step, tokens, batch_tokens] lists: what a checkpoint stores and a resume compares."""
        return [list(phase) for phase in self.phases]
