"""The loss-spike detector: a step whose loss jumps is reported with its step, and skipped (weights untouched) when
asked; ordinary steps are not flagged. Its resume is tested in tests/callbacks/test_averaging.py."""

import lightning as L
import pytest
import torch

from lm.callbacks.nonfinite import NonFiniteGuard
from lm.callbacks.spikes import LossSpikeDetector
from lm.data.datamodule import TokenDataModule
from lm.errors import UserError
from lm.module import LanguageModel
from lm.optim import OptimConfig
from tests.conftest import quiet_trainer, tiny_config


class SpikyModel(LanguageModel):
    """The loss (and so the gradient) times 20 at optimizer step `spike_step` (1-based)."""

    def __init__(self, spike_step: int, **kwargs):
        super().__init__(**kwargs)
        self.spike_step = spike_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 20 if self.global_step + 1 == self.spike_step else loss


class WeightsAfterEachStep(L.Callback):
    def __init__(self):
        self.after: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])


def fit(corpus, tmp_path, skip: bool, accumulate: int = 1):
    model = SpikyModel(7, config=tiny_config(n_layer=1), optim=OptimConfig(lr=1e-3, warmup_steps=1))
    data = TokenDataModule(corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    detector, weights = LossSpikeDetector(threshold=6, skip=skip, warmup_steps=3), WeightsAfterEachStep()
    trainer = quiet_trainer(
        tmp_path,
        max_steps=8,
        limit_val_batches=0,
        log_every_n_steps=4,
        accumulate_grad_batches=accumulate,
        callbacks=[NonFiniteGuard(), detector, weights],
    )
    with pytest.warns(UserWarning, match=r"loss spike at step 7: .* its update was " + ("skipped" if skip else "kept")):
        trainer.fit(model, data)
    assert detector.spikes == 1  # step 7 only: the ordinary steps are not flagged
    assert trainer.callback_metrics["train/loss_spikes"] == 1
    return weights.after


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_spike_is_reported_and_skipped(text_corpus, tmp_path, accumulate):
    after = fit(text_corpus, tmp_path, skip=True, accumulate=accumulate)
    assert torch.equal(after[7], after[6])  # step 7 changed no weight
    assert not torch.equal(after[8], after[7])  # and training went on


def test_a_spike_is_only_reported_unless_skip(text_corpus, tmp_path):
    after = fit(text_corpus, tmp_path, skip=False)
    assert not torch.equal(after[7], after[6])


def test_skipping_needs_the_non_finite_guard_before_it(text_corpus, tmp_path):
    model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(warmup_steps=1))
    data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[LossSpikeDetector(threshold=6, skip=True)])
    with pytest.raises(UserError, match="needs the non-finite guard"):
        trainer.fit(model, data)
