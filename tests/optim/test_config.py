"""model.optim: checkpoints from before it load; its old flat keys are refused with the new key's name."""

import json

import lightning
import pytest
import torch

from lm.cli import main
from lm.errors import UserError
from lm.module import LanguageModel
from lm.optim import AdamWConfig, MuonConfig, OptimConfig
from lm.optim.config import RENAMED, renamed_key_error
from tests.conftest import tiny_config, write_config

# A checkpoint's hyper-parameters as LightningCLI saved them before model.optim existed.
FLAT = {
    "lr": 0.003,
    "min_lr": 0.0003,
    "warmup_steps": 2,
    "lr_schedule": "wsd",
    "optimizer": "muon",
    "muon_lr": 0.005,
    "muon_weight_decay": 0.01,
    "muon_momentum": 0.9,
    "decay_fraction": 0.3,
    "weight_decay": 0.05,
    "betas": [0.9, 0.99],
    "decay_embeddings": False,
    "batch_tokens": None,
    "max_tokens": None,
    "tokens_per_param": None,
    "compile": False,
    "activation_checkpointing": False,
    "loss_chunk_tokens": 4096,
    "init_from": None,
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def old_checkpoint(path, model: LanguageModel) -> None:
    hparams = {"config": dict(model.hparams.config), **FLAT}
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": hparams}
    torch.save(checkpoint | {"pytorch-lightning_version": lightning.__version__}, path)


def test_a_checkpoint_with_the_old_flat_hparams_loads(tmp_path):
    model = LanguageModel(config=tiny_config())
    path = tmp_path / "old.ckpt"
    old_checkpoint(path, model)
    loaded = LanguageModel.load_from_checkpoint(path, weights_only=True)
    assert loaded.optim == OptimConfig(
        name="muon",
        lr=0.003,
        min_lr=0.0003,
        warmup_steps=2,
        lr_schedule="wsd",
        decay_fraction=0.3,
        adamw=AdamWConfig(betas=(0.9, 0.99), weight_decay=0.05, decay_embeddings=False),
        muon=MuonConfig(lr=0.005, momentum=0.9, weight_decay=0.01),
    )
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_validate_takes_a_checkpoint_with_the_old_flat_hparams(text_corpus, tmp_path):
    """LightningCLI parses a checkpoint's hyper-parameters into the config (lm.train maps the old ones first)."""
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run")
    model = LanguageModel(config=tiny_config(n_layer=1))
    old_checkpoint(tmp_path / "old.ckpt", model)
    main(["validate", "--config", config, "--ckpt_path", str(tmp_path / "old.ckpt")])
    metrics = json.loads(next((tmp_path / "run" / "validate").rglob("metrics.json")).read_text())
    assert metrics["metrics"]["val/loss"] > 0


def test_a_new_checkpoint_rebuilds_its_optim(tmp_path):
    optim = OptimConfig(name="muon", muon=MuonConfig(orthogonalization="polar_express", split_fused=True))
    model = LanguageModel(config=tiny_config(), optim=optim)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        tmp_path / "new.ckpt",
    )
    assert LanguageModel.load_from_checkpoint(tmp_path / "new.ckpt", weights_only=True).optim == optim


@pytest.mark.parametrize("old", list(RENAMED))
def test_every_old_flat_key_gets_a_one_line_error_naming_its_new_key(old):
    rejected = (f"unrecognized arguments: --model.{old}=1", f"Subcommand 'fit' does not accept option 'model.{old}'")
    for message in rejected:
        error = renamed_key_error(message)
        assert isinstance(error, UserError) and f"model.{RENAMED[old]}" in str(error) and "\n" not in str(error)
    assert renamed_key_error(f"Option 'model.optim.{old}' is not accepted") is None  # a new key is not an old one
