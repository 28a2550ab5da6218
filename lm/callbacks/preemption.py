"""Preemption: on SIGTERM (or SIGUSR1, SLURM's advance warning) finish the optimizer step, save last.ckpt, exit 75.

Lightning turns SIGTERM into a `SIGTERMException` after whichever micro-batch is running. With gradient
accumulation that can be the middle of a window: the checkpoint would count the window's first micro-batches as
consumed while their gradients are lost, and the resumed run would take its first step from fewer micro-batches.
So this callback takes the signal first and passes it on to Lightning only when the window ends, after its
optimizer step (and after a validation due at that step): last.ckpt is then an exact step boundary and
`--ckpt_path last` continues bit-identically (on CPU: tested with accumulation 4, signalled at the second
micro-batch of a window). The wait is at most one optimizer step. Under DDP the ranks decide together at the end of
each step (one all-reduce of a flag per step; Lightning itself broadcasts its flag at every micro-batch), so all
stop after the same step. `lm.train` then exits with EXIT_PREEMPTED = 75 (sysexits' EX_TEMPFAIL, "try again
later"), which a job script can tell apart from a failure (1) or a kill (128 + signal).

SIGUSR1: under SLURM with auto-requeue (Lightning's SLURMEnvironment default) Lightning owns SIGUSR1: it saves
hpc_ckpt_<n>.ckpt and runs `scontrol requeue`; SLURM then sends SIGTERM, which lands here. Without SLURM (or
with auto_requeue off) SIGUSR1 has no handler, and this callback makes it act as SIGTERM, so
`#SBATCH --signal=USR1@90` works with any launcher. A signal before training starts (setup, restore, the sanity
check) still ends the process the default way; the previous last.ckpt is untouched.
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
    """Stops a run at the end of the optimizer step during which SIGTERM/SIGUSR1 came, and saves last.ckpt there."""

    def __init__(self):
        self.trainer = None
        self.lightning_sigterm = None  # the Trainer's SIGTERM handler, called once the step is complete
        self.stop_requested = False
        self.step_at_batch_start = 0

    def on_train_start(self, trainer, pl_module):
        # The Trainer registered its handlers (SIGTERM; SIGUSR1 only for SLURM auto-requeue) just before this hook,
        # and restores the ones it found at teardown.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, as_sigterm)
        self.trainer, self.stop_requested = trainer, False
        self.lightning_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self.request_stop)

    def request_stop(self, signum, frame) -> None:
        launcher = self.trainer.strategy.launcher
        if not self.stop_requested and launcher is not None:
            launcher.kill(signum)  # the ranks this process started get the signal now, as Lightning would do
        self.stop_requested = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.lightning_sigterm is None or trainer.global_step == self.step_at_batch_start:
            return  # not ours to handle, or inside an accumulation window: its optimizer step is still to come
        stop = self.stop_requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and callable(self.lightning_sigterm):
            self.lightning_sigterm(signal.SIGTERM, None)  # Lightning raises SIGTERMException at the end of this batch

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            rank_zero_warn("preempted, but there is no ModelCheckpoint to say where last.ckpt goes: nothing saved")
            return
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # the whole state, as ModelCheckpoint saves it
        rank_zero_info(f"preempted at step {trainer.global_step}: saved {path}; continue with --ckpt_path last")
