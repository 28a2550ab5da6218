"""Preemption: on SIGTERM (or SIGUSR1, SLURM's advance warning) save last.ckpt and exit with code 75.

Lightning already turns SIGTERM into a `SIGTERMException` at the end of the current step (after the optimizer
step and any validation due then), a clean step boundary; this callback saves that state as last.ckpt, where
`--ckpt_path last` finds it, and `lm.train` exits with EXIT_PREEMPTED = 75 (sysexits' EX_TEMPFAIL, "try again
later"), which a job script can tell apart from a failure (1) or a kill (128 + signal).

SIGUSR1: under SLURM with auto-requeue (Lightning's SLURMEnvironment default) Lightning owns SIGUSR1: it saves
hpc_ckpt_<n>.ckpt and runs `scontrol requeue`; SLURM then sends SIGTERM, which lands here. Without SLURM (or
with auto_requeue off) SIGUSR1 has no handler, and this callback makes it act as SIGTERM, so
`#SBATCH --signal=USR1@90` works with any launcher. A signal before training starts (setup, restore) still
ends the process the default way; the previous last.ckpt is untouched.
"""

import os
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_PREEMPTED = os.EX_TEMPFAIL  # 75


def as_sigterm(signum, frame) -> None:
    signal.raise_signal(signal.SIGTERM)


class PreemptionCheckpoint(L.Callback):
    """Saves last.ckpt when the run is stopped by SIGTERM/SIGUSR1 (see the module docstring)."""

    def on_train_start(self, trainer, pl_module):
        # The Trainer registered its handlers (SIGTERM; SIGUSR1 only for SLURM auto-requeue) just before this hook.
        free = signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
        if free and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, as_sigterm)  # the Trainer restores the old handler at teardown

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            rank_zero_warn("preempted, but there is no ModelCheckpoint to say where last.ckpt goes: nothing saved")
            return
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"preempted at step {trainer.global_step}: saved {path}; continue with --ckpt_path last")
