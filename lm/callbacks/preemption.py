"""Preemption and Ctrl-C: on SIGTERM, SIGUSR1 (SLURM's advance warning) or a first SIGINT finish the optimizer
step, save last.ckpt, exit 75; a second SIGINT aborts at once.

Lightning turns SIGTERM into a `SIGTERMException` after whichever micro-batch is running. With gradient
accumulation that can be the middle of a window: the checkpoint would count the window's first micro-batches as
consumed while their gradients are lost, and the resumed run would take its first step from fewer micro-batches.
So this callback takes the signal first and passes it on to Lightning only when the window ends, after its
optimizer step: last.ckpt is then an exact step boundary and `--ckpt_path last` continues bit-identically (on CPU:
tested with accumulation 4, signalled at every micro-batch of a window). A validation due at that step runs first,
whole: Lightning's validation loop stops at its next batch once the Trainer has the signal, and the resumed run
would not repeat it, so the signal is passed on after the validation (a signal that comes during a validation, too).
The wait is at most the rest of one optimizer step and one validation. Under DDP the ranks decide together at the
end of each step or validation (one all-reduce of a flag; Lightning itself broadcasts its flag at every
micro-batch), so all stop after the same step. `lm.train` then exits with EXIT_PREEMPTED = 75 (sysexits'
EX_TEMPFAIL, "try again later"), which a job script can tell apart from a failure (1) or a kill (128 + signal).

SIGUSR1: under SLURM with auto-requeue (Lightning's SLURMEnvironment default) Lightning owns SIGUSR1: it saves
hpc_ckpt_<n>.ckpt and runs `scontrol requeue`; SLURM then sends SIGTERM, which lands here. Without SLURM (or
with auto_requeue off) SIGUSR1 has no handler, and this callback makes it act as SIGTERM, so
`#SBATCH --signal=USR1@90` works with any launcher.

Ctrl-C (SIGINT): Lightning would stop at once with "attempting graceful shutdown", exit 1 and keep the last
checkpoint of a validation, with the steps since lost. The first Ctrl-C here is a preemption (it says so at once,
on stderr, and saves as above); it puts Python's handler back, so a second one raises KeyboardInterrupt and the run
stops where it is, saying which step the newest checkpoint holds. A process that ignores SIGINT (started with `&`
from a script) keeps ignoring it. A signal before training starts (setup, restore, the sanity check) still ends
the process the default way; the previous last.ckpt is untouched.
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


def validation_follows(trainer) -> bool:
    """Whether Lightning validates after the training batch that just ended. Lightning decides it right after
    on_train_batch_end with this (private) test, which this asks with the same loop state."""
    fit_loop = trainer.fit_loop
    return trainer.enable_validation and fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher)


class PreemptionCheckpoint(L.Callback):
    """Stops a run at the end of the optimizer step during which SIGTERM/SIGUSR1/SIGINT came (after its validation),
    and saves last.ckpt there."""

    def __init__(self):
        self.trainer = None
        self.lightning_sigterm = None  # the Trainer's SIGTERM handler, called once the step is complete
        self.stop_requested: str | None = None  # what asked to stop: "preempted" or "interrupted (Ctrl-C)"
        self.step_at_batch_start = 0
        self.saved_step: int | None = None  # the step the newest checkpoint holds, for a second Ctrl-C's line
        self.replaced: dict[int, object] = {}  # signal -> the handler this callback replaced

    def on_train_start(self, trainer, pl_module):
        # The Trainer registered its handlers (SIGTERM; SIGUSR1 only for SLURM auto-requeue) just before this hook,
        # and restores the ones it found at teardown.
        if threading.current_thread() is not threading.main_thread():
            return
        self.trainer, self.stop_requested = trainer, None
        self.saved_step = trainer.global_step if trainer.ckpt_path else None
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self.replaced[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, as_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.replaced[signal.SIGINT] = signal.signal(signal.SIGINT, self.first_ctrl_c)
        self.lightning_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self.request_stop)

    def request_stop(self, signum, frame) -> None:
        launcher = self.trainer.strategy.launcher
        if not self.stop_requested and launcher is not None:
            launcher.kill(signum)  # the ranks this process started get the signal now, as Lightning would do
        self.stop_requested = self.stop_requested or "preempted"

    def first_ctrl_c(self, signum, frame) -> None:
        # A terminal signals every process of the job (each DDP rank): no need to pass it on, the ranks decide together.
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises KeyboardInterrupt
        self.stop_requested = self.stop_requested or "interrupted (Ctrl-C)"
        if self.trainer.is_global_zero:  # os.write: print() could be in the middle of writing the bar's line
            os.write(2, b"\nCtrl-C: saving last.ckpt after this optimizer step; Ctrl-C again aborts without saving\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.lightning_sigterm is None or trainer.global_step == self.step_at_batch_start:
            return  # not ours to handle, or inside an accumulation window: its optimizer step is still to come
        if not validation_follows(trainer):
            self.stop_if_requested(trainer)  # Lightning raises SIGTERMException at the end of this batch

    def on_validation_end(self, trainer, pl_module):
        if self.lightning_sigterm is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.stop_if_requested(trainer)  # Lightning raises SIGTERMException once the validation is over

    def stop_if_requested(self, trainer) -> None:
        stop = self.stop_requested is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and callable(self.lightning_sigterm):
            self.lightning_sigterm(signal.SIGTERM, None)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self.restore_signals()

    def on_exception(self, trainer, pl_module, exception):
        self.restore_signals()
        if isinstance(exception, KeyboardInterrupt) and self.trainer is not None:  # a second Ctrl-C, in training
            step, held = trainer.global_step, self.saved_step
            if held is None:
                rank_zero_info(f"aborted at step {step} without saving: no checkpoint yet, the run starts over")
            else:
                rank_zero_info(
                    f"aborted at step {step} without saving: the newest checkpoint holds step {held}; "
                    "continue with --ckpt_path last"
                )
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            rank_zero_warn("preempted, but there is no ModelCheckpoint to say where last.ckpt goes: nothing saved")
            return
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # the whole state, as ModelCheckpoint saves it
        reason = self.stop_requested or "preempted"
        rank_zero_info(f"{reason} at step {trainer.global_step}: saved {path}; continue with --ckpt_path last")

    def restore_signals(self) -> None:
        """Hands back the signals this callback took, unless someone has replaced its handler since (Lightning
        ignores SIGINT while it shuts down after a KeyboardInterrupt)."""
        for signum, previous in self.replaced.items():
            if signal.getsignal(signum) in (as_sigterm, self.first_ctrl_c):
                signal.signal(signum, previous)
        self.replaced = {}
