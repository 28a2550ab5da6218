"""A checkpoint that needs pickle to run code is refused everywhere it can be given, and the code never runs."""

import os
import shutil

import pytest
import torch

from lm.callbacks.checkpointing import AtomicCheckpointIO
from lm.checkpoint import load_checkpoint
from lm.cli import main
from lm.errors import UserError
from tests.reliability.helpers import run_config


class Payload:
    """Unpickling this calls os.system: the marker file appears only if a loader ran it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": Payload(marker)}, "global_step": 1}, path)
    return path, marker


def refused(argv, marker) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: refusing to load") and "\n" not in message
    assert not marker.exists()


def test_load_checkpoint_refuses(malicious):
    path, marker = malicious
    with pytest.raises(UserError, match="refusing to load .* needs pickle"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["fit", "validate"])
@pytest.mark.parametrize("ckpt_path", ["path", "last"])
def test_ckpt_path_refuses(command, ckpt_path, malicious, text_corpus, tmp_path):
    """A path is checked before any work (LMCLI.parse_arguments); `last` is resolved inside the Trainer, which loads
    through AtomicCheckpointIO with weights_only=True. (`best` names the best checkpoint of a fit in the same
    process only: a fresh `validate` has none and loads nothing.)"""
    path, marker = malicious
    config, run = run_config(tmp_path, text_corpus, "run")
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(path, run / "checkpoints" / "last.ckpt")
    refused([command, "--config", config, "--ckpt_path", str(path) if ckpt_path == "path" else ckpt_path], marker)


@pytest.mark.parametrize("weights_only", [None, True])
def test_checkpoint_plugin_refuses_unless_told_the_file_is_trusted(malicious, weights_only):
    """Lightning passes weights_only=None where the caller did not set it (Trainer.fit(ckpt_path=...) from Python)."""
    path, marker = malicious
    with pytest.raises(UserError, match="refusing to load .* needs pickle"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=weights_only)
    assert not marker.exists()


def test_init_from_refuses(malicious, text_corpus, tmp_path):
    path, marker = malicious
    config, _ = run_config(tmp_path, text_corpus, "run")
    refused(["fit", "--config", config, "--model.init_from", str(path)], marker)
