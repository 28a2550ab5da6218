"""CautiousAdamW (lm/optim/adamw.py): AdamW's decay only where the update and the weight agree in sign."""

import pytest
import torch

from lm.optim.adamw import CautiousAdamW


@pytest.mark.parametrize("fused", [False, True])
def test_cautious_decay_only_where_update_and_weight_agree(fused):
    torch.manual_seed(0)
    w, g = torch.randn(64, 32), torch.randn(64, 32)
    cautious, plain = w.clone(), w.clone()
    for p, optimizer in (
        (cautious, CautiousAdamW([cautious], lr=0.01, weight_decay=0.5, fused=fused)),
        (plain, torch.optim.AdamW([plain], lr=0.01, weight_decay=0.0, fused=fused)),
    ):
        p.grad = g.clone()
        optimizer.step()
    agree = (plain - w) * w < 0  # w ← w − η u moved the weight toward zero: u and w agree in sign
    assert 0.2 < agree.float().mean() < 0.8
    assert torch.equal(cautious[~agree], plain[~agree])
    assert torch.allclose(cautious[agree], plain[agree] - 0.01 * 0.5 * w[agree])


def test_a_step_skipped_on_the_device_decays_nothing():
    w = torch.randn(8, 4)
    optimizer = CautiousAdamW([w], lr=0.01, weight_decay=0.5, fused=True)
    before = w.clone()
    w.grad = torch.randn_like(w)
    optimizer.found_inf = torch.ones(())  # NonFiniteGuard's flag
    optimizer.step()
    assert torch.equal(w, before) and optimizer.param_groups[0]["weight_decay"] == 0.5
