"""The learning-rate schedule: linear warmup, then cosine, WSD or constant, in units of `model.optim.lr`.

The scheduler multiplies every parameter group's initial rate by lr_at(step) / optim.lr, so Muon's rate follows the
same curve scaled by muon.lr / optim.lr.
"""

import math

from lm.errors import UserError
from lm.optim.config import OptimConfig


def lr_at(optim: OptimConfig, step: int, max_steps: int, last: int | None = None) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then the chosen decay, which reaches
    min_lr at the last step of the run, `last` (default max_steps - 1; under a batch schedule, where steps are
    counted in steps of the first batch, the last step's count)."""
    last = max_steps - 1 if last is None else last
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.lr_schedule == "constant":
        return optim.lr
    if optim.lr_schedule == "wsd":
        decay_steps = wsd_decay_steps(optim, max_steps)
        progress = (step - (last - decay_steps)) / decay_steps  # 1/decay_steps at the first decay step
        return optim.lr + min(max(progress, 0.0), 1.0) * (optim.min_lr - optim.lr)
    progress = min((step - optim.warmup_steps) / max(last - optim.warmup_steps, 1), 1.0)
    return optim.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def wsd_decay_steps(optim: OptimConfig, max_steps: int) -> int:
    """Steps of the WSD decay: the last decay_fraction of the run, at least one."""
    return max(int(optim.decay_fraction * max_steps), 1)


def check_warmup(optim: OptimConfig, max_steps: int) -> None:
    """Refuses a WSD warmup that would run into the decay (max_steps counted as lr_at counts them)."""
    if optim.lr_schedule == "wsd" and optim.warmup_steps > max_steps - wsd_decay_steps(optim, max_steps):
        raise UserError(
            f"model.optim.warmup_steps ({optim.warmup_steps}) runs into the WSD decay, which starts at step "
            f"{max_steps - wsd_decay_steps(optim, max_steps)} (the last model.optim.decay_fraction = "
            f"{optim.decay_fraction} of {max_steps} steps): lower warmup_steps or decay_fraction"
        )
