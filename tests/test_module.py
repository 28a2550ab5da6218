import math
from types import SimpleNamespace

import pytest
import torch

from lm.errors import UserError
from lm.module import LanguageModel, NextTokenLoss
from tests.conftest import tiny_config


def optimizer_groups(module: LanguageModel) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in module.model.named_parameters()}
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, plain


@pytest.fixture(autouse=True)
def fake_trainer(monkeypatch):
    monkeypatch.setattr(LanguageModel, "trainer", SimpleNamespace(max_steps=100), raising=False)


def test_weight_decay_only_on_matrices(block):
    decayed, plain = optimizer_groups(LanguageModel(config=tiny_config(block)))
    assert decayed and plain
    assert all(n.endswith("weight") and "ln" not in n for n in decayed)
    assert all(n.endswith("bias") or "ln" in n for n in plain)
    assert "transformer.wte.weight" in decayed


def test_embeddings_can_be_excluded_from_decay():
    decayed, plain = optimizer_groups(LanguageModel(config=tiny_config("classic"), decay_embeddings=False))
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= plain
    assert "transformer.h.0.attn.c_attn.weight" in decayed


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    module = LanguageModel(config=tiny_config(), lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [module.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)
    assert module.lr_at(55) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 45 / 90)) * 9e-4)


def test_wsd_and_constant_schedules():
    wsd = LanguageModel(
        config=tiny_config(), lr=1e-3, min_lr=0.0, warmup_steps=10, lr_schedule="wsd", decay_fraction=0.2
    )
    assert wsd.lr_at(50) == wsd.lr_at(80) == pytest.approx(1e-3)
    assert wsd.lr_at(90) == pytest.approx(5e-4) and wsd.lr_at(100) == pytest.approx(0.0)
    constant = LanguageModel(config=tiny_config(), lr=1e-3, warmup_steps=10, lr_schedule="constant")
    assert constant.lr_at(99) == pytest.approx(1e-3)


def test_bits_per_byte_matches_hand_computation():
    metric = NextTokenLoss()
    metric.update(torch.tensor(2.0 * 10), 10, torch.tensor(40))  # 10 tokens, mean loss 2 nats, 40 bytes
    metric.update(torch.tensor(4.0 * 30), 30, torch.tensor(100))  # 30 tokens, mean loss 4 nats, 100 bytes
    result = metric.compute()
    assert result["loss"].item() == pytest.approx(140 / 40)  # token-weighted, not the mean of 2 and 4
    assert result["ppl"].item() == pytest.approx(math.exp(3.5))
    assert result["bpb"].item() == pytest.approx(140 / (math.log(2) * 140))


def test_checkpoint_hparams_are_plain_and_rebuild_the_model(tmp_path):
    module = LanguageModel(config=tiny_config("classic"))
    assert isinstance(module.hparams.config, dict)
    rebuilt = LanguageModel(**module.hparams)
    assert rebuilt.config == module.config


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(max_tokens=1e6, tokens_per_param=20)])
def test_bad_optimisation_settings(bad):
    with pytest.raises(UserError, match="model"):
        LanguageModel(config=tiny_config(), **bad)


def test_no_architecture_is_an_error():
    with pytest.raises(UserError, match="model.config"):
        LanguageModel()


def test_token_byte_lengths_add_up_to_the_manifest_bytes(text_corpus):
    """bpb's denominator: bytes per target token, summed, is exactly the UTF-8 size of the source text."""
    import json
    from pathlib import Path

    import numpy as np

    from lm.data.tokenizer import token_byte_lengths

    manifest = json.loads((Path(text_corpus) / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        tokens = np.concatenate([np.fromfile(Path(text_corpus) / s["file"], dtype=np.uint16) for s in info["shards"]])
        assert token_byte_lengths()[tokens].sum() == info["bytes"], split
