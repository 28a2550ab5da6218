"""Checkpoint files that a crash cannot corrupt, and that load without running code.

Lightning's TorchCheckpointIO serialises into memory and lets fsspec write a temporary file in the system temp
directory, then *moves* it: when that is another filesystem than the run directory (node-local /tmp, shared
storage for runs) the move is a copy into the target, and a kill mid-copy leaves a truncated last.ckpt. Here
the temporary file `<name>.tmp` sits beside the target, is fsynced and `os.replace`d over it: a reader sees the
old checkpoint or the new one, never part of one. A failed write (disk full) removes the temporary file and
stops with one line; the previous checkpoint stays. A `.tmp` left by a kill is harmless and overwritten by the
next save (`--ckpt_path last` only considers `last*.ckpt`).

Loading (`--ckpt_path`, SLURM's hpc checkpoints) goes through `lm.checkpoint.load_checkpoint`: weights_only=True
and one-line errors, unless the caller explicitly passes weights_only=False. Local (or mounted) paths only.
"""

import functools
import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lm.checkpoint import Weights, load_checkpoint, with_averaged_weights
from lm.errors import UserError


def save_atomic(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` through a fsynced temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"could not write checkpoint {path} ({err.strerror or err}); the previous {path.name} is intact"
        ) from None
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Trainer plugin: atomic saves (`save_atomic`) and safe loads (`lm.checkpoint.load_checkpoint`)."""

    weights: Weights = "raw"  # what a loaded checkpoint gives the model: its trained weights, or their average (ema)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        if weights_only is False:  # the user vouched for this file
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=False)
        else:
            checkpoint = load_checkpoint(path)
        return with_averaged_weights(checkpoint, path) if self.weights == "ema" else checkpoint


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always ends at the final step.

    Lightning writes last.ckpt at the end of training only if it never wrote one before, so a run whose
    max_steps is not a multiple of val_check_interval would keep a last.ckpt from before its final steps.
    """

    @functools.cached_property
    def state_key(self) -> str:
        # Lightning names every hook call with it; ModelCheckpoint formats it from its settings on every call, several
        # times a step. The settings do not change after construction.
        return super().state_key

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
