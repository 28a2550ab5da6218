"""The rates follow the width with model.optim.lr_width; without it they are the config's at every width."""

import pytest
import torch

from lm.errors import UserError
from lm.model import GPT
from lm.optim import MuonConfig, OptimConfig, build_optimizer
from lm.optim.muon import Muon
from tests.conftest import tiny_config


def rates(width: int, **optim) -> dict[str, float]:
    model = GPT(tiny_config(n_embd=width, n_head=2))
    groups = build_optimizer(model, OptimConfig(**optim), fused=False).param_groups
    return {group.get("name", str(i)): group["lr"] for i, group in enumerate(groups)}


def test_adamw_rates_scale_with_the_tuned_width_over_the_width():
    assert list(rates(64, lr=1e-3, lr_width=32).values()) == pytest.approx([0.5e-3] * 2)
    assert list(rates(16, lr=1e-3, lr_width=32).values()) == pytest.approx([2e-3] * 2)
    assert list(rates(64, lr=1e-3).values()) == [1e-3] * 2  # null: as written


@pytest.mark.parametrize("scaling, muon_rate", [("match_rms_adamw", 0.01), ("original", 0.02)])
def test_muon_follows_the_width_only_where_its_update_is_adamws(scaling, muon_rate):
    found = rates(64, name="muon", lr=1e-3, lr_width=32, muon=MuonConfig(lr=0.02, lr_scaling=scaling))
    assert found.pop("muon") == pytest.approx(muon_rate)
    assert list(found.values()) == pytest.approx([0.5e-3] * 2)


@pytest.mark.parametrize("dtype, optimizer", [("bfloat16", torch.optim.Muon), ("float32", Muon)])
def test_only_a_float32_orthogonalization_needs_lms_muon(dtype, optimizer):
    """torch.optim.Muon orthogonalizes in bfloat16 only."""
    model = GPT(tiny_config())
    muon = build_optimizer(model, OptimConfig(name="muon", muon=MuonConfig(orthogonalization_dtype=dtype))).muon
    assert type(muon) is optimizer
    if optimizer is Muon:
        assert all(group["orthogonalization_dtype"] == torch.float32 for group in muon.param_groups)


def test_a_width_that_is_not_positive_is_one_line():
    with pytest.raises(UserError, match="model.optim.lr_width must be a positive width"):
        OptimConfig(lr_width=0).check()
