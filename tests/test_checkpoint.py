"""Continued pretraining's base: the architecture comes from it; only what is not architecture may differ."""

from dataclasses import asdict, replace

import pytest
import torch

from lm.checkpoint import base_config_and_weights, lineage_of
from lm.errors import UserError
from lm.model import GPT
from tests.conftest import tiny_config


@pytest.fixture
def base(tmp_path):
    config = tiny_config(attention_mask="document")
    state = {f"model.{k}": v for k, v in GPT(config).state_dict().items()}
    path = tmp_path / "base.ckpt"
    torch.save({"hyper_parameters": {"config": asdict(config)}, "state_dict": state, "global_step": 7}, path)
    return config, path


def test_a_conflicting_architecture_key_is_named(base):
    config, path = base
    with pytest.raises(
        UserError, match=r"conflicts with the base checkpoint .* on \['n_embd', 'window_pattern', 'sliding_window'\]"
    ):
        base_config_and_weights(str(path), replace(config, n_embd=64, n_head=2, window_pattern="S", sliding_window=4))


def test_dropout_and_the_attention_backend_may_change(base):
    config, path = base
    changed = replace(config, dropout=0.1, attention_backend="sdpa")
    resolved, state, ckpt = base_config_and_weights(str(path), changed)
    assert resolved == changed and ckpt["global_step"] == 7 and "transformer.wte.weight" in state
    assert base_config_and_weights(str(path), None)[0] == config  # no model.config: the base's
    assert lineage_of(str(path), ckpt)["global_step"] == 7
