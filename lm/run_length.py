"""How many tokens each optimizer step of a fit takes, and how many steps it makes.

LanguageModel.setup resolves it once the trainer and the data are known, before any compute:
- the global batch: `model.batch_tokens` sets the trainer's gradient accumulation from the micro-batch and the world
  size (so a config keeps its optimisation on any number of GPUs), and `model.batch_schedule` grows it by phases
  (lm.batch_schedule); without either it is data.batch_size × data.seq_len × accumulation × world size;
- the length: trainer.max_steps, or a token budget (from `model.max_tokens`, `tokens_per_param` or `max_flops`)
  turned into the fewest steps that see it.
The token counts logged and checkpointed, the learning-rate schedule's clock and the checks on resume read it.
"""

from lightning.pytorch.utilities import rank_zero_info

from lm.batch_schedule import BatchSchedule
from lm.errors import UserError


class RunLength:
    """A fit's batch phases (one, without `model.batch_schedule`) and what follows from them."""

    def __init__(self, schedule: BatchSchedule, scheduled: bool):
        self.schedule = schedule
        self.scheduled = scheduled  # model.batch_schedule was given: accumulation changes during the run

    @classmethod
    def resolve(cls, trainer, data, batch_tokens: int | None, batch_schedule: list | None) -> "RunLength":
        """Sets the trainer's accumulation (from `batch_tokens`) and counts an integer val_check_interval in
        micro-batches, as Lightning does, from lm's optimizer steps (of the first batch, under a schedule)."""
        micro_tokens = data.batch_size * data.seq_len * trainer.world_size
        if batch_tokens is not None:
            trainer.accumulate_grad_batches = accumulation_for(batch_tokens, data, trainer)
        run = cls(
            BatchSchedule(micro_tokens * trainer.accumulate_grad_batches, batch_schedule or [], micro_tokens),
            scheduled=bool(batch_schedule),
        )
        interval = trainer.val_check_interval
        if isinstance(interval, int):
            multiple = run.schedule.validation_multiple()
            if interval % multiple:
                raise UserError(
                    f"trainer.val_check_interval ({interval}) must be a multiple of {multiple} under "
                    "model.batch_schedule: it counts steps of the first batch, and validation must fall between two "
                    "optimizer steps of every later batch"
                )
            # In lm an integer val_check_interval counts optimizer steps, whatever the accumulation, so a config
            # validates at the same steps on any number of GPUs.
            trainer.val_check_interval = interval * trainer.accumulate_grad_batches
        return run

    @property
    def tokens_per_step(self) -> int:
        """Tokens of an optimizer step (of the first batch, under a schedule)."""
        return self.schedule.phases[0].batch_tokens

    def tokens_seen(self, step: int) -> int:
        """Tokens trained on in the first `step` optimizer steps (all ranks, all micro-batches)."""
        return self.schedule.tokens_at(step)

    def accumulation(self, step: int) -> int:
        """Micro-batches per rank of optimizer step `step`."""
        return self.schedule.accumulation(step)

    def lr_clock(self, step: int) -> int:
        """The learning-rate schedule's count of the first `step` optimizer steps: `step` itself, or under a batch
        schedule the steps of the first batch that see as many tokens, so warmup and decay follow tokens."""
        return self.schedule.steps_of_first_batch(step)

    def set_max_steps(self, trainer, budget_tokens: float | None) -> int:
        """trainer.max_steps from a token budget (the fewest steps that see it), or as set; returns it."""
        if budget_tokens is not None:
            if trainer.max_steps != -1:
                raise UserError(
                    "set either trainer.max_steps or a token budget (model.max_tokens / "
                    "model.tokens_per_param / model.max_flops), not both"
                )
            # the epoch loop's: the fit loop's max_steps is a read-only view of it (Lightning 2.6)
            trainer.fit_loop.epoch_loop.max_steps = self.schedule.steps_for(budget_tokens)
        elif trainer.max_steps == -1:
            raise UserError(
                "no training length: set trainer.max_steps or a budget (model.max_tokens / model.tokens_per_param / "
                "model.max_flops)"
            )
        if self.scheduled:
            rank_zero_info(
                "batch schedule (first step, tokens seen, batch tokens): "
                + ", ".join(f"({p.step:,}, {p.tokens:,}, {p.batch_tokens:,})" for p in self.schedule.phases)
            )
        return trainer.max_steps

    def checkpoint_state(self) -> dict:
        """What a checkpoint stores of it, for the token counts of its readers and the check on resume."""
        phases = {"batch_schedule": self.schedule.as_list()} if self.scheduled else {}
        return {"tokens_per_step": self.tokens_per_step, **phases}

    def check_resume(self, checkpoint: dict, world_size: int) -> None:
        """Refuses a checkpoint whose global batch or batch schedule this run would not keep: steps, tokens seen, the
        schedule and the data position would no longer agree. Another world size with the same global batch is fine."""
        saved = checkpoint.get("tokens_per_step")
        if saved and saved != self.tokens_per_step:
            raise UserError(
                f"the checkpoint was trained with {saved:,} tokens per optimizer step, this run would make "
                f"{self.tokens_per_step:,} (data.batch_size × data.seq_len × accumulation × world size "
                f"{world_size}); schedule, budget and data position assume one global batch: set "
                f"model.batch_tokens={saved} so accumulation adapts to this world size, or start a new run from "
                "these weights with model.init_from"
            )
        phases = self.schedule.as_list() if self.scheduled else None
        if checkpoint.get("batch_schedule") != phases:
            raise UserError(
                f"the checkpoint's batch schedule (phases as [first step, tokens, batch tokens]: "
                f"{checkpoint.get('batch_schedule')}) differs from this run's ({phases}): steps, tokens seen and the "
                "data position would no longer agree; restore model.batch_schedule, or start a new run from these "
                "weights with model.init_from"
            )


def accumulation_for(batch_tokens: int, data, trainer) -> int:
    """Micro-batches per rank that make a global batch of `batch_tokens`."""
    per_micro_step = data.batch_size * data.seq_len * trainer.world_size
    accumulate, remainder = divmod(batch_tokens, per_micro_step)
    if remainder or not accumulate:
        raise UserError(
            f"model.batch_tokens ({batch_tokens}) is not a multiple of data.batch_size × data.seq_len "
            f"× world size ({data.batch_size} × {data.seq_len} × {trainer.world_size} = {per_micro_step}); "
            "change the micro-batch or the global batch"
        )
    if trainer.accumulate_grad_batches not in (1, accumulate):
        raise UserError("set either trainer.accumulate_grad_batches or model.batch_tokens, not both")
    return accumulate
